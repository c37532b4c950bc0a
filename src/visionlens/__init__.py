"""visionlens: why a vision model decides what it decides.

>>> import visionlens
>>> model = visionlens.load_model("mobilenet_v2")
>>> exp = visionlens.GradCAM(model.module)(x)          # x: (B, 3, 224, 224) preprocessed
>>> exp = visionlens.explain(["cat.jpg"], model, "cam")  # or one call from files
"""

from ._version import __version__  # noqa: F401

from .core import Explanation  # noqa: E402
from .errors import AssetError, ImageLoadError, InputError, LayerError, LRPError, VisionlensError  # noqa: E402
from .methods import (  # noqa: E402
    CAM, DAAM, METHODS, AblationCAM, AttentionRollout, EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM,
    NAFlow, RelevanceCAM, ScoreCAM, XGradCAM,
)
from .core.similarity import SimilarityTarget  # noqa: E402
from .methods.sfam import SFAM  # noqa: E402
from .methods.similarity import PairExplanation, SimilarityExplanation, SimilarityGradCAM, SimilarityRelevanceCAM  # noqa: E402
from .models import Embedder, Preprocess, ZooModel, available_models, embedder, load_model  # noqa: E402
from .methods.base import explain_many  # noqa: E402
from .pipeline import explain, explain_files  # noqa: E402

__all__ = [
    "AblationCAM",
    "AttentionRollout",
    "EigenCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
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
    "load_model",
]
