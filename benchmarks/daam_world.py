"""Localisation of DAAM, attention rollout, Chefer's gradient-weighted rollout, LeGrad and ViT Grad-CAM on the world ViTs (ground-truth object masks).

    python benchmarks/daam_world.py [--n 500] [--bank-n 5000] [--figure docs/daam-flow.png]

Per method: *mass* = mean over images of sum(map * object mask) / sum(map) (the object covers
the share printed as "object share"), *pointing game* = fraction of images whose map maximum lies
on the object (0-px tolerance: the images are 64x64). world-dino is explained through a k-NN
memory bank of the first ``--bank-n`` train images (as ``visionlens bank`` builds it).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import visionlens
from visionlens import DAAM, AttentionRollout, CheferRollout, GradCAM, LeGrad
from visionlens.data.bank import build_bank
from visionlens.data.world import CLASS_NAMES, World, WorldConfig


def localisation(maps: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    mask = mask.float()
    mass = ((maps * mask).sum((1, 2)) / maps.sum((1, 2)).clamp_min(1e-12)).mean()
    peak = maps.flatten(1).argmax(1)
    hits = mask.flatten(1).gather(1, peak[:, None])[:, 0]
    return float(mass), float(hits.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="test images")
    ap.add_argument("--bank-n", type=int, default=5000, help="train images in world-dino's memory bank")
    ap.add_argument("--figure", default=None, help="write a DAAM flow strip of world-vit test images here")
    args = ap.parse_args()
    torch.manual_seed(0)
    batch = World(WorldConfig(size=64), seed=0).batch("test", range(args.n))
    x, mask = (batch["image"] - 0.5) / 0.5, batch["object_mask"]
    print(f"{args.n} world test images, object share {float(mask.float().mean()):.3f}")
    vit = visionlens.load_model("world-vit")
    dino = visionlens.load_model("world-dino")
    bank = build_bank(dino, n=args.bank_n)
    runs = [
        ("world-vit", "daam", DAAM(vit.module), batch["label"]),
        ("world-vit", "daam (linear)", DAAM(vit.module, nonlinear=False), batch["label"]),
        ("world-vit", "rollout", AttentionRollout(vit.module), batch["label"]),
        ("world-vit", "chefer", CheferRollout(vit.module), batch["label"]),
        ("world-vit", "legrad", LeGrad(vit.module), batch["label"]),
        ("world-vit", "gradcam@blocks[-1].norm1", GradCAM(vit.module, vit.layer), batch["label"]),
        ("world-dino", "daam (k-NN bank)", DAAM(dino.module, bank=bank), None),
        ("world-dino", "rollout", AttentionRollout(dino.module), None),
    ]
    for model, name, method, target in runs:
        start = time.perf_counter()
        exps = [method(x[i:i + 100], None if target is None else target[i:i + 100]) for i in range(0, args.n, 100)]
        seconds = time.perf_counter() - start
        maps = torch.cat([e.maps for e in exps])
        mass, pointing = localisation(maps, mask)
        extra = ""
        if name.startswith("daam (k-NN"):
            acc = float((torch.cat([e.targets for e in exps]) == batch["label"]).float().mean())
            extra = f", k-NN accuracy {acc:.3f}"
        print(f"{model:10s} {name:26s} mass {mass:.3f}  pointing game {pointing:.3f}  ({seconds:.1f} s{extra})")
    if args.figure:
        from PIL import Image

        from visionlens.viz.flow import flow_strip

        exp = DAAM(vit.module)(x[:4])
        strips = []
        for i in range(4):
            view = Image.fromarray((batch["image"][i].permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
            labels = [f"block {b + 1}" for b in range(exp.flow.shape[1])]
            labels[0] = f"{CLASS_NAMES[int(exp.targets[i])]}: block 1"
            strips.append(flow_strip(view, exp.flow[i].numpy(), panel=128, labels=labels))
        sheet = Image.new("RGB", (strips[0].width, sum(s.height + 6 for s in strips)), (255, 255, 255))
        for i, s in enumerate(strips):
            sheet.paste(s, (0, i * (s.height + 6)))
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        sheet.save(args.figure)
        print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
