"""Memory banks built from data: the embeddings of a synthetic-world split or of an image folder
(one sub-folder per class, or a ``file,label`` CSV), for self-supervised DAAM's k-NN vote."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..core.hooks import preserved_model_state
from ..core.memory_bank import MemoryBank
from ..core.progress import Progress
from ..core.vit import model_output
from ..errors import ImageLoadError, InputError, VisionlensWarning, display
from .datasets import class_index, class_keys, image_folder, is_class_number, is_image_folder, match_classes
from .images import load_image


@torch.no_grad()
def embed(module: torch.nn.Module, batches, progress: Progress | None = None) -> torch.Tensor:
    """Model outputs (embeddings) for an iterable of preprocessed ``(B, C, H, W)`` batches, in eval
    mode; every module's mode is restored afterwards (an empty iterable gives an empty tensor).
    ``progress`` advances by each batch's images once they are embedded."""
    device = next(module.parameters()).device
    parts = []
    with preserved_model_state(module):
        for x in batches:
            parts.append(model_output(module(x.to(device))).float().cpu())
            if progress is not None:
                progress.update(len(x))
    return torch.cat(parts) if parts else torch.zeros(0)


# --- the output file ---------------------------------------------------------------------------

def save_bank(bank: MemoryBank, dest: str | Path) -> Path:
    """``bank.save(dest)``; a failed write (a full disk, a folder that went away) is one line that
    names ``dest`` (not the temporary file it was written to first)."""
    try:
        return bank.save(dest)
    except OSError as err:
        raise InputError(f"--out {display(dest)}: cannot write the bank ({err.strerror or type(err).__name__}); "
                         "nothing was written") from None


# --- the images of a folder --------------------------------------------------------------------

LABEL_COLUMNS = ("label", "class_index", "class", "class_name")
"""The label column of a ``--labels`` CSV whose header (first cell ``file``) names one of these;
else its second column."""


def _csv_items(root: Path, labels: str | Path, class_names) -> tuple[list[Path], list[int], int, tuple | None]:
    """The files and labels of a ``file,label`` CSV (a label: a class index or a class name of the
    model, matched as ``evaluate`` matches class names); one line naming a bad row."""
    import csv

    where = display(labels)
    if not Path(labels).is_file():
        raise InputError(f"--labels {where} is not a file")
    keys = class_keys(class_names) if class_names else {}
    files, ys, missing = [], [], []
    try:
        with open(labels, newline="", encoding="utf-8-sig") as f:  # Excel's "CSV UTF-8" starts with a BOM
            reader = csv.reader(f)
            column = 1  # the label's column: the second, or the one a header names
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if row[0].strip().lower() in ("file", "filename", "path"):  # a header
                    header = [cell.strip().lower() for cell in row]
                    column = next((header.index(c) for c in LABEL_COLUMNS if c in header), 1)
                    continue
                name = row[0].strip()
                label = row[column].strip() if len(row) > column else ""
                if not name:
                    raise InputError(f"--labels {where} line {line}: empty file name")
                if not label:
                    raise InputError(f"--labels {where} line {line}: missing label (a class index or class name)")
                y = (class_index(label, class_names, keys) if class_names
                     else int(label) if is_class_number(label) else None)
                if y is None:
                    what = "a class index" + (" or a class name of the model" if class_names else
                                              " (the model has no class names)")
                    raise InputError(f"--labels {where} line {line}: label {label!r} is not {what}")
                if class_names and y >= len(class_names):
                    raise InputError(f"--labels {where} line {line}: class index {y} is not a class of the model "
                                     f"(0-{len(class_names) - 1})")
                files.append(root / name)
                ys.append(y)
                if not files[-1].is_file():
                    missing.append((line, name))
    except UnicodeDecodeError:
        raise InputError(f"--labels {where} is not UTF-8 text") from None
    except csv.Error as err:
        raise InputError(f"--labels {where}: not a readable CSV ({err})") from None
    if not files:
        raise InputError(f"--labels {where} lists no images")
    if missing:  # a data file naming what is not there is refused before any work, as `evaluate` refuses it
        line, name = missing[0]
        raise InputError(f"--labels {where} lists {len(missing)} file(s) that are not in {display(root)}, first "
                         f"{name!r} (line {line}); fix the CSV or the --images folder")
    num = max(len(class_names or []), max(ys) + 1)
    return files, ys, num, tuple(class_names) if class_names else None


