"""The model zoo: pretrained ImageNet models that load offline, each with its preprocessing and
class names; and a wrapper that gives the same interface to any ``torch.nn.Module``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..assets import locate
from ..errors import AssetError, InputError
from .efficientnet_lite import EfficientNetLite0
from .mobilenet_v2 import MobileNetV2
from .preprocessing import Preprocess


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names, in index order."""
    return tuple(json.loads((Path(__file__).with_name("imagenet_classes.json")).read_text()))


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    build: Callable[[], nn.Module]
    weights: str
    preprocess: Preprocess
    layer: str


ZOO: dict[str, ZooEntry] = {
    "mobilenet_v2": ZooEntry(
        "mobilenet_v2", "MobileNetV2, ImageNet-1k (torchvision checkpoint)", MobileNetV2, "mobilenet_v2",
        Preprocess(), "features",
    ),
    "efficientnet_lite0": ZooEntry(
        "efficientnet_lite0", "EfficientNet-Lite0, ImageNet-1k", EfficientNetLite0, "efficientnet_lite0",
        Preprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)), "_head_act",
    ),
}


@dataclass
class ZooModel:
    """A model with what is needed to explain it: ``module`` (in eval mode), ``preprocess``
    (PIL image -> tensor), ``class_names`` (or None) and the default ``layer`` to explain."""

    name: str
    module: nn.Module
    preprocess: Preprocess
    class_names: tuple[str, ...] | None
    layer: str | None

    def class_name(self, index: int) -> str:
        if self.class_names is not None and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return f"class {index}"

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        return torch.device("cpu")


def available_models() -> list[str]:
    """Names accepted by :func:`load_model`."""
    return list(ZOO)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"`` -> CUDA when available, else CPU; an unavailable CUDA is an error."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device '{device}'; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA is not available on this machine; use --device cpu")
    return dev


def load_model(
    model: str | nn.Module,
    device: str | torch.device | None = "cpu",
    preprocess: Preprocess | None = None,
    class_names: tuple[str, ...] | list[str] | None = None,
) -> ZooModel:
    """Load a zoo model by name (weights verified by SHA-256, loaded with ``weights_only=True``),
    or wrap any ``nn.Module`` (ImageNet preprocessing unless given; not moved or changed)."""
    if isinstance(model, nn.Module):
        return ZooModel(
            type(model).__name__, model, preprocess or Preprocess(),
            tuple(class_names) if class_names is not None else None, None,
        )
    if not isinstance(model, str) or model not in ZOO:
        raise InputError(f"unknown model {model!r}; choose from: {', '.join(ZOO)}")
    entry = ZOO[model]
    path = locate(entry.weights)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an unsafe or corrupt checkpoint
        raise AssetError(f"{path}: cannot be loaded safely ({type(err).__name__}); delete it and run: visionlens fetch weights") from None
    module = entry.build()
    module.load_state_dict(state)
    module.eval().to(resolve_device(device))
    return ZooModel(entry.name, module, preprocess or entry.preprocess, imagenet_classes(), entry.layer)
