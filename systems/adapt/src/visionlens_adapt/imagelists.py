"""The standard source-free adaptation benchmarks as they are downloaded, read lazily.

* ``office31``: ``DIR/<domain>/images/<class>/*.jpg`` (amazon, dslr, webcam);
* ``officehome``: ``DIR/<Domain>/<Class>/*.jpg`` (Art, Clipart, Product, Real_World);
* ``visda``: ``DIR/train/image_list.txt`` and ``DIR/validation/image_list.txt`` (``path label``,
  paths relative to that split's folder); source ``train``, target ``validation``;
* ``domainnet``: ``DIR/<domain>/<class>/*.jpg`` with ``DIR/<domain>_train.txt`` (source) and
  ``DIR/<domain>_test.txt`` (target) lists (``domain/class/file.jpg label``, relative to ``DIR``);
* ``list``: any two image-list files (``relative/path label``, relative to the list's folder).

Only file names and labels are kept here; :class:`ImageList` decodes one image per item (resized
to ``size`` x ``size``, RGB in [0, 1]), so the training loops stream the images. Before any
training, every image a run will use is decoded once (:func:`unreadable`): a file that cannot be
read as an image is left out of its domain and reported, so that it cannot stop a run halfway."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from visionlens.data.images import IMAGE_SUFFIXES, load_image
from visionlens.errors import ImageLoadError, InputError, display, one_line

LAYOUTS = ("office31", "officehome", "visda", "domainnet", "list")


class ImageList(Dataset):
    """``(3, size, size)`` float images of ``paths``, decoded when asked for; ``workers``: the
    ``DataLoader`` processes the training loops use for it."""

    def __init__(self, paths: list[Path], size: int, workers: int = 0):
        self.paths, self.size, self.workers = paths, size, workers

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        img = load_image(self.paths[index]).resize((self.size, self.size), Image.BILINEAR)
        return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)


@dataclass
class Domain:
    """One domain's image files and labels, and the class names its labels index."""

    paths: list[Path]
    labels: list[int]
    classes: list[str]


def _subfolders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _pick(root: Path, name: str, what: str) -> Path:
    """The sub-folder ``name`` of ``root`` (case-insensitive), or one line naming the ones there."""
    if not root.is_dir():
        raise InputError(f"--data-dir {display(root)} is not a folder")
    found = {p.name.lower(): p for p in _subfolders(root)}
    if name.lower() not in found:
        raise InputError(f"{what} {name!r} has no folder in {display(root)}; it holds: "
                         f"{', '.join(p.name for p in _subfolders(root)) or 'nothing'}")
    return found[name.lower()]


def class_folders(root: Path, classes: list[str] | None = None) -> Domain:
    """A ``root/<class>/*`` domain; ``classes`` (the source's) fixes the label of each folder name."""
    folders = [p for p in _subfolders(root) if _images(p)]
    if not folders:
        raise InputError(f"{display(root)}: no class folder holds images")
    classes = classes or [p.name for p in folders]
    index = {c: i for i, c in enumerate(classes)}
    extra = [p.name for p in folders if p.name not in index]
    if extra:
        raise InputError(f"{display(root)}: class folder {extra[0]!r} is not a class of the source domain")
    paths, labels = [], []
    for p in folders:
        images = _images(p)
        paths += images
        labels += [index[p.name]] * len(images)
    return Domain(paths, labels, classes)


