"""Shared flow of the class-activation-map family: forward with a captured layer, resolve the
target, compute channel weights (the only method-specific step), weighted sum, post-process."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..core.hooks import ActivationCapture, preserved_model_state
from ..core.layers import _param_device, check_spatial, find_last_spatial_layer, resolve_layer
from ..core.result import Explanation, normalize_maps
from ..core.targets import ClassTargets, Target, resolve_targets
from ..errors import InputError


def check_input(x: torch.Tensor) -> None:
    """Raise an :class:`InputError` unless ``x`` is a finite, non-empty ``(B, C, H, W)`` float tensor."""
    if not torch.is_tensor(x):
        raise InputError(f"input must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise InputError(f"input must have shape (B, C, H, W), got {tuple(x.shape)}; add a batch dimension with x[None]")
    if x.shape[0] == 0:
        raise InputError("input batch is empty")
    if not x.dtype.is_floating_point:
        raise InputError(f"input must be a float tensor (preprocessed image), got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).flatten(1).any(dim=1).nonzero()[:, 0].tolist()
        raise InputError(f"input contains NaN or infinite values (batch positions {bad[:10]}); check the preprocessing")


class ClassActivationMethod:
    """Base class: ``Method(model, layer=None)(x, target=None) -> Explanation``.

    ``layer`` is a module, a dotted name, or ``None`` for the last spatial layer. Subclasses set
    ``name`` and ``needs_gradients`` and implement :meth:`channel_weights`.
    """

    name = "base"
    needs_gradients = False
    relu = True

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None):
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.layer = layer
        self._resolved: tuple[str, nn.Module] | None = None
        if layer is not None:
            self._resolved = resolve_layer(model, layer)

    def resolve(self, x: torch.Tensor) -> tuple[str, nn.Module]:
        """The ``(name, module)`` explained; found automatically (once) when ``layer`` is None."""
        if self._resolved is None:
            self._resolved = resolve_layer(self.model, find_last_spatial_layer(self.model, x))
        return self._resolved

    def channel_weights(
        self, activation: torch.Tensor, targets: ClassTargets, output: torch.Tensor, capture: ActivationCapture
    ) -> torch.Tensor:
        """``(B, K)`` weights of the ``K`` channels of ``activation`` (``(B, K, h, w)``)."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, target: Target = None) -> Explanation:
        check_input(x)
        x = x.to(_param_device(self.model))
        with preserved_model_state(self.model):
            name, module = self.resolve(x)
            with ActivationCapture({name: module}, grad=self.needs_gradients) as capture, torch.no_grad():
                output = self.model(x)
                activation = capture.get(name)
                check_spatial(name, activation)
                targets = resolve_targets(target, output, x.shape[0])
                weights = self.channel_weights(activation, targets, output, capture)
            activation = activation.detach()
            raw = torch.einsum("bk,bkhw->bhw", weights.detach().to(activation.dtype), activation)
        maps = normalize_maps(raw, x.shape[-2:], relu=self.relu)
        indices = None if targets.indices is None else targets.indices.detach()
        return Explanation(
            maps=maps,
            raw=raw,
            targets=indices,
            scores=targets.scores.detach(),
            logits=output.detach(),
            method=self.name,
            layer=name,
        )


def spatial_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over the two spatial dimensions of a ``(B, K, h, w)`` tensor."""
    return t.sum(dim=(2, 3)) / math.prod(t.shape[2:])
