"""Where the class images come from (``--data``): the synthetic world (``world`` or
``world:SPLIT``, with part masks), a folder of labelled images (``labels.csv`` with
``file,class_index`` columns, an ImageFolder tree or a Hugging Face dataset saved on disk, read as
``visionlens evaluate`` reads them), or the bundled sample photos (``samples``).

A source lists image ``items`` per class and renders a list of items into a batch:
``{"x": model input (N, 3, H, W), "views": [PIL images the model sees], "part_masks": (N, P, H, W)
or None, "part_ids": (N, P) or None}``. Folder photos can be expanded into ``views`` deterministic
crops/flips each (useful when a class has a single photo, as in the ImageNet sample).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import ImageLoadError, InputError, VisionlensWarning

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
        self.unreadable: list[str] = []  # rendered images are always readable
        self._labels: list[int] = []

    def classes(self) -> list[int]:
        return list(range(len(self.class_names)))

    def items(self, cls: int, limit: int) -> list[int]:
        """The first ``limit`` indices of the split whose label is ``cls``."""
        while sum(1 for lab in self._labels if lab == cls) < limit and len(self._labels) < 200000:
            start = len(self._labels)
            self._labels += [s["label"] for s in self.world.scenes(self.split, range(start, start + 256))]
        return [i for i, lab in enumerate(self._labels) if lab == cls][:limit]

    def readable_items(self, cls: int, limit: int) -> list[int]:
        """:meth:`items` (a rendered image is always readable)."""
        return self.items(cls, limit)

    def load(self, items: list) -> dict:
        batch = self.world.batch(self.split, items)
        mean = torch.tensor(self.preprocess.mean)[:, None, None]
        std = torch.tensor(self.preprocess.std)[:, None, None]
        return {"x": (batch["image"] - mean) / std, "views": [_tensor_to_pil(im) for im in batch["image"]],
                "part_masks": batch["part_masks"], "part_ids": batch["part_ids"]}


class PhotoSource:
    """Labelled photos: a folder of labelled images or the bundled samples; ``views`` crops/flips
    per photo (1 = the model's own centre crop only). A photo is a path or a stored dataset image."""

    def __init__(self, files_by_class: dict[int, list], preprocess, class_names=None, views: int = 1):
        if not 1 <= views <= len(_VIEW_LAYOUT):
            raise InputError(f"--views must be between 1 and {len(_VIEW_LAYOUT)}, got {views}")
        self.files_by_class, self.preprocess, self.views = files_by_class, preprocess, views
        self.views_per_item = views
        self.class_names = class_names
        self.part_names = None
        self.unreadable: list[str] = []  # one line per photo left out (see readable_items)

    @classmethod
    def from_folder(cls, folder: str | Path, model, views: int = 1, split: str | None = None,
                    label_column: str | None = None) -> "PhotoSource":
        """A folder as ``evaluate --data`` takes it (labels.csv, ImageFolder, saved Hugging Face
        dataset), its classes matched to the model's (names, indices or ImageNet WordNet IDs)."""
        from ..evaluation.data import label_map, model_labels, parse_data

        data = parse_data(os.fspath(folder), split=split, label_column=label_column)
        files: dict[int, list] = {}
        for _, source, label in model_labels(data["items"], label_map(data, model.name, model.class_names)):
            if label >= 0:
                files.setdefault(label, []).append(source)
        return cls(files, model.preprocess, model.class_names, views)

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

    def items(self, cls: int, limit: int) -> list[tuple[object, int]]:
        return [(f, v) for f in self.files_by_class.get(cls, []) for v in range(self.views)][:limit]

    def readable_items(self, cls: int, limit: int) -> list[tuple[object, int]]:
        """:meth:`items`, reading the class's photos in order until ``limit`` views are readable: a
        photo that cannot be read is dropped from the class (so later :meth:`items` calls skip it)
        and named on one line in :attr:`unreadable`."""
        from ..data.datasets import decode_image

        files, kept = self.files_by_class.get(cls, []), []
        for i, photo in enumerate(files):
            if len(kept) * self.views >= limit:
                kept += files[i:]  # not read yet
                break
            try:
                decode_image(photo)
            except ImageLoadError as err:
                self.unreadable.append(str(err))
                continue
            kept.append(photo)
        self.files_by_class[cls] = kept
        return self.items(cls, limit)

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
        from ..data.datasets import decode_image

        views = [self._view(decode_image(source), v) for source, v in items]
        return {"x": torch.stack([self.preprocess.normalize(v) for v in views]), "views": views,
                "part_masks": None, "part_ids": None}


def open_source(spec: str, model, views: int = 1, seed: int = 0, split: str | None = None,
                label_column: str | None = None):
    """Parse ``--data``: ``world[:split]``, ``samples`` or a folder of labelled images (``split``
    and ``label_column``: for a Hugging Face dataset)."""
    if spec == "world" or spec.startswith("world:"):
        source = WorldSource(spec, model.preprocess, seed)
        if tuple(model.class_names or ()) != tuple(source.class_names):  # its outputs would be read as world classes
            raise InputError(f"--data {spec} holds the synthetic world's {len(source.class_names)} classes, which "
                             f"{model.name} does not output; use a world model (world-cnn) or a folder of photos")
        if views > 1:
            warnings.warn(f"--views {views} is for photos; a world image is rendered once, so each class has "
                          "one view per image", VisionlensWarning, stacklevel=2)
    elif spec == "samples":
        source = PhotoSource.from_samples(model.preprocess, model.class_names, views)
    elif Path(spec).is_dir():
        return PhotoSource.from_folder(spec, model, views, split, label_column)
    else:
        raise InputError(f"--data {spec}: not a folder; use world[:split], samples or a folder of labelled images "
                         "(labels.csv, class sub-folders, or a Hugging Face dataset saved on disk)")
    for flag, value in (("--split", split), ("--label-column", label_column)):
        if value is not None:
            raise InputError(f"{flag} is for a Hugging Face dataset saved on disk; --data {spec} is not one")
    return source