def read_list(path: Path, base: Path, classes: set[int] | None = None,
              source: Path | None = None) -> tuple[list[Path], list[int]]:
    """An image-list file: one ``relative/path label`` per line (paths relative to ``base``); a
    target list (``classes``: the labels of the ``source`` list) may use only the source's labels."""
    if path.is_dir():
        raise InputError(f"image list {display(path)} is a folder, not an image-list file ('relative/path label' lines)")
    if not path.is_file():
        raise InputError(f"image list {display(path)} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"image list {display(path)} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at "
                         f"offset {err.start}); expected 'relative/path label' lines") from None
    except OSError as err:
        raise InputError(f"cannot read image list {display(path)}: {err.strerror or err}") from None
    paths, labels = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        name, _, label = line.strip().rpartition(" ")
        if not name or not label.lstrip("-").isdigit() or int(label) < 0:
            raise InputError(f"{display(path)} line {number}: expected 'relative/path label' with a class index, "
                             f"got {line.strip()[:80]!r}")
        if classes is not None and int(label) not in classes:
            raise InputError(f"{display(path)} line {number}: label {int(label)} is not a class of the source domain "
                             f"({display(source)} uses labels {_labels(classes)})")
        image = base / name.strip()
        if not image.is_file():
            raise InputError(f"{display(path)} line {number}: image {display(image)} does not exist")
        paths.append(image)
        labels.append(int(label))
    if not paths:
        raise InputError(f"image list {display(path)} lists no image")
    return paths, labels


def _labels(classes: set[int]) -> str:
    """The labels of a list, shortly: ``0-30`` when they run without a gap, else the first few."""
    ordered = sorted(classes)
    if ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]}-{ordered[-1]}" if len(ordered) > 1 else str(ordered[0])
    return ", ".join(map(str, ordered[:8])) + (", ..." if len(ordered) > 8 else "")


def _read_pair(source: Path, source_base: Path, target: Path, target_base: Path):
    """The source list, then the target list checked against the source's labels."""
    src = read_list(source, source_base)
    return src, read_list(target, target_base, set(src[1]), source)


def list_classes(paths: list[Path], labels: list[int], base: Path, count: int) -> list[str]:
    """Class names of a list: the first folder of every image of a label when they agree
    (``aeroplane/x.jpg``, or ``clipart/aircraft_carrier/x.jpg`` after the domain), else the index."""
    names: dict[int, set[str]] = {}
    for p, label in zip(paths, labels):
        parts = p.relative_to(base).parts if p.is_relative_to(base) else p.parts
        names.setdefault(label, set()).add(parts[-2] if len(parts) > 1 else str(label))
    return [next(iter(names[i])) if len(names.get(i, ())) == 1 else str(i) for i in range(count)]


def _listed(source: tuple[list[Path], list[int]], target: tuple[list[Path], list[int]], base: Path) -> tuple[Domain, Domain]:
    count = max(source[1]) + 1  # the target's labels are the source's (checked by read_list)
    classes = list_classes(*source, base, count)
    return Domain(*source, classes), Domain(*target, classes)


def load_domains(layout: str, root: str | Path | None, source: str | None, target: str | None,
                 source_list: str | None = None, target_list: str | None = None) -> tuple[Domain, Domain]:
    """The source and target domains of a benchmark ``layout`` under ``root`` (see the module doc)."""
    if layout == "list":
        if not source_list or not target_list:
            raise InputError("--data list needs --source-list FILE and --target-list FILE ('relative/path label' lines)")
        s, t = Path(source_list), Path(target_list)
        src, tgt = _read_pair(s, s.parent, t, t.parent)
        return _listed(src, tgt, s.parent)
    if root is None:
        raise InputError(f"--data {layout} needs --data-dir DIR (the folder the dataset was unpacked into)")
    root = Path(root)
    if layout == "visda":
        src_dir, tgt_dir = _pick(root, source or "train", "split"), _pick(root, target or "validation", "split")
        src, tgt = _read_pair(src_dir / "image_list.txt", src_dir, tgt_dir / "image_list.txt", tgt_dir)
        return _listed(src, tgt, src_dir)
    if not source or not target:
        raise InputError(f"--data {layout} needs --source DOMAIN and --target DOMAIN (folders of {display(root)})")
    if layout == "domainnet":
        src_dir, tgt_dir = _pick(root, source, "domain"), _pick(root, target, "domain")
        src, tgt = _read_pair(root / f"{src_dir.name}_train.txt", root, root / f"{tgt_dir.name}_test.txt", root)
        return _listed(src, tgt, root)
    if layout == "office31":
        src_dir, tgt_dir = _pick(root, source, "domain") / "images", _pick(root, target, "domain") / "images"
        for d in (src_dir, tgt_dir):
            if not d.is_dir():
                raise InputError(f"{display(d)} does not exist (Office-31 keeps each domain's classes under images/)")
    elif layout == "officehome":
        src_dir, tgt_dir = _pick(root, source, "domain"), _pick(root, target, "domain")
    else:
        raise InputError(f"unknown dataset layout {layout!r}; choose from: {', '.join(LAYOUTS)}")
    src = class_folders(src_dir)
    return src, class_folders(tgt_dir, src.classes)


