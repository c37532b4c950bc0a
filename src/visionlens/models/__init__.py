"""Pretrained models that ship offline, per-model preprocessing, and wrappers for any module."""

from .efficientnet_lite import EfficientNetLite0
from .embedder import Embedder, embedder, embedding_model
from .mobilenet_v2 import MobileNetV2
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from .zoo import ZOO, ZooModel, available_models, imagenet_classes, load_model, resolve_device

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ZOO",
    "EfficientNetLite0",
    "Embedder",
    "MobileNetV2",
    "Preprocess",
    "ZooModel",
    "available_models",
    "embedder",
    "embedding_model",
    "imagenet_classes",
    "load_model",
    "resolve_device",
]
