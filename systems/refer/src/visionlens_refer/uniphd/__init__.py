"""UniPHD (Miao et al., NeurIPS 2024): referring human pose and mask estimation from a text, point or
scribble prompt, with a pose-centric hierarchical decoder; RefHuman-format data, a synthetic
stick-figure generator and COCO-exact metrics. Heavy modules load lazily."""

from .config import UniPHDConfig

__all__ = ["UniPHDConfig", "load_uniphd", "UniPHD", "synthetic_refhuman", "load_refhuman", "coco_ap"]


def __getattr__(name):
    if name == "load_uniphd":
        from .inference import load_uniphd
        return load_uniphd
    if name == "UniPHD":
        from .model import UniPHD
        return UniPHD
    if name in ("synthetic_refhuman", "load_refhuman"):
        from . import data
        return getattr(data, name)
    if name == "coco_ap":
        from .metrics import coco_ap
        return coco_ap
    raise AttributeError(name)
