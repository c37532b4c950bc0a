"""Image folders for ``sata evaluate --data DIR``: an ImageFolder tree (``DIR/class/img``), whose
images the built-in corruptions can corrupt on the fly, or an ImageNet-C-style tree
(``DIR/corruption/severity/class/img``, severities 1-5) of images corrupted beforehand.

Only the file list is read here; a :class:`FolderImages` dataset decodes one image per item, so a
``DataLoader`` streams the images (never all of them in memory)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from visionlens.data.datasets import image_folder, is_image_folder
from visionlens.data.images import load_image
from visionlens.errors import ImageLoadError, InputError, display, one_line

from .corruptions import CORRUPTIONS, SEVERITIES


@dataclass
class EvalSet:
    """One evaluated set: ``name`` (``clean`` or ``corruption:severity``), the corruption to apply
    on the fly (``None``: the files are used as they are), and its ``paths`` and folder ``classes``
    (label = index into ``classes``)."""

    name: str
    corruption: str | None
    severity: int
    paths: list[Path]
    labels: list[int]
    classes: list[str]


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _severity_folders(folder: Path) -> list[Path]:
    return [d for d in _class_folders(folder) if d.name.isdigit() and int(d.name) in SEVERITIES]


def is_corruption_tree(root: Path) -> bool:
    """Whether ``root`` holds ``corruption/severity/class/img`` folders (ImageNet-C layout)."""
    return any(_severity_folders(d) and any(is_image_folder(s) for s in _severity_folders(d))
               for d in _class_folders(root))


def _folder_set(root: Path, name: str, corruption: str | None, severity: int) -> EvalSet:
    data = image_folder(root)
    return EvalSet(name, corruption, severity, [p for _, p, _ in data.items], [lab for _, _, lab in data.items],
                   data.classes)


def corruption_tree_sets(root: Path, corruptions: tuple[str, ...] | None, severities: tuple[int, ...]) -> list[EvalSet]:
    """The ``corruption/severity`` sets of an ImageNet-C-style tree (``corruptions``: names of its
    folders, ``None``: all of them)."""
    found = {d.name: d for d in _class_folders(root) if _severity_folders(d)}
    mixed = [d.name for d in _class_folders(root) if d.name not in found]
    if mixed:
        raise InputError(f"--data {display(root)} mixes corruption folders ({next(iter(found))}/1/...) with other "
                         f"folders ({mixed[0]}); point --data at one layout")
    wanted = corruptions or tuple(sorted(found))
    missing = [c for c in wanted if c not in found]
    if missing:
        raise InputError(f"corruption {missing[0]!r} has no folder in --data {display(root)}; "
                         f"it holds: {', '.join(sorted(found))}")
    sets = []
    for c in wanted:
        for folder in _severity_folders(found[c]):
            if int(folder.name) in severities and is_image_folder(folder):
                sets.append(_folder_set(folder, f"{c}:{int(folder.name)}", None, int(folder.name)))
    if not sets:
        raise InputError(f"--data {display(root)}: no folder of severity {', '.join(map(str, severities))} holds images")
    if len({tuple(s.classes) for s in sets}) > 1:
        raise InputError(f"--data {display(root)}: the corruption folders do not all hold the same class folders")
    return sets


def folder_sets(root: str | Path, corruptions: tuple[str, ...] | None, severities: tuple[int, ...]) -> list[EvalSet]:
    """The sets to evaluate under ``root``: an ImageNet-C-style tree's folders, or an ImageFolder's
    clean images plus each built-in corruption (``corruptions``; ``None``: clean only) at each
    severity, applied on the fly."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"--data {display(root)} is not a folder; give an ImageFolder tree (DIR/class/image) or an "
                         "ImageNet-C-style tree (DIR/corruption/severity/class/image)")
    if is_corruption_tree(root):
        return corruption_tree_sets(root, corruptions, severities)
    if not is_image_folder(root):
        raise InputError(f"--data {display(root)}: no class sub-folder holds images (expected DIR/class/image or "
                         "DIR/corruption/severity/class/image)")
    bad = [c for c in corruptions or () if c not in CORRUPTIONS]
    if bad:
        raise InputError(f"unknown corruption {bad[0]!r}; choose from: {', '.join(CORRUPTIONS)}")
    clean = _folder_set(root, "clean", None, 0)
    sets = [clean]
    for c in corruptions or ():
        sets += [EvalSet(f"{c}:{s}", c, s, clean.paths, clean.labels, clean.classes) for s in severities]
    return sets


def listing_sha256(sets: list[EvalSet], root: Path) -> str:
    """A hash of every set's name, files (relative to ``root``) and labels: what the results depend on."""
    digest = hashlib.sha256()
    for s in sets:
        digest.update(f"{s.name}\n".encode())
        for p, label in zip(s.paths, s.labels):
            digest.update(f"{p.relative_to(root).as_posix()}\t{s.classes[label]}\n".encode())
    return digest.hexdigest()


class FolderImages(Dataset):
    """``(image, label, index, problem)`` per item: the model's view (resize and crop of
    ``preprocess``) as a float ``(3, H, W)`` tensor in [0, 1] (normalisation comes after any
    corruption) and ``None``; or, for a file that cannot be read as an image, ``None`` and the
    one-line reason (:func:`collate_items` leaves it out of the batch)."""

    def __init__(self, paths: list[Path], labels: list[int], preprocess):
        self.paths, self.labels, self.preprocess = paths, labels, preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            view = self.preprocess.view(load_image(self.paths[index]))
        except ImageLoadError as err:
            return None, self.labels[index], index, one_line(err)
        image = torch.from_numpy(np.asarray(view, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return image, self.labels[index], index, None


def collate_items(items: list) -> tuple:
    """A batch of :class:`FolderImages` items: ``(images, labels, indices, skipped)``, where the
    unreadable items are left out of the first three and listed in ``skipped`` as
    ``(index, reason)``; ``images`` is ``None`` when no item of the batch could be read."""
    good = [it for it in items if it[3] is None]
    skipped = [(it[2], it[3]) for it in items if it[3] is not None]
    images = torch.stack([it[0] for it in good]) if good else None
    return (images, torch.tensor([it[1] for it in good], dtype=torch.long),
            torch.tensor([it[2] for it in good], dtype=torch.long), skipped)
