"""Labelled image collections read lazily: an ImageFolder tree (one sub-folder of images per class),
a Hugging Face ``datasets`` dataset saved with ``save_to_disk``, or (image, label) pairs; and the
matching of their class names to a model's classes.

Each reader returns :class:`Labelled`: per image a key (its path relative to the data root,
``split/index`` for a Hugging Face dataset, the index or the path for pairs), a source that
:func:`decode_image` opens only when the image is needed, and a label. A label is an index into
``classes`` when the collection names its classes (folders, ``ClassLabel`` names, string labels);
:func:`match_classes` turns those names into a model's class indices."""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..errors import ImageLoadError, InputError, display
from .images import IMAGE_SUFFIXES, _to_rgb_uint8, load_image

HF_DATASET_FILES = ("dataset_info.json", "state.json")
HF_DATASET_DICT_FILE = "dataset_dict.json"


@dataclass
class Labelled:
    """Images of a collection: ``items`` (key, source, label), ``classes`` (what a label indexes,
    None: labels are class indices already) and ``identity`` (what the results depend on)."""

    items: list
    classes: list[str] | None
    identity: dict


# --- what a folder holds ----------------------------------------------------------------------

def is_hf_dataset(root: Path) -> bool:
    """Whether ``root`` was written by ``save_to_disk`` (a Dataset or a DatasetDict)."""
    return (root / HF_DATASET_DICT_FILE).is_file() or all((root / f).is_file() for f in HF_DATASET_FILES)


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _iter_images(folder: Path):
    """The image files under ``folder`` (sub-folders too; hidden files and folders left out), unsorted."""
    return (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _images_under(folder: Path) -> list[Path]:
    return sorted(_iter_images(folder))


def is_image_folder(root: Path) -> bool:
    """Whether ``root`` has a sub-folder with images (the ImageFolder layout); stops at the first image."""
    return any(next(_iter_images(d), None) is not None for d in _class_folders(root))


# --- ImageFolder ------------------------------------------------------------------------------

def image_folder(root: Path) -> Labelled:
    """An ImageFolder tree: each sub-folder is a class (named by class index or class name), its
    images (sub-folders included) keyed ``class/file.jpg``; nothing is decoded here."""
    classes, items = [], []
    for folder in _class_folders(root):
        images = _images_under(folder)
        if images:
            classes.append(folder.name)
            items += [(p.relative_to(root).as_posix(), p, len(classes) - 1) for p in images]
    if not items:
        raise InputError(f"bad --data '{display(root)}': no class sub-folder holds images")
    listing = "\n".join(f"{key}\t{classes[label]}" for key, _, label in items)
    return Labelled(items, classes, {"listing_sha256": hashlib.sha256(listing.encode()).hexdigest()})


# --- Hugging Face datasets --------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetImage:
    """One image of a Hugging Face dataset, decoded when :meth:`load` is called."""

    dataset: object
    index: int
    column: str
    key: str = ""

    def load(self) -> Image.Image:
        return self.dataset[self.index][self.column]


def _load_from_disk(root: Path):
    try:
        import datasets
    except ImportError:
        raise InputError(f"--data '{display(root)}' is a Hugging Face dataset, and the datasets package is not "
                         "installed: pip install 'visionlens[datasets]'") from None
    shown = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # the command's own output stays one line per event
    try:
        return datasets, datasets.load_from_disk(str(root))
    except (OSError, ValueError, FileNotFoundError) as err:
        raise InputError(f"--data '{display(root)}': cannot read the Hugging Face dataset "
                         f"({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
    finally:
        if shown:
            datasets.enable_progress_bars()


def _chosen_split(ds, root: Path, split: str | None):
    """The Dataset to read and its split name (a DatasetDict needs ``split``)."""
    if hasattr(ds, "keys") and not hasattr(ds, "features"):  # a DatasetDict
        names = list(ds.keys())
        if split is None:
            raise InputError(f"--data '{display(root)}' has the splits {', '.join(names)}: choose one with --split")
        if split not in names:
            raise InputError(f"--split {split}: --data '{display(root)}' has the splits {', '.join(names)}")
        return ds[split], split, root / split
    if split is not None and ds.split is not None and str(ds.split) != split:
        raise InputError(f"--split {split}: --data '{display(root)}' holds the split {ds.split} only")
    return ds, str(ds.split or split or "data"), root


def _first_column(features, kind, what: str, root: Path) -> str:
    for name, feature in features.items():
        if isinstance(feature, kind):
            return name
    raise InputError(f"--data '{display(root)}' has no {what} column (columns: {', '.join(features)})")


def _label_column(datasets, features, label_column: str | None, root: Path) -> str:
    if label_column is None:
        try:
            return _first_column(features, datasets.ClassLabel, "ClassLabel", root)
        except InputError as err:
            raise InputError(f"{err}; name the label column with --label-column") from None
    if label_column not in features:
        close = difflib.get_close_matches(label_column, list(features), n=3) or list(features)
        raise InputError(f"--label-column {label_column}: no such column in --data '{display(root)}' "
                         f"(columns: {', '.join(close)})")
    return label_column


def _fingerprint(folder: Path) -> str | None:
    try:
        return json.loads((folder / "state.json").read_text(encoding="utf-8")).get("_fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def hf_dataset(root: Path, split: str | None = None, label_column: str | None = None,
               n: int | None = None) -> Labelled:
    """The first ``n`` rows of a dataset saved with ``save_to_disk``: image column = the first
    ``Image`` feature, labels from the first ``ClassLabel`` (or ``label_column``); images keyed
    ``split/index`` and decoded one at a time, when a batch needs them (the arrow file is
    memory-mapped). A single Dataset's split is its recorded one, else ``split``, else ``data``."""
    datasets, loaded = _load_from_disk(root)
    ds, split_name, folder = _chosen_split(loaded, root, split)
    image_col = _first_column(ds.features, datasets.Image, "Image", root)
    label_col = _label_column(datasets, ds.features, label_column, root)
    feature = ds.features[label_col]
    classes = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    labels = list(itertools.islice(ds.select_columns([label_col])[label_col], n))
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in labels):
        raise InputError(f"--label-column {label_col}: labels must be whole numbers (class indices)")
    images = ds.select_columns([image_col])
    items = [(f"{split_name}/{i}", DatasetImage(images, i, image_col, f"{display(root)} {split_name}/{i}"), lab)
             for i, lab in enumerate(labels)]
    identity = {"fingerprint": _fingerprint(folder), "split": split_name, "image_column": image_col,
                "label_column": label_col, "rows": len(ds)}
    return Labelled(items, classes, identity)


# --- (image, label) pairs ---------------------------------------------------------------------

def _pair(entry, index: int) -> tuple:
    try:
        image, label = entry
    except (TypeError, ValueError):
        raise InputError(f"data item {index} is not an (image, label) pair") from None
    if isinstance(image, (str, os.PathLike)):
        return Path(image).as_posix(), Path(image), label
    if isinstance(image, Image.Image):
        return str(index), image, label
    raise InputError(f"data item {index}: the image is a {type(image).__name__}; give a PIL image or a file path")


def _pair_labels(items: list) -> tuple[list, list[str] | None]:
    """Labels as class indices, or (all strings) as positions in their sorted names."""
    labels = [lab for _, _, lab in items]
    is_index = lambda v: isinstance(v, numbers.Integral) and not isinstance(v, bool)  # noqa: E731
    if all(is_index(v) for v in labels):
        return [int(v) for v in labels], None
    if all(isinstance(v, str) for v in labels):
        classes = sorted(set(labels))
        return [classes.index(v) for v in labels], classes
    bad = next((i for i, v in enumerate(labels) if not is_index(v) and not isinstance(v, str)), None)
    if bad is not None:
        raise InputError(f"data labels must all be class indices (int) or all class names (str); "
                         f"item {bad} has the label {labels[bad]!r}")
    first_index = next(i for i, v in enumerate(labels) if is_index(v))
    first_name = next(i for i, v in enumerate(labels) if isinstance(v, str))
    raise InputError(f"data labels must all be class indices (int) or all class names (str), not a mix: item "
                     f"{first_name} has the name {labels[first_name]!r} and item {first_index} the index "
                     f"{int(labels[first_index])}")


def pairs(iterable, n: int | None) -> Labelled:
    """The first ``n`` (image, label) pairs of ``iterable``: an image is a PIL image (kept as given)
    or a file path (decoded when needed), keyed by its index or its path. Their content is not
    fingerprinted (that would decode every image): a resumed run trusts that the same pairs come
    in the same order."""
    try:
        taken = list(itertools.islice(iter(iterable), n))
    except TypeError:
        raise InputError(f"data must be a spec string, a path or an iterable of (image, label) pairs, "
                         f"not {type(iterable).__name__}") from None
    if not taken:
        raise InputError("data has no (image, label) pairs")
    items = [_pair(entry, i) for i, entry in enumerate(taken)]
    keys = [key for key, _, _ in items]
    if len(set(keys)) < len(keys):
        twice = next(k for k in keys if keys.count(k) > 1)
        raise InputError(f"data lists the image {twice!r} twice")
    labels, classes = _pair_labels(items)
    items = [(key, src, lab) for (key, src, _), lab in zip(items, labels)]
    return Labelled(items, classes, {})


# --- images and classes -----------------------------------------------------------------------

def decode_image(source) -> Image.Image:
    """The RGB image of an item's source: a file path, a PIL image, or a lazy dataset image."""
    if isinstance(source, (str, os.PathLike)):
        return load_image(source)
    where = source.key if isinstance(source, DatasetImage) else "an image given as a PIL image"
    try:
        img = source.load() if isinstance(source, DatasetImage) else source
        img.load()
    except ImageLoadError:
        raise
    except Exception as err:  # noqa: BLE001 - a corrupt stored image, reported as one line
        raise ImageLoadError(f"{where}: cannot be decoded ({type(err).__name__}: {err})") from None
    return _to_rgb_uint8(img, where)


def is_class_number(name: str) -> bool:
    """Whether a data class name is a class index (ASCII digits: ``int`` reads it)."""
    return name.isascii() and name.isdigit()


def class_keys(model_classes) -> dict[str, int]:
    """The model's class index by normalised class name (:func:`~visionlens.models.zoo.class_name_key`;
    the first class of a name when two share it), for :func:`class_index`."""
    from ..models.zoo import class_name_key

    index: dict[str, int] = {}
    for i, c in enumerate(model_classes):
        index.setdefault(class_name_key(c), i)
    return index


def class_index(name: str, model_classes, keys: dict[str, int] | None = None) -> int | None:
    """The model's class index that the data class ``name`` names, or None when it names none: a
    whole number is an index (as given: the caller checks its range), any other name is matched to
    ``model_classes`` (case, ``_``, ``-`` and space insensitive) or, for a 1,000-class model, read as
    an ImageNet WordNet ID or WordNet lemma (see :func:`match_classes`). ``keys``: the
    :func:`class_keys` of ``model_classes``, when many names are matched."""
    from ..models.zoo import class_name_key, imagenet_alias_index

    if is_class_number(name):
        return int(name)
    keys = class_keys(model_classes) if keys is None else keys
    found = keys.get(class_name_key(name))
    return found if found is not None else imagenet_alias_index(name, len(model_classes))


def match_classes(names: list[str], model_classes, model: str, data: str, flag: str = "--data",
                  noun: str = "class") -> list[int]:
    """The model's class index of each data class name: a whole number is an index, any other name
    is matched to the model's class names (case, ``_``, ``-`` and space insensitive) or, for a
    1,000-class model, read as an ImageNet WordNet ID (``n01440764``: ImageNet's own folder names)
    or WordNet lemma (``tench``, ``tiger cat``: the names torchvision and Keras use). A model
    without class names reads the classes as indices when every one is a whole number, else takes
    the data's own order (sorted folders, ``ClassLabel`` order), as torchvision's ImageFolder does.
    One :class:`InputError` line names a class that matches nothing (``{flag} {data}: {noun} 'NAME'
    is none of the classes ...``)."""
    from ..models.zoo import close_class_names

    if model_classes is None:
        numbered = all(is_class_number(n) for n in names)
        return [int(n) for n in names] if numbered else list(range(len(names)))
    keys = class_keys(model_classes)
    out = []
    for name in names:
        found = class_index(name, model_classes, keys)
        if found is None:
            close = close_class_names(name, model_classes, cutoff=0.5)
            hint = f"; close names: {', '.join(close)}" if close else ""
            raise InputError(f"{flag} {data}: {noun} {name!r} is none of the classes of model '{model}'{hint} "
                             "(name it by class index or by one of the model's class names)")
        out.append(found)
    return out
