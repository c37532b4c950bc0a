"""visionlens: why a vision model decides what it decides.

>>> import visionlens
>>> model = visionlens.load_model("mobilenet_v2")
>>> exp = visionlens.GradCAM(model.module)(x)          # x: (B, 3, 224, 224) preprocessed
>>> exp = visionlens.explain(["cat.jpg"], model, "cam")  # or one call from files
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports
from ._version import __version__  # noqa: F401
from .errors import AssetError, ImageLoadError, InputError, LayerError, LRPError, VisionlensError  # noqa: F401

# The public API, imported on first use: `import visionlens` (and `visionlens --help`) stays fast,
# torch is imported only when a name that needs it is used.
_EXPORTS = {
    "Explanation": "core",
    "SimilarityTarget": "core.similarity",
    **dict.fromkeys(["BoxTarget", "SegmentationTarget", "raw_output"], "core.targets"),
    **dict.fromkeys(["CAM", "DAAM", "METHODS", "AblationCAM", "AttentionRollout", "AttnLRP", "CheferRollout", "EigenCAM",
                     "GradCAM", "GradCAMPlusPlus", "HiResCAM", "LayerCAM", "LeGrad", "NAFlow", "RelevanceCAM", "ScoreCAM",
                     "XGradCAM"],
                    "methods"),
    "SFAM": "methods.sfam",
    **dict.fromkeys(["PairExplanation", "SimilarityExplanation", "SimilarityGradCAM", "SimilarityRelevanceCAM"],
                    "methods.similarity"),
    **dict.fromkeys(["Embedder", "Preprocess", "ZooModel", "available_models", "embedder", "load_model"], "models"),
    "explain_many": "methods.base",
    "layer_shapes": "core.layers",
    "explain": "pipeline",
    "explain_files": "pipeline",
}


# the public sub-packages, also reached as attributes after `import visionlens`
_SUBMODULES = ("concepts", "core", "data", "evaluation", "lrp", "methods", "metrics", "models", "viz")

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _SUBMODULES)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .core import Explanation
    from .core.similarity import SimilarityTarget
    from .core.targets import BoxTarget, SegmentationTarget, raw_output
    from .methods import (CAM, DAAM, METHODS, AblationCAM, AttentionRollout, AttnLRP, CheferRollout, EigenCAM, GradCAM,
                          GradCAMPlusPlus, HiResCAM, LayerCAM, LeGrad, NAFlow, RelevanceCAM, ScoreCAM, XGradCAM)
    from .core.layers import layer_shapes
    from .methods.base import explain_many
    from .methods.sfam import SFAM
    from .methods.similarity import PairExplanation, SimilarityExplanation, SimilarityGradCAM, SimilarityRelevanceCAM
    from .models import Embedder, Preprocess, ZooModel, available_models, embedder, load_model
    from .pipeline import explain, explain_files

__all__ = [
    "AblationCAM",
    "AttentionRollout",
    "AttnLRP",
    "BoxTarget",
    "CheferRollout",
    "EigenCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "LeGrad",
    "ScoreCAM",
    "XGradCAM",
    "CAM",
    "DAAM",
    "METHODS",
    "NAFlow",
    "AssetError",
    "Embedder",
    "Explanation",
    "GradCAM",
    "ImageLoadError",
    "InputError",
    "LayerError",
    "LRPError",
    "Preprocess",
    "PairExplanation",
    "RelevanceCAM",
    "SFAM",
    "SegmentationTarget",
    "SimilarityExplanation",
    "SimilarityGradCAM",
    "SimilarityRelevanceCAM",
    "SimilarityTarget",
    "VisionlensError",
    "ZooModel",
    "available_models",
    "embedder",
    "explain",
    "explain_files",
    "explain_many",
    "layer_shapes",
    "load_model",
    "raw_output",
]
