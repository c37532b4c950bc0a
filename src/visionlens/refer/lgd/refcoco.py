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

from ...errors import InputError
from ..masks import segmentation_to_mask

SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
_ALLOWED = {("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "set"), ("__builtin__", "frozenset")}


class SafeUnpickler(pickle.Unpickler):
    """Allows builtin containers only; any other class or function in the stream is refused."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return set if name == "set" else frozenset
        raise InputError(f"refusing to unpickle {module}.{name}: refer pickles hold only plain containers")


def safe_load_pickle(path: str | Path):
    data = Path(path).read_bytes()
    try:
        return SafeUnpickler(io.BytesIO(data), encoding="utf-8", errors="replace").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{path} is not a readable refs pickle: {err}") from None


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
                raise InputError(f"missing {f}: expected the refer layout ROOT/{dataset}/refs({split_by}).p and instances.json")
        self.refs = safe_load_pickle(refs_file)
        if not isinstance(self.refs, list):
            raise InputError(f"{refs_file} should hold a list of refs, got {type(self.refs).__name__}")
        inst = json.loads(inst_file.read_text())
        self.images = {im["id"]: im for im in inst["images"]}
        self.anns = {a["id"]: a for a in inst["annotations"]}
        self.categories = {c["id"]: c["name"] for c in inst.get("categories", [])}
        self.anns_by_image: dict[int, list[int]] = {}
        for a in inst["annotations"]:
            self.anns_by_image.setdefault(a["image_id"], []).append(a["id"])

    def splits(self) -> list[str]:
        return sorted({r["split"] for r in self.refs})

    def items(self, split: str | None = None):
        for r in self.refs:
            if split is not None and r["split"] != split:
                continue
            for s in r["sentences"]:
                yield ReferItem(r["image_id"], r["file_name"], s.get("sent") or s.get("raw", ""), r["ann_id"],
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
