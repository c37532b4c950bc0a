"""Domain shifts to adapt across: same classes, a different look, labels for evaluation only.

* ``world``: the synthetic world (data/world.py) with disjoint background palettes and textures,
  plus a hue rotation, blur and pixel noise on the target (``strength``: mild / strong).
* ``digits``: scikit-learn's 8x8 digits upsampled to ``size``; the target half has low contrast
  on a lighter background and is rotated, blurred and noised.
* ``fashion``: Fashion-MNIST (Debian package ``dataset-fashion-mnist``, or ``--data-dir``) on its
  five confusable upper-body classes; the target (test split) gets a "painting" style: posterised,
  edge-enhanced, tinted and on a striped background.

``plant_outliers`` appends pure-noise images labelled -1 to a target set (for selection tests).
"""

from __future__ import annotations

import gzip
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from visionlens.checks import check_number
from visionlens.errors import InputError

SYNTHETIC = ("world", "digits", "fashion")
DATASETS = SYNTHETIC + ("office31", "officehome", "visda", "domainnet", "list")  # the last: imagelists.LAYOUTS
FASHION_CLASSES = (0, 2, 3, 4, 6)  # T-shirt/top, Pullover, Dress, Coat, Shirt
FASHION_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_DIRS = ("/usr/share/datasets/fashion-mnist",)


@dataclass
class DomainShift:
    """Source images/labels and target images/labels (target labels: evaluation only; -1 marks a
    planted outlier). Images: an ``(N, 3, H, W)`` tensor or a dataset of ``(3, H, W)`` tensors
    (decoded per item; see :mod:`visionlens_adapt.imagelists`)."""

    name: str
    source_x: torch.Tensor | Dataset
    source_y: torch.Tensor
    target_x: torch.Tensor | Dataset
    target_y: torch.Tensor
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def outliers(self) -> torch.Tensor:
        return self.target_y < 0


# target look per shift strength: hue rotation (degrees), blur (px), pixel noise (std)
WORLD_STRENGTHS = {"mild": (0.0, 0.0, 0.0), "strong": (40.0, 0.7, 0.1), "severe": (100.0, 1.0, 0.15)}


def world_shift(n_source: int = 2000, n_target: int = 1000, size: int = 32, strength: str = "strong",
                seed: int = 0) -> DomainShift:
    """Synthetic-world source (earth/sky palettes, smooth textures) -> target (slate/sand palettes,
    checker/noise textures, plus the hue rotation, blur and noise of ``WORLD_STRENGTHS[strength]``)."""
    from visionlens.data.world import CLASS_NAMES, Domain, World, WorldConfig

    if strength not in WORLD_STRENGTHS:
        raise InputError(f"unknown shift strength {strength!r}; choose from: {', '.join(WORLD_STRENGTHS)}")
    hue, blur, noise = WORLD_STRENGTHS[strength]
    source = Domain(palettes=("earth", "sky"), textures=("gradient", "stripes", "blobs"))
    target = Domain(palettes=("slate", "sand"), textures=("checker", "noise"), hue_shift=hue, blur=blur, noise=noise)
    src = World(WorldConfig(size=size, domain=source), seed=seed).batch("train", range(n_source))
    tgt = World(WorldConfig(size=size, domain=target), seed=seed).batch("test", range(n_target))
    return DomainShift(f"world-{strength}", src["image"], src["label"], tgt["image"], tgt["label"], tuple(CLASS_NAMES))


