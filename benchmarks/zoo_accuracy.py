"""Top-1 accuracy of the zoo models on a folder of labelled ImageNet photos.

Usage: python benchmarks/zoo_accuracy.py ../shared/data/imagenet-sample [--models mobilenet_v2 ...]
The folder needs labels.csv with columns file and class_index.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

import visionlens
from visionlens.core.progress import Progress
from visionlens.data import load_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--models", nargs="+", default=visionlens.available_models())
    parser.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args()
    rows = list(csv.DictReader(open(args.folder / "labels.csv")))
    for name in args.models:
        model = visionlens.load_model(name)
        correct, bar = 0, Progress(len(rows), label=name)
        for start in range(0, len(rows), args.batch_size):
            chunk = rows[start:start + args.batch_size]
            x = torch.stack([model.preprocess(load_image(args.folder / r["file"])) for r in chunk])
            with torch.no_grad():
                pred = model.module(x).argmax(1)
            correct += int((pred == torch.tensor([int(r["class_index"]) for r in chunk])).sum())
            bar.update(len(chunk))
        print(f"{name}: top-1 {correct}/{len(rows)}")


if __name__ == "__main__":
    main()
