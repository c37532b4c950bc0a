"""Per-model preprocessing: resize the short side, centre-crop, scale to [0, 1], normalise.
Matches torchvision's ``Resize(256) -> CenterCrop(224) -> ToTensor -> Normalize`` on PIL images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def view(self, img: Image.Image) -> Image.Image:
        """The RGB image the model sees (resized and cropped), for overlays."""
        w, h = img.size
        if w <= h:
            size = (self.resize, int(self.resize * h / w))
        else:
            size = (int(self.resize * w / h), self.resize)
        img = img.convert("RGB").resize(size, Image.BILINEAR)
        w, h = img.size
        top = int(round((h - self.crop) / 2.0))
        left = int(round((w - self.crop) / 2.0))
        return img.crop((left, top, left + self.crop, top + self.crop))

    def normalize(self, view: Image.Image) -> torch.Tensor:
        """``(3, H, W)`` float tensor from an RGB view."""
        arr = torch.from_numpy(np.asarray(view, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean)[:, None, None]
        std = torch.tensor(self.std)[:, None, None]
        return (arr - mean) / std

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.normalize(self.view(img))
