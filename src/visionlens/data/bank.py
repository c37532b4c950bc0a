"""Memory banks built from data: the embeddings of a synthetic-world split or of an image folder
(one sub-folder per class, or a ``file,label`` CSV), for self-supervised DAAM's k-NN vote."""

from __future__ import annotations

from pathlib import Path

import torch

from ..core.hooks import preserved_model_state
from ..core.memory_bank import MemoryBank
from ..core.vit import model_output
from ..errors import ImageLoadError, InputError
from .images import IMAGE_SUFFIXES, load_image


@torch.no_grad()
def embed(module: torch.nn.Module, batches) -> torch.Tensor:
    """Model outputs (embeddings) for an iterable of preprocessed ``(B, C, H, W)`` batches, in eval
    mode; every module's mode is restored afterwards (an empty iterable gives an empty tensor)."""
    device = next(module.parameters()).device
    with preserved_model_state(module):
        parts = [model_output(module(x.to(device))).float().cpu() for x in batches]
    return torch.cat(parts) if parts else torch.zeros(0)


def _folder_items(images: str | Path, labels: str | Path | None, class_names) -> tuple[list[Path], list[int], int, tuple | None]:
    import csv

    root = Path(images)
    if not root.is_dir():
        raise InputError(f"--images {root} is not a folder")
    if labels is not None:
        index = {n: i for i, n in enumerate(class_names or [])}
        files, ys = [], []
        with open(labels, newline="", encoding="utf-8") as f:
            for row in csv.reader(f):
                if not row or row[0].strip().lower() in ("file", "filename", "path"):
                    continue
                if len(row) < 2:
                    raise InputError(f"{labels}: each row must be file,label; got {row}")
                name, label = row[0].strip(), row[1].strip()
                if label.lstrip("-").isdigit():
                    y = int(label)
                elif label in index:
                    y = index[label]
                else:
                    raise InputError(f"{labels}: label {label!r} is neither a class index nor a class name of the model")
                files.append(root / name)
                ys.append(y)
        num = max(len(class_names or []), max(ys, default=-1) + 1)
        return files, ys, num, tuple(class_names) if class_names else None
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    if not classes:
        raise InputError(f"{root} has no class sub-folders; give one folder per class or a --labels CSV")
    # folders named after the model's classes keep the model's indices; otherwise sorted order
    known = class_names is not None and all(c in class_names for c in classes)
    index = {c: (list(class_names).index(c) if known else i) for i, c in enumerate(classes)}
    files, ys = [], []
    for c in classes:
        for p in sorted((root / c).rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                files.append(p)
                ys.append(index[c])
    return (files, ys, len(class_names), tuple(class_names)) if known else (files, ys, len(classes), tuple(classes))


def build_bank(model, images: str | Path | None = None, labels: str | Path | None = None, world_split: str = "train",
               n: int = 5000, batch_size: int = 250, unreadable: list | None = None) -> MemoryBank:
    """A memory bank of ``model``'s (a :class:`~visionlens.models.ZooModel`) embeddings: of the
    first ``n`` images of a synthetic-world split (default), or of the images under ``images``
    (one sub-folder per class, or labels from a ``file,label`` CSV). An image that cannot be read
    raises its one-line :class:`~visionlens.errors.ImageLoadError`, or, when an ``unreadable``
    list is given, is left out and its message appended to that list."""
    if images is None:
        from .world import World, WorldConfig

        size = model.preprocess.crop
        world = World(WorldConfig(size=size), seed=0)
        mean = torch.tensor(model.preprocess.mean)[:, None, None]
        std = torch.tensor(model.preprocess.std)[:, None, None]
        ys, chunks = [], []
        for start in range(0, n, batch_size):
            b = world.batch(world_split, range(start, min(n, start + batch_size)))
            chunks.append((b["image"] - mean) / std)
            ys.append(b["label"])
        feats = embed(model.module, chunks)
        return MemoryBank(feats, torch.cat(ys), len(model.class_names or []) or int(torch.cat(ys).max()) + 1,
                          model.class_names, model.name)
    files, ys, num, names = _folder_items(images, labels, model.class_names)
    if not files:
        raise InputError(f"no images found under {images}")
    kept: list[int] = []

    def batches():
        for start in range(0, len(files), batch_size):
            xs = []
            for i in range(start, min(start + batch_size, len(files))):
                try:
                    xs.append(model.preprocess(load_image(files[i])))
                except ImageLoadError as err:
                    if unreadable is None:
                        raise
                    unreadable.append(str(err))
                    continue
                kept.append(i)
            if xs:
                yield torch.stack(xs)

    feats = embed(model.module, batches())
    if not kept:
        raise InputError(f"no readable images under {images}")
    return MemoryBank(feats, torch.tensor([ys[i] for i in kept]), num, names, model.name)
