"""One module per explanation method; ``METHODS`` maps CLI names to classes."""

from .base import ClassActivationMethod
from .cam import CAM
from .gradcam import GradCAM

METHODS = {"cam": CAM, "gradcam": GradCAM}

__all__ = ["CAM", "ClassActivationMethod", "GradCAM", "METHODS"]
