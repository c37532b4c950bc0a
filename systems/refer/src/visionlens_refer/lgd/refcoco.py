"""RefCOCO / RefCOCO+ / RefCOCOg in the lichengunc "refer" layout:

    DATA/refcoco/refs(unc).p  DATA/refcoco/instances.json     (refcoco+: refs(unc).p,
    refcocog: refs(umd).p or refs(google).p)        images: COCO train2014 folder

The refs pickle is read with a **restricted unpickler**: pickles can run arbitrary code, so
only plain containers and scalars (dict, list, tuple, str, int, float, bool, None; set and
frozenset) are allowed and any other global raises, which is all the refer files contain.
"""

from __future__ import annotations

import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visionlens.errors import InputError, display, one_line

from ..masks import segmentation_to_mask

SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
_ALLOWED = {("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "set"), ("__builtin__", "frozenset")}


class SafeUnpickler(pickle.Unpickler):
    """Allows builtin containers only; any other class or function in the stream is refused."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return set if name == "set" else frozenset
        raise InputError(f"refusing to unpickle {module}.{name}: refer pickles hold only plain containers")

    def persistent_load(self, pid):
        raise InputError("refusing a persistent-id reference: refer pickles hold only plain containers")


def safe_load_pickle(path: str | Path):
    """The plain containers pickled in ``path``; any problem is one :class:`InputError` line."""
    data = Path(path).read_bytes()
    try:
        return SafeUnpickler(io.BytesIO(data), encoding="utf-8", errors="replace").load()
    except InputError as err:
        raise InputError(f"{display(path)}: {err}") from None
    except Exception as err:  # noqa: BLE001 - a corrupt pickle can raise almost anything
        raise InputError(f"{display(path)} is not a readable refs pickle: {one_line(err)[:200]}") from None


def _load_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{display(path)}: not valid JSON ({one_line(err)[:200]})") from None
    if not isinstance(value, dict):
        raise InputError(f"{display(path)}: expected a COCO instances object, got a JSON {type(value).__name__}")
    return value


def _records(container: dict, key: str, where: Path) -> list[dict]:
    """``container[key]``: a list of dicts, else an error naming the file and the field."""
    value = container.get(key)
    if not isinstance(value, list):
        raise InputError(f"{display(where)}: no {key!r} list (expected the COCO instances layout with 'images' and 'annotations')")
    for i, record in enumerate(value):
        if not isinstance(record, dict):
            raise InputError(f"{display(where)}: {key}[{i}] is a {type(record).__name__}, not an object")
    return value


def _need(record: dict, key: str, kinds, where: str):
    """``record[key]`` if it has one of the types ``kinds``, else an error naming ``where`` and ``key``."""
    value = record.get(key)
    if value is None or isinstance(value, bool) or not isinstance(value, kinds):
        got = "missing" if value is None else f"a {type(value).__name__}"
        raise InputError(f"{display(where)} has no valid {key!r} field ({got})")
    return value


def _id(value) -> str:
    """An id for a message: as is when an integer, else quoted (a stray newline stays escaped)."""
    return str(value) if isinstance(value, int) else repr(value)


def _check_image(im: dict, where: Path) -> None:
    label = f"{display(where)}: image {_id(im.get('id'))}"
    _need(im, "id", int, label)
    _need(im, "file_name", str, label)
    for key in ("height", "width"):
        if _need(im, key, int, label) < 1:
            raise InputError(f"{label} has {key} {im[key]}; expected a positive size")


def _check_annotation(a: dict, images: dict, where: Path) -> None:
    label = f"{display(where)}: annotation {_id(a.get('id'))}"
    _need(a, "id", int, label)
    image_id = _need(a, "image_id", int, label)
    if image_id not in images:
        raise InputError(f"{label}: image_id {image_id} is not in the file's 'images'")
    seg = _need(a, "segmentation", (list, dict), label)
    im = images[image_id]
    if isinstance(seg, dict) and list(seg.get("size", [])) != [im["height"], im["width"]]:
        raise InputError(f"{label}: RLE size {seg.get('size')} differs from image {image_id}'s "
                         f"{im['height']}x{im['width']}")


def _check_ref(r, index: int, anns: dict, where: Path, inst_file: Path) -> None:
    if not isinstance(r, dict):
        raise InputError(f"{display(where)}: ref #{index} is a {type(r).__name__}, not a dict")
    label = f"{display(where)}: ref {_id(r['ref_id']) if 'ref_id' in r else f'#{index}'}"
    for key in ("ref_id", "ann_id", "image_id"):
        _need(r, key, int, label)
    _need(r, "split", str, label)
    ann = anns.get(r["ann_id"])
    if ann is None:
        raise InputError(f"{label}: ann_id {_id(r['ann_id'])} is not in {display(inst_file)}'s 'annotations'")
    if ann["image_id"] != r["image_id"]:
        raise InputError(f"{label}: image_id {r['image_id']} differs from its annotation's ({ann['image_id']}) in {display(inst_file)}")
    for j, sent in enumerate(_need(r, "sentences", list, label)):
        if not isinstance(sent, dict) or not isinstance(sent.get("sent") or sent.get("raw"), str):
            raise InputError(f"{label}: sentences[{j}] has no 'sent' or 'raw' text")
        _need(sent, "sent_id", int, f"{label}: sentences[{j}]")


@dataclass
class ReferItem:
    """One expression: ``image_id``, ``file_name``, ``sentence``, ``ann_id``, ``ref_id``,
    ``sent_id``, ``category_id``, ``split``."""

    image_id: int
    file_name: str
    sentence: str
    ann_id: int
    ref_id: int
    sent_id: int
    category_id: int
    split: str


class ReferDataset:
    """``ReferDataset(root, "refcoco", split_by=None)``; ``items(split)`` yields every sentence;
    ``mask(ann_id)`` decodes an instance; ``image_masks(image_id)`` gives all instances of an
    image (the ground-truth proposer); ``image_path(item, coco_dir)`` locates the photo."""

    def __init__(self, root: str | Path, dataset: str = "refcoco", split_by: str | None = None):
        folder = Path(root) / dataset
        split_by = split_by or SPLIT_BY.get(dataset)
        if split_by is None:
            raise InputError(f"unknown dataset {dataset!r}; choose from {', '.join(SPLIT_BY)} (or pass split_by)")
        refs_file, inst_file = folder / f"refs({split_by}).p", folder / "instances.json"
        for f in (refs_file, inst_file):
            if not f.is_file():
                raise InputError(f"missing {display(f)}: expected the refer layout ROOT/{dataset}/refs({split_by}).p and instances.json")
        self.refs = safe_load_pickle(refs_file)
        if not isinstance(self.refs, list):
            raise InputError(f"{display(refs_file)} should hold a list of refs, got {type(self.refs).__name__}")
        inst = _load_json(inst_file)
        images, annotations = _records(inst, "images", inst_file), _records(inst, "annotations", inst_file)
        for im in images:
            _check_image(im, inst_file)
        self.images = {im["id"]: im for im in images}
        for a in annotations:
            _check_annotation(a, self.images, inst_file)
        self.anns = {a["id"]: a for a in annotations}
        categories = inst.get("categories", [])
        self.categories = {c.get("id"): c.get("name") for c in categories if isinstance(c, dict)} \
            if isinstance(categories, list) else {}
        self.anns_by_image: dict[int, list[int]] = {}
        for a in annotations:
            self.anns_by_image.setdefault(a["image_id"], []).append(a["id"])
        for index, r in enumerate(self.refs):
            _check_ref(r, index, self.anns, refs_file, inst_file)

    def splits(self) -> list[str]:
        return sorted({r["split"] for r in self.refs})

    def items(self, split: str | None = None):
        for r in self.refs:
            if split is not None and r["split"] != split:
                continue
            for s in r["sentences"]:
                yield ReferItem(r["image_id"], r.get("file_name", ""), s.get("sent") or s.get("raw", ""), r["ann_id"],
                                r["ref_id"], s["sent_id"], r.get("category_id", -1), r["split"])

    def mask(self, ann_id: int) -> np.ndarray:
        a = self.anns[ann_id]
        im = self.images[a["image_id"]]
        return segmentation_to_mask(a["segmentation"], im["height"], im["width"])

    def image_masks(self, image_id: int) -> np.ndarray:
        return np.stack([self.mask(a) for a in self.anns_by_image.get(image_id, [])])

    def image_path(self, item: ReferItem, coco_dir: str | Path) -> Path:
        """COCO file name: refs store ``COCO_train2014_<id>_<ann_id>.jpg``; the image is
        ``instances.json``'s file name for the image id."""
        return Path(coco_dir) / self.images[item.image_id]["file_name"]
