"""The sample photos used by the demo and the tests: 20 labelled ImageNet photos from foolbox
(label index in the file name, ``imagenet_NN_LABEL.jpg``) and five scikit-image photos."""

from __future__ import annotations

from pathlib import Path

from ..assets import ASSETS, locate


def sample_images(which: str = "all") -> list[Path]:
    """Paths of the sample photos: ``"imagenet"`` (foolbox, labelled), ``"skimage"`` or ``"all"``.
    Raises an :class:`~visionlens.errors.AssetError` naming ``visionlens fetch samples`` if absent."""
    prefix = {"imagenet": "foolbox/", "skimage": "skimage/", "all": ""}[which]
    return [locate(name) for name, a in ASSETS.items() if a.group == "samples" and name.startswith(prefix)]


def imagenet_label(path: str | Path) -> int | None:
    """The ImageNet class index in a foolbox sample's file name, or None."""
    stem = Path(path).stem
    if stem.startswith("imagenet_"):
        return int(stem.rsplit("_", 1)[1])
    return None
