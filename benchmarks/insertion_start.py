"""Insertion AUC of Grad-CAM's maps from two start images: the sampled Gaussian visionlens used until
2026-12-07 and RISE's own kernel (``metrics.rise_kernel``, the default now); paired difference with
its 95 % CI over the images.

    python benchmarks/insertion_start.py world --n 200
    python benchmarks/insertion_start.py imagenet --n 100 --data ../shared/data/imagenet-sample
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import visionlens
from visionlens.metrics.faithfulness import insertion

import _cli


def sampled_gaussian_blur(x: torch.Tensor, size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """The earlier start image: each channel convolved with a sampled, normalised Gaussian."""
    r = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-r**2 / (2 * sigma**2))
    k = g[:, None] * g[None, :]
    k = (k / k.sum()).to(x)
    return F.conv2d(x, k.expand(x.shape[1], 1, size, size), padding=size // 2, groups=x.shape[1])


def world_batches(n: int, batch: int):
    from visionlens.data.world import World
    from visionlens.models.world_eval import normalise

    zoo = visionlens.load_model("world-cnn", device="cpu")
    world = World()
    for s in range(0, n, batch):
        b = world.batch("test", range(s, min(n, s + batch)))
        yield zoo, normalise(b["image"]), b["label"], None  # step: the image width (RISE)


def imagenet_batches(n: int, batch: int, data: Path):
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))[:n]
    if not files:
        _cli.fail(f"no photos (.jpg, .jpeg, .png) under {data}")
    zoo = visionlens.load_model("mobilenet_v2", device="cpu")
    for s in range(0, len(files), batch):
        x = torch.stack([zoo.preprocess(visionlens.data.load_image(f)) for f in files[s:s + batch]])
        yield zoo, x, None, 3136  # 16 steps of 3,136 pixels at 224 px


def parser() -> _cli.Parser:
    parser = _cli.Parser(description=__doc__.splitlines()[0])
    parser.add_argument("source", metavar="data", choices=["world", "imagenet"], help="world or imagenet")
    parser.add_argument("--n", type=_cli.positive_int, default=100, help="images (default 100)")
    parser.add_argument("--batch", type=_cli.positive_int, default=10, help="images per batch (default 10)")
    parser.add_argument("--data", dest="photos", type=_cli.folder, default=Path("../shared/data/imagenet-sample"),
                        help="photo folder for imagenet (default ../shared/data/imagenet-sample)")
    return parser


def main() -> None:
    args = parser().parse_args()
    torch.set_num_threads(1)
    batches = (world_batches(args.n, args.batch) if args.source == "world"
               else imagenet_batches(args.n, args.batch, args.photos))
    was, now = [], []
    for zoo, x, labels, step in batches:
        maps = visionlens.GradCAM(zoo.module)(x, labels).maps
        now.append(insertion(zoo.module, x, maps, target=labels, step=step))
        was.append(insertion(zoo.module, x, maps, target=labels, step=step, substrate=sampled_gaussian_blur(x)))
    a, b = torch.cat(was).numpy(), torch.cat(now).numpy()
    d = b - a
    print(f"{zoo.name} Grad-CAM, {len(d)} images: insertion from the sampled Gaussian {a.mean():.4f}, from RISE's "
          f"kernel {b.mean():.4f}; difference {d.mean():+.4f} +/- {1.96 * d.std(ddof=1) / np.sqrt(len(d)):.4f} "
          f"(95 % CI), largest on one image {np.abs(d).max():.4f}")


if __name__ == "__main__":
    _cli.run(main)
