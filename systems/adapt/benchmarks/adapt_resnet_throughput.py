"""CPU time of ``visionlens adapt`` with a paper preset and a ResNet-50 backbone on a generated
Office-31-layout dataset (random-init ResNet-50 saved to a weights file: nothing is downloaded).

    python systems/adapt/benchmarks/adapt_resnet_throughput.py                       # 2 classes x 8 images, 224 px
    python systems/adapt/benchmarks/adapt_resnet_throughput.py --per-class 16 --size 224 --backbone resnet101

It prints the command, source-training and adaptation images/s (one epoch each, images streamed
from PNG files through the DataLoader) and the machine's load average. The accuracies mean nothing
(random weights, random images); only the time does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from visionlens.cli import main


def make_office31(root: Path, per_class: int, classes: int = 2, side: int = 256) -> None:
    rng = np.random.default_rng(0)
    for domain in ("amazon", "webcam"):
        for c in range(classes):
            folder = root / domain / "images" / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--backbone", default="resnet50", choices=["resnet50", "resnet101"])
    parser.add_argument("--preset", default="eianet")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torchvision

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_office31(tmp / "office31", args.per_class)
        torch.manual_seed(0)
        torch.save(getattr(torchvision.models, args.backbone)().state_dict(), tmp / "backbone.pth")
        cmd = ["adapt", "--data", "office31", "--data-dir", str(tmp / "office31"), "--source", "amazon", "--target",
               "webcam", "--preset", args.preset, "--backbone", args.backbone, "--weights", str(tmp / "backbone.pth"),
               "--size", str(args.size), "--source-epochs", "1", "--adapt-epochs", "1", "--batch-size", str(args.batch),
               "--methods", "eianet", "--seeds", "0", "--gradcam", "0", "--threads", str(args.threads),
               "--out", str(tmp / "out"), "--quiet"]
        print("visionlens " + " ".join(cmd), flush=True)
        start = time.time()
        rc = main(cmd)
        row = json.loads((tmp / "out" / "results.json").read_text())["per_seed"][0]["rows"]["eianet"]
        n = 2 * args.per_class
        print(f"source training: {n / row['source_seconds']:.2f} images/s; adaptation (bank pass, 1 epoch, "
              f"evaluation): {n / row['seconds']:.2f} images/s")
        print(f"exit {rc} in {time.time() - start:.1f} s; load average {os.getloadavg()}")
    return rc


if __name__ == "__main__":
    sys.exit(run())
