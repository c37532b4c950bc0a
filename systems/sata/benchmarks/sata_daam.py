"""DAAM on world-vit with and without SATA: are the maps still on the object?

    python systems/sata/benchmarks/sata_daam.py [--n 200] [--batch 50]

SATA runs per image with ``restore_order=True`` (tokens stay on the patch grid), so DAAM's
per-block maps are read at the original patch positions. Pointing game with 0-px tolerance
(64x64 images) and relevance mass inside the ground-truth object mask, plus the share of images
whose DAAM target (predicted class) is unchanged and the mean absolute map difference.
"""

from __future__ import annotations

import argparse
import time

import torch

import visionlens
from visionlens import DAAM
from visionlens.data.world import World
from visionlens.metrics.localisation import pointing_game, relevance_mass
from visionlens.models.world_eval import normalise
from visionlens_sata.sata import SataConfig, SataViT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="test images")
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--gamma", type=float, default=0.7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    vit = visionlens.load_model("world-vit").module
    batch = World().batch("test", range(args.n))
    x, mask, labels = normalise(batch["image"]), batch["object_mask"], batch["label"]
    sata = SataViT(vit, SataConfig(gamma=args.gamma))
    daam = DAAM(vit)
    results = {}
    for name in ("plain", "sata"):
        start, maps, targets = time.perf_counter(), [], []
        for i in range(0, args.n, args.batch):
            xb = x[i:i + args.batch]
            if name == "sata":
                with sata.patched(len(xb), vit.patch_embed.num_patches + 1):
                    exp = daam(xb)
            else:
                exp = daam(xb)
            maps.append(exp.maps)
            targets.append(exp.targets)
        maps, targets = torch.cat(maps), torch.cat(targets)
        results[name] = (maps, targets)
        print(f"{name:6s} accuracy {float((targets == labels).float().mean()):.3f}  "
              f"pointing game {float(pointing_game(maps, mask, 0.0).nanmean()):.3f}  "
              f"mass {float(relevance_mass(maps, mask).mean()):.3f}  ({time.perf_counter() - start:.1f} s)")
    (m0, t0), (m1, t1) = results["plain"], results["sata"]
    print(f"same target {float((t0 == t1).float().mean()):.3f}  mean |map difference| {float((m0 - m1).abs().mean()):.4f}")


if __name__ == "__main__":
    main()
