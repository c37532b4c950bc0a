"""The sample photos used by the demo and the tests: 20 labelled ImageNet photos from foolbox
(label index in the file name, ``imagenet_NN_LABEL.jpg``) and five scikit-image photos."""

from __future__ import annotations

from pathlib import Path

from ..assets import ASSETS, locate
from ..errors import AssetError


def sample_images(which: str = "all", download: bool = True) -> list[Path]:
    """Paths of the sample photos: ``"imagenet"`` (foolbox, labelled), ``"skimage"`` or ``"all"``,
    fetched when missing. Raises an :class:`~visionlens.errors.AssetError` naming ``visionlens
    fetch samples`` if they cannot be. With ``download=False``: only those already on this machine."""
    prefix = {"imagenet": "foolbox/", "skimage": "skimage/", "all": ""}[which]
    names = [name for name, a in ASSETS.items() if a.group == "samples" and name.startswith(prefix)]
    if download:
        return [locate(name) for name in names]
    found = []
    for name in names:
        try:
            found.append(locate(name, download=False))
        except AssetError:
            continue
    return found


def imagenet_label(path: str | Path) -> int | None:
    """The ImageNet class index in a foolbox sample's file name, or None."""
    stem = Path(path).stem
    if stem.startswith("imagenet_"):
        return int(stem.rsplit("_", 1)[1])
    return None
