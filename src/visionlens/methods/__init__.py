"""One module per explanation method; ``METHODS`` maps CLI names to classes."""

from .base import ClassActivationMethod
from .cam import CAM
from .gradcam import GradCAM
from .relevance_cam import RelevanceCAM

METHODS = {"cam": CAM, "gradcam": GradCAM, "relevance-cam": RelevanceCAM}

__all__ = ["CAM", "ClassActivationMethod", "GradCAM", "METHODS", "RelevanceCAM"]
