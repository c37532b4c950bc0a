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
from ..errors import AssetError, InputError, display
from ..io import load_checkpoint
from .efficientnet_lite import EfficientNetLite0
from .mobilenet_v2 import MobileNetV2
from .preprocessing import Preprocess


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names, in index order."""
    return tuple(json.loads((Path(__file__).with_name("imagenet_classes.json")).read_text()))


WORLD_WEIGHTS = Path(__file__).with_name("world_weights")


@dataclass(frozen=True)
class ZooEntry:
    """``weights``: an offline asset name (see assets.py) or, for ``packaged`` entries, a file in
    ``models/world_weights``. ``task``: what the model outputs."""

    name: str
    description: str
    build: Callable[[], nn.Module]
    weights: str
    preprocess: Preprocess
    layer: str | None
    task: str = "imagenet"
    packaged: bool = False


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

    def class_indices(self, specs: list[str]) -> list[int]:
        """Class indices for ``specs``, each an index or one of the model's class names (case and
        ``_``/space insensitive); one :class:`InputError` line for an unknown name or index."""
        return [self._class_index(s.strip()) for s in specs]

    def _class_index(self, spec: str) -> int:
        names = list(self.class_names or [])
        if spec.lstrip("-").isdigit():
            index = int(spec)
            if names and not 0 <= index < len(names) or index < 0:
                raise InputError(f"target class {index} is out of range for a model with {len(names)} classes")
            return index
        norm = lambda n: n.lower().replace("_", " ").strip()  # noqa: E731
        found = [i for i, n in enumerate(names) if norm(n) == norm(spec)]
        if not found:
            import difflib

            close = difflib.get_close_matches(spec, names, n=4)
            hint = f"; close names: {', '.join(close)}" if close else ""
            raise InputError(f"unknown class {spec!r} for {self.name}{hint} (or give a class index)")
        return found[0]

    def class_name(self, index: int) -> str:
        if self.class_names is not None and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return f"class {index}"

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        return torch.device("cpu")


def _world_entries() -> dict[str, ZooEntry]:
    from .world_models import WorldMetricNet, WorldResNet, WorldViT

    world = Preprocess(resize=64, crop=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return {
        "world-cnn": ZooEntry("world-cnn", "WorldResNet classifier for the synthetic world (10 classes)",
                              WorldResNet, "world-cnn.pt", world, "layer3", "world-classifier", True),
        "world-vit": ZooEntry("world-vit", "WorldViT classifier for the synthetic world (10 classes)",
                              WorldViT, "world-vit.pt", world, "blocks[-1].norm1", "world-classifier", True),
        "world-dino": ZooEntry("world-dino", "self-supervised WorldViT: [class] embedding (96-d)",
                               lambda: WorldViT(num_classes=0), "world-dino.pt", world, "blocks[-1].norm1", "world-embedding", True),
        "world-metric": ZooEntry("world-metric", "metric-learning WorldMetricNet: L2-normalised 64-d embedding",
                                 WorldMetricNet, "world-metric.pt", world, "trunk.layer3", "world-embedding", True),
    }


ZOO.update(_world_entries())


def available_models(task: str | None = None) -> list[str]:
    """Names accepted by :func:`load_model` (only those of ``task`` when given: ``imagenet``,
    ``world-classifier`` or ``world-embedding``)."""
    return [name for name, entry in ZOO.items() if task is None or entry.task == task]


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


def load_state_dict_file(path: str | Path) -> dict:
    """A state dict from a checkpoint file, loaded with ``weights_only=True`` (pickled code is
    refused); ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers are unwrapped and a common
    ``module.`` (DDP) or ``model.`` prefix is stripped. NaN or infinite values are refused."""
    state = load_checkpoint(path, "state dict")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise InputError(f"{display(path)}: expected a state dict of tensors")
    for prefix in ("module.", "model."):
        if all(isinstance(k, str) and k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise InputError(f"{display(path)}: '{key}' holds NaN or infinite values; these weights cannot explain anything")
    return state


def fit_state_dict(module: nn.Module, state: dict, spec: str, path) -> None:
    """Load ``state`` into ``module`` or raise one line naming the first key that does not fit."""
    own = module.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise InputError(f"{display(path)} does not fit {spec}: '{key}' has shape {tuple(value.shape)} in the file, "
                             f"{tuple(own[key].shape)} in the model")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        first = f"missing '{missing[0]}'" if missing else f"unexpected '{unexpected[0]}'"
        raise InputError(f"{display(path)} does not fit {spec}: {len(missing)} missing and {len(unexpected)} unexpected "
                         f"keys (first: {first})")
    module.load_state_dict(state)


def _num_classes(state: dict) -> int | None:
    heads = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    return int(heads[-1].shape[0]) if heads else None


def library_architecture(spec: str, num_classes: int | None = None) -> nn.Module:
    """The architecture of ``torchvision:NAME`` or ``timm:NAME``, randomly initialised (nothing is
    downloaded); an unknown name is one line with the closest names."""
    library, _, arch = spec.partition(":")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if library == "torchvision":
        try:
            import torchvision.models as tvm
        except ImportError:
            raise InputError("torchvision is not installed; pip install 'visionlens[torchvision]'") from None
        names = tvm.list_models(module=tvm)
        build = lambda: tvm.get_model(arch, weights=None, **kwargs)  # noqa: E731
    elif library == "timm":
        try:
            import timm
        except ImportError:
            raise InputError("timm is not installed; pip install 'visionlens[timm]'") from None
        names = timm.list_models()
        build = lambda: timm.create_model(arch, pretrained=False, **kwargs)  # noqa: E731
    else:
        raise InputError(f"unknown model library '{library}'; use torchvision:NAME or timm:NAME")
    if arch not in names:
        import difflib

        close = difflib.get_close_matches(arch, names, n=4) or names[:4]
        raise InputError(f"unknown {library} model '{arch}'; close names: {', '.join(close)}")
    return build()


def load_library_model(spec: str, weights: str | Path | None, device=None) -> ZooModel:
    """``torchvision:NAME`` or ``timm:NAME`` built without downloads, with weights from a local
    state-dict file (the number of classes is read from it)."""
    if weights is None:
        raise InputError(f"{spec} needs a local weights file (--weights PATH); nothing is downloaded")
    state = load_state_dict_file(weights)
    classes = _num_classes(state)
    module = library_architecture(spec, classes)
    fit_state_dict(module, state, spec, weights)
    module.eval().to(resolve_device(device))
    return ZooModel(spec, module, Preprocess(), imagenet_classes() if classes == 1000 else None, None)


def _zoo_state(entry: ZooEntry) -> dict:
    path = WORLD_WEIGHTS / entry.weights if entry.packaged else locate(entry.weights)
    if not path.is_file():
        raise AssetError(f"{path} is missing; retrain it with: python scripts/train_world.py {entry.name}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # an unsafe or corrupt checkpoint
        raise AssetError(f"{path}: cannot be loaded safely ({type(err).__name__}); delete it and run: visionlens fetch weights") from None


def load_model(
    model: str | nn.Module,
    device: str | torch.device | None = "cpu",
    preprocess: Preprocess | None = None,
    class_names: tuple[str, ...] | list[str] | None = None,
    weights: str | Path | None = None,
) -> ZooModel:
    """Load a zoo model by name (weights verified by SHA-256, loaded with ``weights_only=True``),
    a ``torchvision:NAME`` / ``timm:NAME`` architecture with local ``weights``, or wrap any
    ``nn.Module`` (ImageNet preprocessing unless given; not moved or changed)."""
    if isinstance(model, nn.Module):
        return ZooModel(
            type(model).__name__, model, preprocess or Preprocess(),
            tuple(class_names) if class_names is not None else None, None,
        )
    if isinstance(model, str) and ":" in model:
        zoo = load_library_model(model, weights, device)
        if preprocess is not None:
            zoo.preprocess = preprocess
        if class_names is not None:
            zoo.class_names = tuple(class_names)
        return zoo
    if not isinstance(model, str) or model not in ZOO:
        raise InputError(f"unknown model {model!r}; choose from: {', '.join(ZOO)}, torchvision:NAME or timm:NAME (with weights)")
    entry = ZOO[model]
    module = entry.build()
    if weights is not None:  # the zoo architecture with the user's own (e.g. fine-tuned) weights
        fit_state_dict(module, load_state_dict_file(weights), model, weights)
    else:
        module.load_state_dict(_zoo_state(entry))
    module.eval().to(resolve_device(device))
    if entry.task == "imagenet":
        names = imagenet_classes()
    else:
        from ..data.world import CLASS_NAMES

        names = tuple(CLASS_NAMES)
    return ZooModel(entry.name, module, preprocess or entry.preprocess, names, entry.layer)
