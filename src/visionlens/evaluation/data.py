"""The data of an evaluation: specs (``world[:split]``, ``samples``, a folder with labels.csv, an
ImageFolder tree, a Hugging Face dataset saved on disk, or (image, label) pairs in the API), the
images they list (decoded only when a batch needs them), and batches of them within a byte budget
(:data:`BATCH_BYTES`)."""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import datasets as _sets
from ..errors import ImageLoadError, InputError, VisionlensError, display
from ..models.zoo import ZooModel

BATCH_BYTES = 128 * 3 * 224 * 224 * 4
"""The most bytes of input images one batch holds (the default scoring batch of 224 px images,
about 74 MiB): a batch size asked for beyond it is capped, whatever the flag says."""

CPU_SCORING_BYTES = 32 * 3 * 224 * 224 * 4
"""The most bytes of input images one scoring pass holds on a CPU (32 images of 224 px): a CPU's
throughput stops growing at a few dozen images and then falls (MobileNetV2 on a 2-core CPU, the
floor of ``benchmarks/evaluate_floor.py``: 0.98 images/s at 32, 0.78 at 64, 0.64 at 128)."""

DATA_KINDS = ("world[:split]", "samples", "a folder with labels.csv", "an ImageFolder tree (one sub-folder of "
              "images per class)", "a Hugging Face dataset saved with save_to_disk")


def parse_data(spec, split: str | None = None, label_column: str | None = None, n: int | None = None) -> dict:
    """``world[:split]`` (masks and boxes), ``samples`` (bundled photos), a folder (labels.csv, an
    ImageFolder tree or a Hugging Face dataset saved on disk; ``split`` and ``label_column`` for the
    latter), or, in the API, an iterable of (image, label) pairs (its first ``n``)."""
    parsed = _parse_data(spec, split, label_column, n)
    unused = [flag for flag, v in (("--split", split), ("--label-column", label_column)) if v is not None]
    if unused and parsed["kind"] != "hf-dataset":
        raise InputError(f"{unused[0]} is for a Hugging Face dataset saved on disk; --data {parsed['name']} is not one")
    return parsed


def _parse_data(spec, split: str | None, label_column: str | None, n: int | None) -> dict:
    """The data ``spec`` names, by kind (see :func:`parse_data`)."""
    if not isinstance(spec, (str, os.PathLike)):
        found = _sets.pairs(spec, n)
        return {"kind": "pairs", "name": f"{len(found.items)} (image, label) pairs", "items": found.items,
                "classes": found.classes, "identity": found.identity}
    spec = os.fspath(spec)
    if spec == "world" or spec.startswith("world:"):
        split = spec.partition(":")[2] or "test"
        if split not in ("train", "val", "test"):
            raise InputError(f"bad --data '{spec}': world split must be train, val or test")
        return {"kind": "world", "split": split, "name": f"world:{split}"}
    if spec == "samples":
        return {"kind": "samples", "name": "samples"}
    folder = Path(spec)
    if not folder.is_dir():
        raise InputError(f"bad --data '{display(spec)}': use {', '.join(DATA_KINDS[:-1])} or {DATA_KINDS[-1]}")
    if (folder / "labels.csv").is_file():
        return _labels_csv(spec, folder, folder / "labels.csv")
    if _sets.is_hf_dataset(folder):
        found = _sets.hf_dataset(folder, split, label_column, n)
        name = f"{folder} ({found.identity['split']})"
        return {"kind": "hf-dataset", "name": name, "path": str(folder), "items": found.items,
                "classes": found.classes, "identity": found.identity}
    if _sets.is_image_folder(folder):
        found = _sets.image_folder(folder)
        return {"kind": "imagefolder", "name": str(folder), "path": str(folder), "items": found.items,
                "classes": found.classes, "identity": found.identity}
    raise InputError(f"bad --data '{display(spec)}': the folder has no labels.csv (columns file,class_index), no "
                     "class sub-folders with images (ImageFolder) and no Hugging Face dataset (save_to_disk)")


