"""Produce the packaged synthetic UniPHD (``visionlens_refer/weights/uniphd-synth.pt`` + ``.json``).

Run from the repository root:  .venv/bin/python systems/refer/training/train_uniphd_synth.py
(one CPU thread; the manifest records the command, seed, data, wall time and held-out metrics).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

from visionlens_refer.uniphd.config import UniPHDConfig
from visionlens_refer.uniphd.data import synthetic_refhuman
from visionlens_refer.uniphd.evaluate import evaluate_model
from visionlens_refer.uniphd.inference import PACKAGED_WEIGHTS, load_uniphd, save_weights
from visionlens_refer.uniphd.train import train

SCRIPT = "systems/refer/training/train_uniphd_synth.py"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-samples", type=int, default=3000)
    ap.add_argument("--val-samples", type=int, default=300)
    ap.add_argument("--steps", type=int, default=330)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit", type=float, default=570.0, help="training seconds (the step LR drop assumes --steps)")
    ap.add_argument("--checkpoint", default="/tmp/uniphd-synth-ckpt.pt")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    samples = synthetic_refhuman(args.train_samples, seed=args.seed, size=args.size)
    val = synthetic_refhuman(args.val_samples, seed=args.seed + 10_000, size=args.size)
    config = UniPHDConfig(image_size=args.size, points=2)
    data_s = time.perf_counter() - t0
    result = train(samples, args.checkpoint, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, config=config,
                   time_limit=args.time_limit, progress=False, log=lambda m: print(m, flush=True))
    out = save_weights(result["model"], PACKAGED_WEIGHTS, half=True)
    model = load_uniphd(out)  # score the packaged (float16) weights, as `visionlens pose eval` does
    metrics = [evaluate_model(model, val, kind, control=control) for kind in ("text", "point", "scribble") for control in (False, True)]
    hist = result["history"]
    manifest = {
        "name": "uniphd-synth", "command": "python " + " ".join(sys.argv), "script": SCRIPT, "seed": args.seed,
        "data": {"generator": "visionlens_refer.uniphd.data.synthetic_refhuman", "train": [args.train_samples, args.seed],
                 "val": [args.val_samples, args.seed + 10_000], "image_size": args.size},
        "config": model.config.to_dict(), "parameters": sum(p.numel() for p in model.parameters()),
        "steps": result["steps"], "batch_size": args.batch_size, "lr": args.lr,
        "train_seconds": round(result["seconds"], 1), "data_seconds": round(data_s, 1),
        "loss_first_25": sum(h["loss"] for h in hist[:25]) / 25, "loss_last_25": sum(h["loss"] for h in hist[-25:]) / 25,
        "machine": f"shared 2-core CPU, 1 torch thread, {platform.processor() or platform.machine()}, torch {torch.__version__}",
        "metrics_val": metrics, "file_bytes": out.stat().st_size, "weights_dtype": "float16 (loaded as float32)",
    }
    PACKAGED_WEIGHTS.with_suffix(".json").write_text(json.dumps(manifest, indent=1))
    print(json.dumps(metrics, indent=1))


if __name__ == "__main__":
    main()