def _folder_classes(root: Path, names: list[str], model) -> tuple[list[int], int, tuple]:
    """The label of each class folder ``names``, the number of classes and their names: the model's
    class indices when every folder names one of its classes (by index, name, WordNet ID or alias,
    as ``evaluate`` matches an ImageFolder); the sorted folder order, with a warning, when none
    does; one :class:`InputError` line naming a folder that does not when the others do."""
    classes = model.class_names
    if classes:
        keys = class_keys(classes)
        found = [class_index(n, classes, keys) for n in names]
        for name, index in zip(names, found):
            if index is not None and index >= len(classes):
                raise InputError(f"--images {display(root)}: folder {name!r} is not a class index of model "
                                 f"'{model.name}' (0-{len(classes) - 1})")
        if all(index is not None for index in found):
            return found, len(classes), tuple(classes)
        if any(index is not None for index in found):
            match_classes(names, classes, model.name, display(root), flag="--images", noun="folder")  # raises
    elif all(is_class_number(n) for n in names):  # a model without class names: folders named by index keep it
        return [int(n) for n in names], max(int(n) for n in names) + 1, None
    if classes:
        warnings.warn(f"--images {display(root)}: no class folder is named after a class of model '{model.name}' "
                      f"(by class index or class name); the bank numbers its {len(names)} classes 0-{len(names) - 1} "
                      "in sorted folder order", VisionlensWarning, stacklevel=4)
    return list(range(len(names))), len(names), tuple(names)


def _folder_items(images: str | Path, labels: str | Path | None, model) -> tuple[list[Path], list[int], int, tuple | None]:
    root = Path(images)
    if not root.is_dir():
        raise InputError(f"--images {display(root)} is not a folder")
    if labels is not None:
        return _csv_items(root, labels, model.class_names)
    if not is_image_folder(root):
        raise InputError(f"--images {display(root)} has no class sub-folder with images; give one folder per class "
                         "or a --labels CSV")
    found = image_folder(root)  # the folders and files that evaluate reads as an ImageFolder
    mapping, num, names = _folder_classes(root, found.classes, model)
    return [p for _, p, _ in found.items], [mapping[lab] for _, _, lab in found.items], num, names


# --- the bank -------------------------------------------------------------------------------------

def build_bank(model, images: str | Path | None = None, labels: str | Path | None = None, world_split: str = "train",
               n: int = 5000, batch_size: int = 250, unreadable: list | None = None,
               progress: bool = False) -> MemoryBank:
    """A memory bank of ``model``'s (a :class:`~visionlens.models.ZooModel`) embeddings: of the
    first ``n`` images of a synthetic-world split (default), or of the images under ``images``
    (one sub-folder per class, or labels from a ``file,label`` CSV). Class folders named after the
    model's classes (by index, name, WordNet ID or alias, as ``evaluate`` matches them) keep the
    model's class indices; when none is, the classes are numbered in sorted folder order (a
    :class:`~visionlens.errors.VisionlensWarning` says so); a mix is refused. An image that cannot
    be read raises its one-line :class:`~visionlens.errors.ImageLoadError`, or, when an
    ``unreadable`` list is given, is left out and its message appended to that list. ``progress``:
    a progress bar of the images embedded (on a terminal)."""
    if images is None and labels is not None:
        raise InputError("--labels lists files of a folder: give that folder with --images")
    if images is None:
        from .world import World, WorldConfig

        size = model.preprocess.crop
        world = World(WorldConfig(size=size), seed=0)
        mean = torch.tensor(model.preprocess.mean)[:, None, None]
        std = torch.tensor(model.preprocess.std)[:, None, None]
        ys: list[torch.Tensor] = []

        def world_batches():
            for start in range(0, n, batch_size):
                b = world.batch(world_split, range(start, min(n, start + batch_size)))
                ys.append(b["label"])
                yield (b["image"] - mean) / std

        bar = Progress(n, f"bank ({model.name})", enabled=progress)
        try:
            feats = embed(model.module, world_batches(), bar)
        finally:
            bar.close()
        labels_ = torch.cat(ys)
        return MemoryBank(feats, labels_, len(model.class_names or []) or int(labels_.max()) + 1,
                          model.class_names, model.name)
    files, ys_, num, names = _folder_items(images, labels, model)
    if not files:
        raise InputError(f"no images found under {display(images)}")
    kept: list[int] = []
    bar = Progress(len(files), f"bank ({model.name})", enabled=progress)

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
                    bar.update(1)  # done with it: left out
                    continue
                kept.append(i)
            if xs:
                yield torch.stack(xs)

    try:
        feats = embed(model.module, batches(), bar)
    finally:
        bar.close()
    if not kept:
        raise InputError(f"no readable images under {display(images)}")
    return MemoryBank(feats, torch.tensor([ys_[i] for i in kept]), num, names, model.name)
