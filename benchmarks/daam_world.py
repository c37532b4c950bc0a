"""Localisation and faithfulness of DAAM, attention rollout, Chefer's gradient-weighted rollout, LeGrad, AttnLRP and ViT Grad-CAM on the world ViTs.

    python benchmarks/daam_world.py [--n 500] [--methods daam,chefer,...] [--bank-n 5000] [--no-dino]
                                    [--figure docs/daam-flow.png]

Per method on world-vit's first ``--n`` test images (each method explains the true class):
*mass* = sum(map * object mask) / sum(map) (``metrics.relevance_mass``; the object covers the
share printed as "object share"), *pointing game* = whether the map maximum lies on the object
(``metrics.pointing_game`` with 0-px tolerance: the images are 64x64), *deletion* and *insertion*
= the areas under the RISE curves of the true class's softmax probability (64 px a step;
``metrics.faithfulness.joint_causal_curves``; deletion: lower is better). The table gives each
mean and, for every method but DAAM, the paired per-image difference to DAAM with its 95 %
interval (1.96 standard errors, ``evaluation.ci95``). world-dino is explained through a k-NN
memory bank of the first ``--bank-n`` train images (as ``visionlens bank`` builds it), for
localisation only.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

import visionlens
from visionlens import DAAM, AttentionRollout, CheferRollout, GradCAM, LeGrad
from visionlens.data.bank import build_bank
from visionlens.data.world import CLASS_NAMES, World, WorldConfig
from visionlens.evaluation import ci95
from visionlens.methods import AttnLRP
from visionlens.metrics import pointing_game, relevance_mass, trapezoid_auc
from visionlens.metrics.faithfulness import joint_causal_curves

import _cli

METRICS = ("mass", "pointing", "deletion", "insertion")


def localisation(maps: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    return float(relevance_mass(maps, mask).mean()), float(pointing_game(maps, mask, tolerance=0).mean())


def per_image_scores(model, x: torch.Tensor, maps: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> dict:
    """Every metric per image, as numpy arrays."""
    curves = joint_causal_curves(model, x, [maps], [labels], batch_size=256)[0]
    return {"mass": relevance_mass(maps, mask).numpy(), "pointing": pointing_game(maps, mask, tolerance=0).numpy(),
            "deletion": trapezoid_auc(curves["deletion"]).cpu().numpy(),
            "insertion": trapezoid_auc(curves["insertion"]).cpu().numpy()}


def vit_table(scores: dict[str, dict], seconds: dict[str, float]) -> str:
    """Markdown: per method the mean of each metric, then its paired difference to DAAM +/- 95 % interval."""
    head = "| method | " + " | ".join(METRICS) + " | " + " | ".join(f"{m} − DAAM" for m in METRICS) + " | s |"
    rows = [head, "|" + "---|" * (2 * len(METRICS) + 2)]
    base = scores["daam"]
    for name, s in scores.items():
        means = " | ".join(f"{s[m].mean():.3f}" for m in METRICS)
        diffs = " | ".join("" if name == "daam" else f"{(s[m] - base[m]).mean():+.3f} ± {ci95(s[m] - base[m]):.3f}"
                           for m in METRICS)
        rows.append(f"| {name} | {means} | {diffs} | {seconds[name]:.1f} |")
    return "\n".join(rows)


def main() -> None:
    ap = _cli.Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=_cli.positive_int, default=500, help="test images")
    ap.add_argument("--bank-n", type=_cli.positive_int, default=5000, help="train images in world-dino's memory bank")
    ap.add_argument("--methods", default=None, help="comma-separated world-vit rows to run (default: all; daam always)")
    ap.add_argument("--no-dino", action="store_true", help="skip world-dino (no memory bank to build)")
    ap.add_argument("--figure", default=None, help="write a DAAM flow strip of world-vit test images here")
    args = ap.parse_args()
    torch.manual_seed(0)
    batch = World(WorldConfig(size=64), seed=0).batch("test", range(args.n))
    x, mask = (batch["image"] - 0.5) / 0.5, batch["object_mask"]
    print(f"{args.n} world test images, object share {float(mask.float().mean()):.3f}")
    vit = visionlens.load_model("world-vit")
    labels = batch["label"]
    methods = {
        "daam": DAAM(vit.module),
        "daam (linear)": DAAM(vit.module, nonlinear=False),
        "rollout": AttentionRollout(vit.module),
        "chefer": CheferRollout(vit.module),
        "legrad": LeGrad(vit.module),
        "attnlrp": AttnLRP(vit.module),
        "attnlrp (pixels)": AttnLRP(vit.module, at="pixels"),
        "gradcam@blocks[-1].norm1": GradCAM(vit.module, vit.layer),
    }
    if args.methods:
        wanted = {"daam", *args.methods.split(",")}
        unknown = wanted - set(methods)
        if unknown:
            ap.error(f"unknown method(s) {', '.join(sorted(unknown))}; choose from {', '.join(methods)}")
        methods = {k: v for k, v in methods.items() if k in wanted}
    scores, seconds = {}, {}
    for name, method in methods.items():
        start = time.perf_counter()
        maps = torch.cat([method(x[i:i + 100], labels[i:i + 100]).maps for i in range(0, args.n, 100)])
        seconds[name] = time.perf_counter() - start
        scores[name] = per_image_scores(vit.module, x, maps, mask, labels)
        print(f"world-vit  {name:26s} " + "  ".join(f"{m} {scores[name][m].mean():.3f}" for m in METRICS)
              + f"  ({seconds[name]:.1f} s for the maps)", flush=True)
    print(f"\nworld-vit, n = {args.n} test images (± = 95 % interval of the paired per-image difference; "
          "s = seconds for the maps)\n")
    print(vit_table(scores, seconds))
    if not args.no_dino:
        dino_localisation(args, x, mask, labels)
    if args.figure:
        figure(args, vit, x, batch)


def dino_localisation(args, x: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> None:
    """world-dino through a k-NN memory bank: mass and pointing of DAAM and rollout."""
    dino = visionlens.load_model("world-dino")
    bank = build_bank(dino, n=args.bank_n)
    for name, method in (("daam (k-NN bank)", DAAM(dino.module, bank=bank)), ("rollout", AttentionRollout(dino.module))):
        start = time.perf_counter()
        exps = [method(x[i:i + 100]) for i in range(0, args.n, 100)]
        seconds = time.perf_counter() - start
        mass, pointing = localisation(torch.cat([e.maps for e in exps]), mask)
        extra = ""
        if name.startswith("daam"):
            acc = float((torch.cat([e.targets for e in exps]) == labels).float().mean())
            extra = f", k-NN accuracy {acc:.3f}"
        print(f"world-dino {name:26s} mass {mass:.3f}  pointing game {pointing:.3f}  ({seconds:.1f} s{extra})")


def figure(args, vit, x: torch.Tensor, batch: dict) -> None:
    """A DAAM flow strip of the first four test images."""
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
    _cli.run(main)