def _labels_csv(spec: str, folder: Path, labels: Path) -> dict:
    """A folder of images listed in labels.csv (file,class_index)."""
    items = _labelled_items(spec, folder, labels)
    missing = [key for key, p, _ in items if not p.is_file()]
    if missing:
        raise InputError(f"bad --data '{spec}': labels.csv lists {len(missing)} file(s) that are not in the folder, "
                         f"first {missing[0]!r}")
    return {"kind": "folder", "name": str(folder), "items": items,
            "labels_sha256": hashlib.sha256(labels.read_bytes()).hexdigest()}


def _labelled_items(spec: str, folder: Path, labels: Path) -> list[tuple[str, Path, int]]:
    """(image key, path, label) per row of labels.csv, each row checked (one line naming it). A
    byte-order mark (Excel's "CSV UTF-8") is not part of the first column's name."""
    with open(labels, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        rows = [(reader.line_num, r) for r in reader]  # a row's line in the file (blank lines count)
        columns = [c.strip() for c in reader.fieldnames or []]
    if "file" not in columns or "class_index" not in columns:
        found = f" (its first line: {','.join(columns)[:200]})" if columns else " (it is empty)"
        raise InputError(f"bad --data '{spec}': labels.csv needs the columns file,class_index{found}")
    if not rows:
        raise InputError(f"bad --data '{spec}': labels.csv lists no images")
    items, lines = [], {}
    for line, r in rows:
        r = {(k or "").strip(): v for k, v in r.items()}  # a header "file, class_index" too
        name, value = (r.get("file") or "").strip(), r.get("class_index")
        if not name:
            raise InputError(f"bad --data '{spec}': labels.csv line {line}: empty file name")
        if value is None or not value.strip():
            raise InputError(f"bad --data '{spec}': labels.csv line {line}: missing class_index")
        try:
            label = int(value)
        except ValueError:
            raise InputError(f"bad --data '{spec}': labels.csv line {line}: class_index {value!r} "
                             "is not a whole number") from None
        if label < 0:
            raise InputError(f"bad --data '{spec}': labels.csv line {line}: class_index {label} is negative")
        key = image_key(name)
        if key in lines:
            raise InputError(f"bad --data '{spec}': labels.csv line {line}: {name!r} is listed twice "
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
    unreadable: dict = field(default_factory=dict)  # image id -> why it was left out (skip_unreadable)
    positions: list | None = None  # with images left out: each image's position among the items asked for

    def pin_memory(self) -> "Batch":
        """The batch in pinned memory (``DataLoader(pin_memory=True)`` calls this), for fast copies to a GPU."""
        pin = lambda t: None if t is None else t.pin_memory()  # noqa: E731
        return Batch(self.ids, pin(self.x), pin(self.raw), pin(self.labels), pin(self.masks), pin(self.boxes),
                     self.unreadable, self.positions)


def load_batch(data: dict, items, model: ZooModel, skip_unreadable: bool = False) -> Batch:
    """The images ``items`` ((id, source, label) of :func:`data_items`, labels as the model's class
    indices: :func:`model_labels`) as ``model`` takes them. An image that cannot be read raises its
    one-line :class:`ImageLoadError`, or with ``skip_unreadable`` is left out of the batch and named
    in ``Batch.unreadable``."""
    pre = model.preprocess
    mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
    ids = [i for i, _, _ in items]
    if data["kind"] == "world":
        from ..data.world import World, WorldConfig

        b = World(WorldConfig(size=pre.crop)).batch(data["split"], [src for _, src, _ in items])
        raw = b["image"]
        return Batch(ids, (raw - mean) / std, raw, b["label"], b["object_mask"], b["object_box"])
    xs, kept, positions, unreadable = [], [], [], {}
    for position, item in enumerate(items):
        try:
            xs.append(pre(_sets.decode_image(item[1])))
        except ImageLoadError as err:
            if not skip_unreadable:
                raise
            unreadable[item[0]] = str(err)
            continue
        kept.append(item)
        positions.append(position)
    x = torch.stack(xs) if xs else torch.zeros(0, 3, pre.crop, pre.crop)
    return Batch([i for i, _, _ in kept], x, (x * std + mean).clamp(0, 1),
                 torch.tensor([lab for _, _, lab in kept], dtype=torch.long), unreadable=unreadable,
                 positions=positions if unreadable else None)


def label_map(data: dict, model_name: str, class_names) -> list[int] | None:
    """The model's class index of each of the data's classes (None: the labels are class indices
    already); one :class:`InputError` line for a class the model does not have."""
    if data.get("classes") is None:
        return None
    return _sets.match_classes(data["classes"], class_names, model_name, data["name"])


def model_labels(items, mapping: list[int] | None) -> list:
    """``items`` with each label (a position in the data's classes) as the model's class index
    (``mapping`` of :func:`label_map`; None: the labels are class indices already; -1 stays unknown)."""
    if mapping is None:
        return list(items)
    return [(key, src, mapping[lab] if lab >= 0 else lab) for key, src, lab in items]


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


def scoring_bound(scorer: torch.nn.Module, x: torch.Tensor, cap: int | None = None, timed: bool = True) -> int:
    """Images per forward pass of the scoring: the device's memory bound for ``scorer`` on images
    like ``x`` (:func:`visionlens.core.inference.batch_bound`: a share of the free memory over one
    probe forward's per-image bytes), at most ``cap`` (``--scoring-batch``); on a CPU at most
    :data:`BATCH_BYTES` of input images and, without a cap, at most :data:`CPU_SCORING_BYTES` and
    the fastest batch size within that bound
    (:func:`visionlens.core.inference.fastest_batch`: a few timed forward passes; not with
    ``timed=False``, e.g. for a compiled copy, which runs every pass at its one batch size)."""
    from ..core.inference import batch_bound, fastest_batch

    if x.device.type == "cuda":
        return batch_bound(scorer, x, cap=cap)
    budget = min(BATCH_BYTES, CPU_SCORING_BYTES) if timed and cap is None else BATCH_BYTES
    ceiling = max(1, budget // (x[0].numel() * x.element_size()))
    bound = batch_bound(scorer, x, cap=cap, ceiling=ceiling)
    return bound if cap is not None or not timed else fastest_batch(scorer, x, bound)


def loader_workers(data: dict, asked: int | None, batches: int) -> int:
    """Processes that decode images ahead of the compute: ``asked`` (``--decode-workers``), else
    none for the synthetic world (generated in this process, and cheaply) or a single batch, one
    per spare CPU up to 4 for files."""
    if asked is not None:
        return asked
    if data["kind"] == "world" or batches <= 1:
        return 0
    return max(1, min(4, (os.cpu_count() or 2) - 1))


class _Batches(torch.utils.data.Dataset):
    """The batches ``chunks`` (lists of items), each loaded by :func:`load_batch`; a failure is
    returned, not raised, so that the main process raises it as its one line."""

    def __init__(self, data: dict, chunks: list, model):
        self.data, self.chunks, self.model = data, chunks, model

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int):
        try:
            return load_batch(self.data, self.chunks[i], self.model, skip_unreadable=True)
        except VisionlensError as err:
            return err
        except Exception as err:  # noqa: BLE001 - sent back to the main process as one line
            return RuntimeError(f"{type(err).__name__}: {err}")


def prefetched(data: dict, chunks: list, model: ZooModel, workers: int = 0):
    """The batches ``chunks`` in order, loaded (:func:`load_batch`, unreadable images left out and
    named) by a ``DataLoader`` with ``workers`` processes that decode the next batches while this
    one computes (pinned memory when the model is on CUDA); ``workers=0`` loads each batch here
    when it is asked for."""
    if workers == 0:
        for chunk in chunks:
            yield load_batch(data, chunk, model, skip_unreadable=True)
        return
    light = _PreprocessOnly(model.preprocess)  # the workers need the preprocessing, not the model
    loader = torch.utils.data.DataLoader(_Batches(data, chunks, light), batch_size=None, num_workers=workers,
                                         pin_memory=torch.device(model.device).type == "cuda")
    for b in loader:
        if isinstance(b, Exception):
            raise b
        yield b


@dataclass
class _PreprocessOnly:
    """What :func:`load_batch` reads of a model."""

    preprocess: object
