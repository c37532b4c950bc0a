"""Where the class images come from (``--data``): the synthetic world (``world`` or
``world:SPLIT``, with part masks), a folder with ``labels.csv`` (``file,class_index`` columns),
or the bundled sample photos (``samples``).

A source lists image ``items`` per class and renders a list of items into a batch:
``{"x": model input (N, 3, H, W), "views": [PIL images the model sees], "part_masks": (N, P, H, W)
or None, "part_ids": (N, P) or None}``. Folder photos can be expanded into ``views`` deterministic
crops/flips each (useful when a class has a single photo, as in the ImageNet sample).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InputError

# (horizontal flip, crop centre x, crop centre y) of the crop views, in order
_VIEW_LAYOUT = [(False, 0.5, 0.5), (True, 0.5, 0.5), (False, 0.0, 0.0), (True, 1.0, 1.0), (False, 1.0, 0.0),
                (True, 0.0, 1.0), (False, 0.0, 1.0), (True, 1.0, 0.0)]


def _tensor_to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8))


class WorldSource:
    """Class images from one split of the synthetic world (rendered on demand, with part masks)."""

    def __init__(self, spec: str, preprocess, seed: int = 0):
        from ..data.world import CLASS_NAMES, PART_NAMES, SPLITS, World

        _, _, split = spec.partition(":")
        split = split or "val"
        if split not in SPLITS:
            raise InputError(f"unknown world split '{split}' in --data {spec}; use world:train, world:val or world:test")
        self.split, self.world, self.preprocess = split, World(seed=seed), preprocess
        self.class_names, self.part_names = list(CLASS_NAMES), list(PART_NAMES)
        self.views_per_item = 1
        self._labels: list[int] = []

    def classes(self) -> list[int]:
        return list(range(len(self.class_names)))

    def items(self, cls: int, limit: int) -> list[int]:
        """The first ``limit`` indices of the split whose label is ``cls``."""
        while sum(1 for lab in self._labels if lab == cls) < limit and len(self._labels) < 200000:
            start = len(self._labels)
            self._labels += [s["label"] for s in self.world.scenes(self.split, range(start, start + 256))]
        return [i for i, lab in enumerate(self._labels) if lab == cls][:limit]

    def load(self, items: list) -> dict:
        batch = self.world.batch(self.split, items)
        mean = torch.tensor(self.preprocess.mean)[:, None, None]
        std = torch.tensor(self.preprocess.std)[:, None, None]
        return {"x": (batch["image"] - mean) / std, "views": [_tensor_to_pil(im) for im in batch["image"]],
                "part_masks": batch["part_masks"], "part_ids": batch["part_ids"]}


class PhotoSource:
    """Labelled photos: a folder with ``labels.csv`` or the bundled samples; ``views`` crops/flips
    per photo (1 = the model's own centre crop only)."""

    def __init__(self, files_by_class: dict[int, list[Path]], preprocess, class_names=None, views: int = 1):
        if not 1 <= views <= len(_VIEW_LAYOUT):
            raise InputError(f"--views must be between 1 and {len(_VIEW_LAYOUT)}, got {views}")
        self.files_by_class, self.preprocess, self.views = files_by_class, preprocess, views
        self.views_per_item = views
        self.class_names = class_names
        self.part_names = None

    @classmethod
    def from_folder(cls, folder: str | Path, preprocess, class_names=None, views: int = 1) -> "PhotoSource":
        folder = Path(folder)
        table = folder / "labels.csv"
        if not table.is_file():
            raise InputError(f"{folder}: no labels.csv (columns file,class_index) found; "
                             "use --data world, --data samples or a labelled folder")
        files: dict[int, list[Path]] = {}
        with table.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or "file" not in reader.fieldnames or "class_index" not in reader.fieldnames:
                raise InputError(f"{table}: needs the columns file,class_index")
            for row in reader:
                try:
                    label = int(row["class_index"])
                except (TypeError, ValueError):
                    raise InputError(f"{table}: class_index {row['class_index']!r} is not an integer") from None
                files.setdefault(label, []).append(folder / row["file"])
        return cls(files, preprocess, class_names, views)

    @classmethod
    def from_samples(cls, preprocess, class_names=None, views: int = 1) -> "PhotoSource":
        from ..data.samples import imagenet_label, sample_images

        files: dict[int, list[Path]] = {}
        for path in sample_images("imagenet"):
            label = imagenet_label(path)
            if label is not None:
                files.setdefault(label, []).append(Path(path))
        return cls(files, preprocess, class_names, views)

    def classes(self) -> list[int]:
        return sorted(self.files_by_class)

    def items(self, cls: int, limit: int) -> list[tuple[Path, int]]:
        return [(f, v) for f in self.files_by_class.get(cls, []) for v in range(self.views)][:limit]

    def _view(self, img: Image.Image, index: int) -> Image.Image:
        if index == 0:
            return self.preprocess.view(img)
        flip, fx, fy = _VIEW_LAYOUT[index]
        pre = self.preprocess
        w, h = img.size
        scale = pre.resize / min(w, h)
        img = img.convert("RGB").resize((max(pre.crop, round(w * scale)), max(pre.crop, round(h * scale))), Image.BILINEAR)
        left = round(fx * (img.width - pre.crop))
        top = round(fy * (img.height - pre.crop))
        view = img.crop((left, top, left + pre.crop, top + pre.crop))
        return view.transpose(Image.FLIP_LEFT_RIGHT) if flip else view

    def load(self, items: list) -> dict:
        from ..data.images import load_image

        views = [self._view(load_image(path), v) for path, v in items]
        return {"x": torch.stack([self.preprocess.normalize(v) for v in views]), "views": views,
                "part_masks": None, "part_ids": None}


def open_source(spec: str, model, views: int = 1, seed: int = 0):
    """Parse ``--data``: ``world[:split]``, ``samples`` or a folder with labels.csv."""
    if spec == "world" or spec.startswith("world:"):
        return WorldSource(spec, model.preprocess, seed)
    if spec == "samples":
        return PhotoSource.from_samples(model.preprocess, model.class_names, views)
    if Path(spec).is_dir():
        return PhotoSource.from_folder(spec, model.preprocess, model.class_names, views)
    raise InputError(f"--data {spec}: not a folder; use world[:split], samples or a folder with labels.csv")
