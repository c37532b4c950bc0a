"""Top-1 accuracy of the zoo models on a folder of labelled ImageNet photos.

Usage: python benchmarks/zoo_accuracy.py ../shared/data/imagenet-sample [--models mobilenet_v2 ...]
The folder needs labels.csv with columns file and class_index. The default models are the zoo's
ImageNet classifiers (the synthetic world's models mean nothing on photos).
"""

from __future__ import annotations

import csv

import torch

import visionlens
from visionlens.core.progress import Progress
from visionlens.data import load_image

import _cli


def main() -> None:
    imagenet = visionlens.available_models("imagenet")
    parser = _cli.Parser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=_cli.folder, help="photos with labels.csv (columns file, class_index)")
    parser.add_argument("--models", nargs="+", choices=imagenet, default=imagenet,
                        help=f"ImageNet models of the zoo (default: all, {' '.join(imagenet)})")
    parser.add_argument("--batch-size", type=_cli.positive_int, default=50)
    args = parser.parse_args()
    with open(args.folder / "labels.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"file", "class_index"} <= set(rows[0]):
        _cli.fail(f"{args.folder / 'labels.csv'} needs rows with the columns file and class_index")
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
    _cli.run(main)
