"""visionlens: why a vision model decides what it decides.

>>> import visionlens
>>> model = visionlens.load_model("mobilenet_v2")
>>> exp = visionlens.GradCAM(model.module)(x)          # x: (B, 3, 224, 224) preprocessed
>>> exp = visionlens.explain(["cat.jpg"], model, "cam")  # or one call from files
"""

__version__ = "0.1.0"

from .core import Explanation  # noqa: E402
from .errors import AssetError, ImageLoadError, InputError, LayerError, LRPError, VisionlensError  # noqa: E402
from .methods import CAM, METHODS, GradCAM, RelevanceCAM  # noqa: E402
from .models import Preprocess, ZooModel, available_models, load_model  # noqa: E402
from .pipeline import explain, explain_files  # noqa: E402

__all__ = [
    "CAM",
    "METHODS",
    "AssetError",
    "Explanation",
    "GradCAM",
    "ImageLoadError",
    "InputError",
    "LayerError",
    "LRPError",
    "Preprocess",
    "RelevanceCAM",
    "VisionlensError",
    "ZooModel",
    "available_models",
    "explain",
    "explain_files",
    "load_model",
]
