"""Find the layer to explain: by module, by dotted name (``features.18`` or ``features[-1]``),
or automatically (the last module whose output is a spatial ``(B, C, H, W)`` map)."""

from __future__ import annotations

import difflib
import re

import torch
from torch import nn

from ..errors import InputError, LayerError
from .hooks import preserved_model_state

_PART = re.compile(r"^([^\[\]]*)((?:\[-?\d+\])*)$")


COMPILED_PREFIX = "_orig_mod."  # the names of a ``torch.compile``d module's layers start with it


def eager_module(model) -> nn.Module:
    """``model`` if it is an eager ``torch.nn.Module``; for a ``torch.compile``d one, the module it
    compiled (same parameters: a compiled graph skips hooks added after it was built, so the
    layers are read in eager mode); else one :class:`InputError` line (a TorchScript module runs
    no Python hooks, so no method can read its layers)."""
    if type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
        return eager_module(model._orig_mod)
    if isinstance(model, torch.jit.ScriptModule):
        raise InputError(f"model is a TorchScript {type(model).__name__}, whose layers cannot be hooked; explain the "
                         "eager module it was scripted or traced from")
    return torch_module(model)


def torch_module(model) -> nn.Module:
    """``model`` if it is a ``torch.nn.Module``, else one :class:`InputError` line (naming
    ``model.module`` for a :class:`~visionlens.models.ZooModel`)."""
    if hasattr(model, "preprocess") and isinstance(getattr(model, "module", None), nn.Module):
        raise InputError(f"model is a visionlens {type(model).__name__}; give its torch module, model.module")
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def layer_name(model: nn.Module, module: nn.Module) -> str:
    """The dotted name of ``module`` inside ``model``."""
    for name, m in model.named_modules():
        if m is module:
            return name or "<model>"
    raise LayerError(f"the given {type(module).__name__} module is not part of the model; pass one of its own submodules")


def _lookup(model: nn.Module, path: str) -> nn.Module | None:
    node = model
    for part in path.split("."):
        match = _PART.match(part)
        if match is None:
            return None
        attr, indices = match.groups()
        if attr:
            child = node._modules.get(attr) if attr in node._modules else None
            if child is None and attr.lstrip("-").isdigit() and isinstance(node, (nn.Sequential, nn.ModuleList)):
                idx = int(attr)
                child = node[idx] if -len(node) <= idx < len(node) else None
            if child is None:
                return None
            node = child
        for idx in re.findall(r"-?\d+", indices):
            if not isinstance(node, (nn.Sequential, nn.ModuleList)):
                return None
            i = int(idx)
            if not -len(node) <= i < len(node):
                return None
            node = node[i]
    return node


def resolve_layer(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    """Return ``(dotted_name, module)`` for a module or a name such as ``features.18``,
    ``features[-1]`` or ``layer4.2.conv3``; unknown names raise a :class:`LayerError` with close
    matches."""
    if isinstance(layer, nn.Module):
        return layer_name(model, layer), layer
    if isinstance(layer, (list, tuple)):
        raise LayerError(f"one layer per method, got a {type(layer).__name__} of {len(layer)}: pass one module or "
                         "name (layer=model.layer4[-1]); for several layers, make one method per layer")
    if not isinstance(layer, str) or not layer:
        raise LayerError(f"layer must be a module or a dotted name, got {type(layer).__name__} {str(layer)[:60]!r}")
    module = _lookup(model, layer)
    if module is None and layer.startswith(COMPILED_PREFIX):  # a name in the compiled module, given its eager one
        module = _lookup(model, layer[len(COMPILED_PREFIX):])
    if module is None or module is model:
        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(layer, names, n=5, cutoff=0.5) or names[-5:]
        raise LayerError(
            f"unknown layer '{layer}' in {type(model).__name__}; close names: {', '.join(close)} "
            "(list all with visionlens.layer_shapes(model, x) or `visionlens layers MODEL`)"
        )
    return layer_name(model, module), module


def model_device(model: nn.Module) -> torch.device:
    """The device of a model's first parameter (or buffer); CPU for a model with neither."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def layer_shapes(model: nn.Module, x: torch.Tensor) -> list[tuple[str, tuple[int, ...] | None]]:
    """Run one forward pass of ``x`` and list ``(name, output_shape)`` of every submodule in the
    order the outputs are produced (``None`` for non-tensor outputs): the names a method's ``layer``
    takes, for a model in memory (``visionlens layers MODEL`` prints the same for a model spec).
    The model comes back as it was."""
    order: list[tuple[str, tuple[int, ...] | None]] = []
    handles = []

    def make(name):
        def hook(module, inputs, output):
            order.append((name, tuple(output.shape) if torch.is_tensor(output) else None))

        return hook

    with preserved_model_state(model), torch.no_grad():
        try:
            for name, module in model.named_modules():
                if name:
                    handles.append(module.register_forward_hook(make(name)))
            model(x.to(model_device(model)))
        finally:
            for h in handles:
                h.remove()
    return order


def find_last_spatial_layer(model: nn.Module, x: torch.Tensor) -> str:
    """Name of the last module (in execution order) whose output is ``(B, C, H, W)`` with
    ``H * W > 1``; for containers that return their last child's output this is the container
    (``features`` for MobileNetV2, ``layer4`` for ResNet)."""
    shapes = layer_shapes(model, x[:1])
    spatial = [n for n, s in shapes if s is not None and len(s) == 4]
    large = [n for n, s in shapes if s is not None and len(s) == 4 and s[2] * s[3] > 1]
    if large:
        return large[-1]
    if spatial:
        return spatial[-1]
    raise LayerError(
        f"{type(model).__name__} has no layer with a spatial (B, C, H, W) output; pass layer=... explicitly"
    )


def check_spatial(name: str, activation: torch.Tensor) -> None:
    """Raise a :class:`LayerError` unless ``activation`` is a ``(B, C, H, W)`` feature map."""
    if activation.dim() != 4:
        raise LayerError(
            f"layer '{name}' has output shape {tuple(activation.shape)}, not a spatial (B, C, H, W) map; "
            "choose a convolutional feature layer (list them with `visionlens layers MODEL` or visionlens.layer_shapes(model, x))"
        )