def subset(domain: Domain, n: int | None, seed: int) -> Domain:
    """``n`` images drawn without replacement (seeded), in their listed order; ``None``: all."""
    if n is None or n >= len(domain.paths):
        return domain
    keep = sorted(torch.randperm(len(domain.paths), generator=torch.Generator().manual_seed(seed))[:n].tolist())
    return Domain([domain.paths[i] for i in keep], [domain.labels[i] for i in keep], domain.classes)


class _Decode(Dataset):
    """``None`` for a path that decodes as an image, else the one-line reason it does not."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> str | None:
        try:
            load_image(self.paths[index])
        except ImageLoadError as err:
            return one_line(err)
        return None


def unreadable(paths: list[Path], workers: int = 0, known: dict | None = None) -> dict[str, str]:
    """``{path: reason}`` of the ``paths`` that cannot be read as an image (each decoded once, in
    ``workers`` processes; ``known``: ``{path: reason or None}`` of paths checked before, updated)."""
    known = {} if known is None else known
    todo = [p for p in dict.fromkeys(paths) if str(p) not in known]
    if todo:
        loader = DataLoader(_Decode(todo), batch_size=64, num_workers=workers, collate_fn=list)
        start = 0
        for reasons in loader:
            for path, reason in zip(todo[start:start + len(reasons)], reasons):
                known[str(path)] = reason
            start += len(reasons)
    return {str(p): known[str(p)] for p in paths if known[str(p)] is not None}


def readable(domain: Domain, workers: int = 0, known: dict | None = None, on_skip=None,
             what: str = "domain") -> Domain:
    """``domain`` less the images that cannot be read (:func:`unreadable`); ``on_skip(path,
    reason)`` hears of each one the first time it is found. A domain left without images is one
    line."""
    before = {} if known is None else known
    seen = set(before)
    bad = unreadable(domain.paths, workers, before)
    if on_skip is not None:
        for path, reason in bad.items():
            if path not in seen:
                on_skip(path, reason)
    if not bad:
        return domain
    keep = [i for i, p in enumerate(domain.paths) if str(p) not in bad]
    if not keep:
        raise InputError(f"no image of the {what} can be read ({len(bad)} unreadable, e.g. {next(iter(bad.values()))})")
    return Domain([domain.paths[i] for i in keep], [domain.labels[i] for i in keep], domain.classes)


def benchmark_shift(layout: str, root: str | Path | None, source: str | None, target: str | None, size: int = 224,
                    n_source: int | None = None, n_target: int | None = None, seed: int = 0, workers: int = 0,
                    source_list: str | None = None, target_list: str | None = None, known: dict | None = None,
                    on_skip=None):
    """A :class:`~visionlens_adapt.data.DomainShift` over the benchmark's files: images streamed
    from :class:`ImageList` datasets, labels (a few bytes each) in memory. Every chosen image is
    decoded once first: one that cannot be read is left out and reported through ``on_skip(path,
    reason)`` (see :func:`readable`; ``known`` carries what was checked across seeds)."""
    from .data import DomainShift

    src, tgt = load_domains(layout, root, source, target, source_list, target_list)
    src, tgt = subset(src, n_source, seed), subset(tgt, n_target, seed + 1)
    known = {} if known is None else known
    src = readable(src, workers, known, on_skip, "source domain")
    tgt = readable(tgt, workers, known, on_skip, "target domain")
    name = f"{layout}:{source or 'train'}->{target or 'validation'}" if layout != "list" else "list"
    return DomainShift(name, ImageList(src.paths, size, workers), torch.tensor(src.labels),
                       ImageList(tgt.paths, size, workers), torch.tensor(tgt.labels), tuple(src.classes))
