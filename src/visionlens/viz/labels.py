"""What the pages say about an image beyond its maps: the true label of the bundled labelled photos
(compared with the prediction), which methods give signed maps, and a method's heading."""

from __future__ import annotations

from pathlib import Path


def signed_method(key: str) -> bool:
    """Whether method ``key`` (``METHOD``, ``METHOD@LAYER`` or ``METHOD:CLASS``) gives a signed map:
    its class keeps negative values (``relu = False``, e.g. Relevance-CAM), so its normalised map is a
    min-max of a signed map and its ``raw`` map is the one to draw on a diverging colormap."""
    from ..methods import METHODS

    name = key.split("@", 1)[0].split(":", 1)[0].strip()
    cls = METHODS.get(name)
    return cls is not None and getattr(cls, "relu", True) is False and getattr(cls, "uses_layer", True)


def method_heading(key: str, layer: str | None) -> str:
    """``gradcam @ features.18``; a key that names its own layer (``relevance-cam@features.13``) as is."""
    if "@" in key or not layer:
        return key
    return f"{key} @ {layer}"


def _bundled_labels() -> dict[Path, int]:
    """The labels of the bundled ImageNet photos already on this machine (a photo that is not
    there cannot be the one explained: nothing is fetched for a user's own photos)."""
    from ..data.samples import imagenet_label, sample_images

    return {Path(p).resolve(): imagenet_label(p) for p in sample_images("imagenet", download=False)}


def true_label(row: dict) -> dict:
    """``{"label", "wrong"}`` for a summary row whose image is one of the bundled labelled ImageNet
    photos and whose model predicts ImageNet classes; ``{}`` where the label is unknown."""
    from ..models import imagenet_classes

    label = _bundled_labels().get(Path(row["file"]).resolve())
    names = imagenet_classes()
    pred = row["predicted"]
    if label is None or not 0 <= pred < len(names) or names[pred] != row.get("predicted_name"):
        return {}
    return {"label": f"{names[label]} ({label})", "wrong": label != pred}
