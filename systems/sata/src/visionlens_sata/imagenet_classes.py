"""Class folders named by ImageNet WordNet id (``n01440764``), as in ImageNet val, -C, -A and -R:
each folder is mapped to its index among the 1000 ImageNet-1k classes (the wnid list in index
order comes from timm at run time).

A data set that holds only some of the 1000 classes (ImageNet-A and -R: 200) is scored as in the
evaluation code of Hendrycks et al.: the logits are restricted to the classes present before the
argmax, so the accuracy is that of the 200-way problem."""

from __future__ import annotations

import re

import torch

from visionlens.errors import InputError

IMAGENET_CLASSES = 1000
SUBSET_MODES = ("auto", "off")
_WNID = re.compile(r"n\d{8}")


def imagenet_wnids() -> list[str]:
    """The WordNet ids of the 1000 ImageNet-1k classes in index order (timm's packaged list)."""
    try:
        from timm.data import ImageNetInfo
    except ImportError:
        raise InputError("class folders named by WordNet id need timm's ImageNet class list; "
                         "pip install 'visionlens[timm]'") from None
    return list(ImageNetInfo("imagenet-1k").label_names())


def is_wnid(name: str) -> bool:
    return _WNID.fullmatch(name) is not None


def wnid_labels(classes: list[str], data: str) -> list[int] | None:
    """The ImageNet-1k index of each class folder when all are WordNet ids; ``None`` when none is.
    Folders that mix WordNet ids with other names, or an id that is not an ImageNet-1k class, are
    one :class:`InputError` line."""
    wnids = [c for c in classes if is_wnid(c)]
    if not wnids:
        return None
    others = [c for c in classes if not is_wnid(c)]
    if others:
        raise InputError(f"--data {data} mixes class folders named by WordNet id ({wnids[0]}) with other names "
                         f"({others[0]}); name them all by WordNet id, or all by class index or class name")
    index = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
    unknown = [c for c in classes if c not in index]
    if unknown:
        raise InputError(f"--data {data}: class folder {unknown[0]} is not the WordNet id of an ImageNet-1k class; "
                         "rename or remove it")
    return [index[c] for c in classes]


def present_classes(labels: list[int] | None, mode: str) -> tuple[int, ...] | None:
    """The classes the argmax is restricted to: under ``auto``, the ImageNet-1k classes present when
    the folders are WordNet ids and fewer than 1000 are present; ``None`` (all logits) otherwise."""
    if mode not in SUBSET_MODES:
        raise InputError(f"--subset-classes {mode!r}: choose from {', '.join(SUBSET_MODES)}")
    if mode == "off" or labels is None:
        return None
    present = tuple(sorted(set(labels)))
    return present if len(present) < IMAGENET_CLASSES else None


def restricted_argmax(logits: torch.Tensor, classes: torch.Tensor | None) -> torch.Tensor:
    """The predicted class (an index of the full head) when only ``classes`` may be predicted
    (``logits[:, classes].argmax``, mapped back); ``None``: the plain argmax."""
    if classes is None:
        return logits.argmax(-1)
    return classes[logits.index_select(-1, classes).argmax(-1)]
