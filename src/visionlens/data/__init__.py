"""Image loading with clear errors, the bundled sample photos, and labelled image collections
(ImageFolder trees, Hugging Face datasets saved on disk, (image, label) pairs)."""

from .datasets import Labelled, decode_image, hf_dataset, image_folder, match_classes, pairs
from .images import IMAGE_SUFFIXES, load_image
from .samples import sample_images

__all__ = ["IMAGE_SUFFIXES", "Labelled", "decode_image", "hf_dataset", "image_folder", "load_image", "match_classes",
           "pairs", "sample_images"]
