"""The data of an evaluation: specs (``world[:split]``, ``samples``, a folder with labels.csv), the
images they list, and batches of them within a byte budget (:data:`BATCH_BYTES`)."""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ImageLoadError, InputError
from ..models.zoo import ZooModel

BATCH_BYTES = 128 * 3 * 224 * 224 * 4
"""The most bytes of input images one batch holds (the default scoring batch of 224 px images,
about 74 MiB): a batch size asked for beyond it is capped, whatever the flag says."""


def parse_data(spec: str) -> dict:
    """``world[:split]`` (masks and boxes), ``samples`` (bundled photos), or a folder with labels.csv."""
    if spec == "world" or spec.startswith("world:"):
        split = spec.partition(":")[2] or "test"
        if split not in ("train", "val", "test"):
            raise InputError(f"bad --data '{spec}': world split must be train, val or test")
        return {"kind": "world", "split": split, "name": f"world:{split}"}
    if spec == "samples":
        return {"kind": "samples", "name": "samples"}
    folder = Path(spec)
    if not folder.is_dir():
        raise InputError(f"bad --data '{spec}': use world[:split], samples, or a folder of images with labels.csv")
    labels = folder / "labels.csv"
    if not labels.is_file():
        raise InputError(f"bad --data '{spec}': the folder has no labels.csv (columns file,class_index)")
    items = _labelled_items(spec, folder, labels)
    missing = [key for key, p, _ in items if not p.is_file()]
    if missing:
        raise InputError(f"bad --data '{spec}': labels.csv lists {len(missing)} file(s) that are not in the folder, "
                         f"first {missing[0]!r}")
    return {"kind": "folder", "name": str(folder), "items": items,
            "labels_sha256": hashlib.sha256(labels.read_bytes()).hexdigest()}


def _labelled_items(spec: str, folder: Path, labels: Path) -> list[tuple[str, Path, int]]:
    """(image key, path, label) per row of labels.csv, each row checked (one line naming it)."""
    with open(labels, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "file" not in rows[0] or "class_index" not in rows[0]:
        raise InputError(f"bad --data '{spec}': labels.csv needs the columns file,class_index")
    items, lines = [], {}
    for line, r in enumerate(rows, start=2):
        try:
            label = int(r["class_index"])
        except (TypeError, ValueError):
            raise InputError(f"bad --data '{spec}': labels.csv line {line}: class_index {r['class_index']!r} "
                             "is not a whole number") from None
        if label < 0:
            raise InputError(f"bad --data '{spec}': labels.csv line {line}: class_index {label} is negative")
        key = image_key(r["file"] or "")
        if key in lines:
            raise InputError(f"bad --data '{spec}': labels.csv line {line}: {r['file']!r} is listed twice "
                             f"(first on line {lines[key]})")
        lines[key] = line
        items.append((key, folder / key, label))
    return items


def image_key(file: str) -> str:
    """The id of a folder's image in results: its path relative to the data root (the folder with
    labels.csv), normalised, with ``/`` separators, so that ``a/x.JPEG`` and ``b/x.JPEG`` stay two
    images. Results written when images were keyed by file name alone keep their keys in a flat
    folder (name and path agree); in a nested one they match no image and are computed again."""
    return Path(os.path.normpath(file)).as_posix()


def ground_truth(data: dict) -> set[str]:
    """What a metric may need that the data provides (``MetricInfo.needs``)."""
    return {"model", "masks", "boxes"} if data["kind"] == "world" else {"model"}


def data_items(data: dict, n: int | None) -> list[tuple[str, object, int]]:
    """(image id, source, label) for the first ``n`` images."""
    if data["kind"] == "world":
        count = n if n is not None else 2000
        return [(f"{data['name']}:{i}", i, -1) for i in range(count)]
    if data["kind"] == "samples":
        from ..data.samples import imagenet_label, sample_images

        items = [(p.name, p, imagenet_label(p)) for p in sample_images("all")]
        items = [(i, p, -1 if lab is None else lab) for i, p, lab in items]
    else:
        items = list(data["items"])
    return items[:n] if n is not None else items


@dataclass
class Batch:
    """Images of one batch: ids, model inputs ``x`` (normalised), ``raw`` images in [0, 1], labels
    (-1: unknown) and, for the synthetic world, object masks and boxes (None otherwise)."""

    ids: list[str]
    x: torch.Tensor
    raw: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None = None
    boxes: torch.Tensor | None = None


def load_batch(data: dict, items, model: ZooModel) -> Batch:
    """The images ``items`` ((id, source, label) of :func:`data_items`) as ``model`` takes them."""
    pre = model.preprocess
    mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
    ids = [i for i, _, _ in items]
    if data["kind"] == "world":
        from ..data.world import World, WorldConfig

        b = World(WorldConfig(size=pre.crop)).batch(data["split"], [src for _, src, _ in items])
        raw = b["image"]
        return Batch(ids, (raw - mean) / std, raw, b["label"], b["object_mask"], b["object_box"])
    from ..data.images import load_image

    try:
        xs = [pre(load_image(src)) for _, src, _ in items]
    except ImageLoadError as err:
        raise ImageLoadError(f"{err}; replace the file and re-run to resume (results so far are kept), or list only "
                             "readable images in labels.csv and use a new --out") from None
    x = torch.stack(xs)
    return Batch(ids, x, (x * std + mean).clamp(0, 1), torch.tensor([lab for _, _, lab in items]))


def image_bytes(model: ZooModel) -> int:
    """Bytes of one model input image (float32 RGB at the crop size)."""
    return 3 * model.preprocess.crop ** 2 * 4


def image_batch(batch_size: int, count: int, per_image: int) -> int:
    """How many images are loaded and explained together: ``batch_size``, but no more than there are
    images (``count``) or than fit in :data:`BATCH_BYTES` (``per_image`` bytes each)."""
    return max(1, min(batch_size, count, BATCH_BYTES // per_image))


def scoring_batch(batch_size: int, per_image: int) -> int:
    """How many perturbed images the metrics score per forward pass: eight per image of the batch
    (at least 64), but no more than fit in :data:`BATCH_BYTES` (``per_image`` bytes each)."""
    return max(1, min(max(batch_size * 8, 64), BATCH_BYTES // per_image))