def _rotate_blur(x: torch.Tensor, degrees: torch.Tensor, blur: float) -> torch.Tensor:
    a = degrees * math.pi / 180
    theta = torch.zeros(len(x), 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    if blur > 0:
        r = max(1, int(math.ceil(2 * blur)))
        g = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32) ** 2 / (2 * blur**2))
        g = (g / g.sum()).to(x.dtype)
        c = x.shape[1]
        x = F.conv2d(F.pad(x, [r, r, 0, 0], mode="replicate"), g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        x = F.conv2d(F.pad(x, [0, 0, r, r], mode="replicate"), g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return x


def digits_shift(size: int = 32, seed: int = 0) -> DomainShift:
    """sklearn digits: a seeded half as source (clean, white on black), the other half as target
    (grey strokes on a lighter background: ``0.3 + 0.45 x``, rotated up to 25 degrees, blurred,
    Gaussian noise 0.1)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise InputError("the digits shift needs scikit-learn; pip install scikit-learn") from None
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    y = torch.tensor(digits.target)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=gen)
    half = len(x) // 2
    s, t = order[:half], order[half:]
    xt = 0.3 + 0.45 * x[t]
    xt = _rotate_blur(xt, (torch.rand(len(t), generator=gen) * 2 - 1) * 25, blur=0.8)
    xt = (xt + 0.1 * torch.randn(xt.shape, generator=gen)).clamp(0, 1)
    names = tuple(str(i) for i in range(10))
    return DomainShift("digits", x[s].repeat(1, 3, 1, 1), y[s], xt.repeat(1, 3, 1, 1), y[t], names)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_dir(data_dir: str | Path | None = None) -> Path:
    """Where the Fashion-MNIST idx files are: ``data_dir``, ``$VISIONLENS_FASHION_MNIST`` or the
    Debian package's directory."""
    candidates = [data_dir] if data_dir else [os.environ.get("VISIONLENS_FASHION_MNIST"), *FASHION_DIRS]
    for c in candidates:
        if c and (Path(c) / "t10k-images-idx3-ubyte.gz").is_file():
            return Path(c)
    raise InputError("Fashion-MNIST not found; install the Debian package dataset-fashion-mnist "
                     "(or `apt-get download` it and `dpkg-deb -x` it) and pass --data-dir DIR")


def _paint_style(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Posterise to 4 levels, enhance edges, tint each image, put it on a striped background."""
    n, _, h, w = x.shape
    post = (x * 3).round() / 3
    lap = torch.tensor([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], dtype=torch.float32).view(1, 1, 3, 3)
    edged = (post + 0.7 * F.conv2d(F.pad(post, [1] * 4, mode="replicate"), lap)).clamp(0, 1)
    tint = 0.4 + 0.6 * torch.rand(n, 3, 1, 1, generator=gen)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    angle = torch.rand(n, 1, 1, generator=gen) * math.pi
    freq = 0.3 + 0.4 * torch.rand(n, 1, 1, generator=gen)
    stripes = 0.5 + 0.5 * torch.sin(freq * (xs * angle.cos() + ys * angle.sin()))
    background = (0.15 + 0.35 * stripes[:, None]) * torch.rand(n, 3, 1, 1, generator=gen)
    mask = (x > 0.08).float()
    return mask * edged * tint + (1 - mask) * background


def fashion_shift(data_dir: str | Path | None = None, n_source: int = 3000, n_target: int = 1500, size: int = 32,
                  classes: tuple[int, ...] = FASHION_CLASSES, seed: int = 0) -> DomainShift:
    """Fashion-MNIST confusable classes: clean train-split source -> painting-style test-split target."""
    root = fashion_dir(data_dir)

    def split(prefix: str, n: int, gen: torch.Generator):
        images = _read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
        labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
        keep = np.flatnonzero(np.isin(labels, classes))
        _check_count("n_source" if prefix == "train" else "n_target", n, len(keep))
        pick = keep[torch.randperm(len(keep), generator=gen)[:n].numpy()]
        x = torch.tensor(images[pick], dtype=torch.float32)[:, None] / 255.0
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
        remap = {c: i for i, c in enumerate(classes)}
        return x, torch.tensor([remap[int(v)] for v in labels[pick]])

    gen = torch.Generator().manual_seed(seed)
    xs, ys = split("train", n_source, gen)
    xt, yt = split("t10k", n_target, gen)
    xt = _paint_style(xt, gen)
    return DomainShift("fashion", xs.repeat(1, 3, 1, 1), ys, xt, yt, tuple(FASHION_NAMES[c] for c in classes))


def plant_outliers(shift: DomainShift, fraction: float = 0.02, seed: int = 0) -> DomainShift:
    """Append ``ceil(fraction * n)`` uniform-noise images labelled -1 to the target set."""
    if not 0 <= fraction < 1:  # also NaN
        raise InputError(f"outlier fraction must be in [0, 1), got {fraction}")
    m = math.ceil(fraction * len(shift.target_x))
    if m == 0:
        return shift
    gen = torch.Generator().manual_seed(seed)
    tensor = torch.is_tensor(shift.target_x)
    noise = torch.rand((m, *(shift.target_x.shape[1:] if tensor else shift.target_x[0].shape)), generator=gen)
    target = torch.cat([shift.target_x, noise]) if tensor else WithNoise(shift.target_x, noise)
    return DomainShift(shift.name, shift.source_x, shift.source_y, target,
                       torch.cat([shift.target_y, torch.full((m,), -1, dtype=torch.long)]), shift.class_names)


class WithNoise(Dataset):
    """A dataset's images followed by ``noise`` images (planted outliers); keeps its ``workers``."""

    def __init__(self, images: Dataset, noise: torch.Tensor):
        self.images, self.noise, self.workers = images, noise, getattr(images, "workers", 0)

    def __len__(self) -> int:
        return len(self.images) + len(self.noise)

    def __getitem__(self, index: int) -> torch.Tensor:
        n = len(self.images)
        return self.images[index] if index < n else self.noise[index - n]


def class_count(name: str) -> int:
    """The number of classes of the named shift."""
    from visionlens.data.world import CLASS_NAMES

    counts = {"world": len(CLASS_NAMES), "digits": 10, "fashion": len(FASHION_CLASSES)}
    if name not in counts:
        raise InputError(f"unknown dataset {name!r}; choose from: {', '.join(DATASETS)}")
    return counts[name]


def _check_count(name: str, value: int | None, available: int | None = None) -> None:
    """``None`` (the default size) or a whole number from 1 to ``available``."""
    if value is None:
        return
    check_number(name, value, minimum=1, integer=True)
    if available is not None and value > available:
        raise InputError(f"{name} is {value} but the dataset has {available} images there; ask for at most {available}")


def load_shift(name: str, seed: int = 0, size: int = 32, n_source: int | None = None, n_target: int | None = None,
               data_dir: str | None = None, strength: str = "strong") -> DomainShift:
    """A named domain shift (see :data:`DATASETS`); ``n_source`` / ``n_target``: ``None`` for the
    dataset's default size, else the number of images (never more than the dataset has)."""
    _check_count("n_source", n_source)
    _check_count("n_target", n_target)
    if name == "world":
        return world_shift(2000 if n_source is None else n_source, 1000 if n_target is None else n_target, size,
                           strength, seed)
    if name == "digits":
        shift = digits_shift(size, seed)
        _check_count("n_source", n_source, len(shift.source_x))
        _check_count("n_target", n_target, len(shift.target_x))
        return DomainShift(shift.name, shift.source_x[:n_source], shift.source_y[:n_source],
                           shift.target_x[:n_target], shift.target_y[:n_target], shift.class_names)
    if name == "fashion":
        return fashion_shift(data_dir, 3000 if n_source is None else n_source, 1500 if n_target is None else n_target,
                             size, seed=seed)
    raise InputError(f"unknown dataset {name!r}; choose from: {', '.join(DATASETS)}")
