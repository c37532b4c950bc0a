"""The planted case on the synthetic world: pairs of test images that show the same object in two
contexts (``view=0`` and ``view=1``); how much of each query map's mass lies on the object, the
pointing game, and the deletion / insertion AUC of the similarity of the perturbed query to its
reference (RISE protocol), for SFAM, Grad-CAM and Relevance-CAM on the similarity, with the
paired differences SFAM − baseline and their 95 % CIs.

    python benchmarks/sfam_planted.py --n 200 --metric cosine

Mass: the share of the map's mass on the object's exact pixels and on the object grown by 4 px
(half a feature cell of ``trunk.layer3``); pointing: the map's maximum on the object. Model:
``world-metric``. ``--ablation`` adds SFAM with ``normalize="relu"`` (not the default; for the
analysis of where min-max weights go).
"""

from __future__ import annotations

import time

import torch.nn.functional as F

import visionlens
from sfam_faithfulness import METHODS, faithfulness, localisation, means_table, paired_table, query_maps, weight_analysis
from visionlens import SFAM
from visionlens.data.world import World, WorldConfig
from visionlens.models.world_eval import normalise

import _cli


def main() -> None:
    parser = _cli.Parser()
    parser.add_argument("--n", type=_cli.positive_int, default=200)
    parser.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"])
    parser.add_argument("--step", type=_cli.positive_int, default=64, help="pixels per deletion/insertion step (RISE: the width)")
    parser.add_argument("--chunk", type=_cli.positive_int, default=50, help="pairs per batch")
    parser.add_argument("--ablation", action="store_true", help="also SFAM with normalize='relu'")
    args = parser.parse_args()
    started = time.perf_counter()
    emb = visionlens.embedder("world-metric")
    world = World(WorldConfig(size=64), seed=0)
    a, b = world.batch("test", range(args.n)), world.batch("test", range(args.n), view=1)
    xq, xr = normalise(a["image"]), normalise(b["image"])
    mask = a["object_mask"].float()
    grown = F.max_pool2d(mask[:, None], 9, 1, 4)[:, 0]
    methods = {name: cls(emb, metric=args.metric) for name, cls in METHODS.items()}
    if args.ablation:
        methods["sfam (relu weights)"] = SFAM(emb, metric=args.metric, normalize="relu")
    maps = {name: query_maps(m, xq, xr, args.chunk) for name, m in methods.items()}
    refs = methods["sfam"].embed(xr)
    results = faithfulness(emb, xq, refs, maps, args.metric, args.step, args.chunk)
    for name, m in maps.items():
        results[name].update(localisation(m, mask, grown))
    metrics = ["mass", "mass (grown)", "pointing", "deletion", "insertion"]
    print(f"{args.n} pairs, world-metric, {args.metric}, step {args.step} px; object: {mask.mean():.3f} of the "
          f"pixels, grown by 4 px: {grown.mean():.3f}; {time.perf_counter() - started:.0f} s")
    print("\n".join(means_table(results, metrics)), "\n")
    print("\n".join(paired_table(results, metrics)), "\n")
    print(weight_analysis(emb, xq, xr, args.metric))


if __name__ == "__main__":
    _cli.run(main)
