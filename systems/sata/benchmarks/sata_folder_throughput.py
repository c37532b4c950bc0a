"""Throughput of ``visionlens sata evaluate --data`` on a generated ImageFolder with a random-init
timm ViT saved to a weights file (no download): images/s per protocol and variant, FFN FLOPs saved.

    python systems/sata/benchmarks/sata_folder_throughput.py                      # vit_tiny, 24 images
    python systems/sata/benchmarks/sata_folder_throughput.py --model deit_small_patch16_224 --images 48

Random weights: the accuracies mean nothing; the throughput and the FFN share saved do (SATA's split
depends on the weights, so a trained model saves a different share). The images/s count model
forward time only (decoding and corruption excluded); the command and the machine's load are printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from visionlens.cli import main


def make_folder(root: Path, images: int, classes: int = 3, side: int = 96) -> None:
    rng = np.random.default_rng(0)
    for i in range(images):
        folder = root / str(i % classes)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vit_tiny_patch16_224", help="a timm ViT name")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", default="sata,tome-peer")
    args = parser.parse_args(argv)
    import timm

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_folder(tmp / "data", args.images)
        torch.manual_seed(0)
        torch.save(timm.create_model(args.model, num_classes=3).state_dict(), tmp / "vit.pth")
        cmd = ["sata", "evaluate", "--model", f"timm:{args.model}", "--weights", str(tmp / "vit.pth"), "--data",
               str(tmp / "data"), "--corruptions", "gaussian_noise", "--severities", "3", "--seeds", "0",
               "--bs1-seeds", "0", "--batch", str(args.batch), "--variants", args.variants, "--threads",
               str(args.threads), "--out", str(tmp / "table.md"), "--quiet"]
        print("visionlens " + " ".join(cmd), flush=True)
        start = time.time()
        rc = main(cmd)
        print(f"exit {rc} in {time.time() - start:.1f} s; load average {os.getloadavg()}")
    return rc


if __name__ == "__main__":
    sys.exit(run())
