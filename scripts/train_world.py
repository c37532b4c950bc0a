"""Train one of the world reference models and write its weights and manifest.

    python scripts/train_world.py world-cnn [--device cuda] [--steps N] [--out DIR]

Models: world-cnn (supervised WorldResNet), world-vit (supervised WorldViT), world-dino
(self-supervised WorldViT: contrastive InfoNCE between two views of the same object in different
contexts; no labels), world-metric (WorldMetricNet, ProtoNet loss on random episodes).
Every step renders fresh training images (the train split is a stream: step s uses samples
s*B ... s*B+B-1), so there is no fixed training set to overfit. Seeded; on 2 CPU cores each model
trains in about 10 minutes, on a GPU in one or two. Writes OUT/NAME.pt (state dict) and
OUT/NAME.json (manifest: seed, world settings, training settings and time, test scores with the
evidence check, and the score on the fixed 500-image test slice that the tests re-check).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from visionlens.data.world import World, WorldConfig
from visionlens.models.world_eval import evidence_check, normalise, score
from visionlens.models.world_models import WorldMetricNet, WorldResNet, WorldViT

SPECS = {
    "world-cnn": dict(kind="classifier", build=lambda: WorldResNet(), steps=600, batch=128, lr=3e-3, wd=5e-4),
    "world-vit": dict(kind="classifier", build=lambda: WorldViT(), steps=1000, batch=128, lr=1.5e-3, wd=0.05),
    "world-dino": dict(kind="self-supervised", build=lambda: WorldViT(num_classes=0), steps=800, batch=128, lr=1e-3, wd=0.05),
    "world-metric": dict(kind="metric", build=lambda: WorldMetricNet(), steps=400, batch=160, lr=3e-3, wd=5e-4),
}


def flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    mask = torch.rand(x.shape[0], generator=gen) < 0.5
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def protonet_loss(emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Split each class of the batch in half: prototypes from one half classify the other."""
    support = torch.zeros_like(labels, dtype=torch.bool)
    for c in labels.unique():
        idx = (labels == c).nonzero()[:, 0]
        support[idx[: len(idx) // 2]] = True
    classes = labels[support].unique()
    protos = torch.stack([emb[support & (labels == c)].mean(0) for c in classes])
    query = ~support & torch.isin(labels, classes)
    logits = -torch.cdist(emb[query], protos).pow(2) * 8.0
    target = torch.searchsorted(classes, labels[query])
    return F.cross_entropy(logits, target)


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sims = z @ z.t() / temperature
    sims.fill_diagonal_(-float("inf"))
    n = z1.shape[0]
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sims, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=list(SPECS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="default: the model's own (see SPECS)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("src/visionlens/models/world_weights"))
    args = parser.parse_args()
    spec = SPECS[args.model]
    steps, batch = args.steps or spec["steps"], spec["batch"]
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    config = WorldConfig(size=64)
    world = World(config, seed=args.seed)
    model = spec["build"]().to(device)
    head = None
    params = list(model.parameters())
    if spec["kind"] == "self-supervised":
        head = torch.nn.Sequential(torch.nn.Linear(model.num_features, 256), torch.nn.GELU(), torch.nn.Linear(256, 128)).to(device)
        params += list(head.parameters())
    opt = torch.optim.AdamW(params, lr=spec["lr"], weight_decay=spec["wd"])
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        indices = range(step * batch, (step + 1) * batch)
        b = world.batch("train", indices)
        x = normalise(flip(b["image"], gen)).to(device)
        if spec["kind"] == "classifier":
            loss = F.cross_entropy(model(x), b["label"].to(device), label_smoothing=0.1)
        elif spec["kind"] == "metric":
            loss = protonet_loss(model(x), b["label"].to(device))
        else:  # two views of each object: contexts 1 and 2 (no labels used)
            v1 = normalise(flip(world.batch("train", indices, view=1)["image"], gen)).to(device)
            loss = info_nce(head(model(x)), head(model(v1)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"{args.model} step {step + 1}/{steps} loss {loss.item():.4f} {time.perf_counter() - start:.0f}s", flush=True)
    seconds = time.perf_counter() - start
    model.eval().cpu()
    world_eval = World(config, seed=args.seed)
    check = evidence_check(spec["kind"], model, world_eval, range(2000))
    slice_score = score(spec["kind"], model, world_eval, range(500))
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out / f"{args.model}.pt")
    manifest = {
        "name": args.model,
        "kind": spec["kind"],
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seed": args.seed,
        "world": dataclasses.asdict(config),
        "world_seed": args.seed,
        "training": {
            "steps": steps, "batch": batch, "images_seen": steps * batch * (2 if spec["kind"] == "self-supervised" else 1),
            "optimizer": f"AdamW lr={spec['lr']} weight_decay={spec['wd']}, warmup {warmup} steps + cosine",
            "augmentation": "horizontal flip" + ("; second view = same object, new context" if spec["kind"] == "self-supervised" else ""),
            "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
            "seconds": round(seconds, 1), "torch": torch.__version__, "python": platform.python_version(),
        },
        "metric": {"classifier": "top-1 accuracy", "self-supervised": "weighted 20-NN accuracy (bank: 5,000 train images)",
                   "metric": "recall@1 (test queries against the other test images)"}[spec["kind"]],
        "test_2000": check,
        "test_slice_500": slice_score,
        "command": " ".join(["python", "scripts/train_world.py", *sys.argv[1:]]),
    }
    (args.out / f"{args.model}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps({"name": args.model, "seconds": round(seconds, 1), **check, "slice": slice_score}))


if __name__ == "__main__":
    main()
