"""Image loading with clear errors, and the bundled sample photos."""

from .images import IMAGE_SUFFIXES, load_image
from .samples import sample_images

__all__ = ["IMAGE_SUFFIXES", "load_image", "sample_images"]
