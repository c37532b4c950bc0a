"""Per-model preprocessing: resize (the short side, or the whole image to a square), centre-crop,
scale to [0, 1], normalise. The defaults match torchvision's ``Resize(256) -> CenterCrop(224) ->
ToTensor -> Normalize`` on PIL images; hub models get theirs from their own config (see hub.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MAX_RESIZED_PIXELS = 1 << 24  # above this, view() resizes only the cropped region (same view, bounded memory)
INTERPOLATIONS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
                  "lanczos": Image.LANCZOS, "box": Image.BOX, "hamming": Image.HAMMING}


@dataclass(frozen=True)
class Preprocess:
    """``resize``: the short side before the ``crop`` (centre, square); ``squash=True`` resizes the
    whole image to ``resize`` x ``resize`` first, ignoring its aspect (as many Hugging Face
    processors do, with ``resize == crop``)."""

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    squash: bool = False

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; use one of {', '.join(INTERPOLATIONS)}")

    def view(self, img: Image.Image) -> Image.Image:
        """The RGB image the model sees (resized and cropped), for overlays."""
        resample = INTERPOLATIONS[self.interpolation]
        img = img.convert("RGB")
        w, h = img.size
        if self.squash:
            size = (self.resize, self.resize)
        elif w <= h:
            size = (self.resize, int(self.resize * h / w))
        else:
            size = (int(self.resize * w / h), self.resize)
        top = int(round((size[1] - self.crop) / 2.0))
        left = int(round((size[0] - self.crop) / 2.0))
        if size[0] * size[1] > MAX_RESIZED_PIXELS:  # an extreme aspect ratio (2000 x 1 px would be 512000 x 256):
            sx, sy = w / size[0], h / size[1]     # resize only the region the crop keeps
            box = (left * sx, top * sy, (left + self.crop) * sx, (top + self.crop) * sy)
            return img.resize((self.crop, self.crop), resample, box=box)
        img = img.resize(size, resample)
        return img.crop((left, top, left + self.crop, top + self.crop))

    def normalize(self, view: Image.Image) -> torch.Tensor:
        """``(3, H, W)`` float tensor from an RGB view."""
        arr = torch.from_numpy(np.asarray(view, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean)[:, None, None]
        std = torch.tensor(self.std)[:, None, None]
        return (arr - mean) / std

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.normalize(self.view(img))

    def describe(self) -> dict:
        """The settings as a JSON-ready dict (recorded in ``summary.json``)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
