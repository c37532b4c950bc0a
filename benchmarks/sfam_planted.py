"""The planted case on the synthetic world: pairs of test images that show the same object in two
contexts (``view=0`` and ``view=1``); how much of each map's mass lies on the object.

    python benchmarks/sfam_planted.py --n 500

Prints, per method and metric, the mean share of the map's mass on the object's exact pixels, on
the object grown by 4 px (half a feature cell of ``trunk.layer3``), and the pointing-game hit rate
(the map's maximum on the object), for the query image of each pair with ``world-metric``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import visionlens
from visionlens import SFAM, SimilarityGradCAM, SimilarityRelevanceCAM
from visionlens.data.world import World, WorldConfig
from visionlens.models.world_eval import normalise


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=500)
    args = parser.parse_args()
    emb = visionlens.embedder("world-metric")
    world = World(WorldConfig(size=64), seed=0)
    a, b = world.batch("test", range(args.n)), world.batch("test", range(args.n), view=1)
    xa, xb = normalise(a["image"]), normalise(b["image"])
    mask = a["object_mask"].float()
    grown = F.max_pool2d(mask[:, None], 9, 1, 4)[:, 0]
    print(f"{args.n} pairs; object: {mask.mean():.3f} of the pixels, grown by 4 px: {grown.mean():.3f}")
    for cls in (SFAM, SimilarityGradCAM, SimilarityRelevanceCAM):
        for metric in ("cosine", "euclidean"):
            maps = torch.cat([cls(emb, metric=metric).pair(xa[i:i + 100], xb[i:i + 100]).query.maps
                              for i in range(0, args.n, 100)])
            mass = lambda k: float(((maps * k).flatten(1).sum(1) / maps.flatten(1).sum(1)).mean())  # noqa: E731
            point = float(mask.flatten(1).gather(1, maps.flatten(1).argmax(1)[:, None]).mean())
            print(f"{cls.name:14s} {metric:9s} mass on object {mass(mask):.3f}  grown {mass(grown):.3f}  pointing {point:.3f}")


if __name__ == "__main__":
    main()
