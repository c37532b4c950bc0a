"""Canonizers: temporary, reversible rewrites that let module hooks see every operation.

* :class:`NoInplace` switches ``inplace=True`` modules (torchvision's ``ReLU(inplace=True)``) to
  out-of-place, so the inputs the rules need are not overwritten.
* :class:`ResidualAdd` expresses the functional residual addition of known blocks
  (``out += identity`` in torchvision/timm ResNets, ``x + self.conv(x)`` in MobileNetV2 and
  EfficientNet blocks) as an :class:`Add` module: it adds a child ``lrp_add`` and sets an
  instance-level ``forward`` that computes exactly what the original does, through that child.
  Other blocks are added with :meth:`ResidualAdd.register`.

:func:`canonized` applies canonizers and undoes them on exit, also on error: the module tree, the
instances' ``forward`` attributes and every flag are then as before.
"""

from __future__ import annotations

import types
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
from torch import nn


class Add(nn.Module):
    """``Add()(a, b) = a + b``, as a module so that a rule (the z-rule) can be attached to it."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class Canonizer:
    """Base class: ``apply(model)`` rewrites ``model`` and returns a function that undoes it."""

    def apply(self, model: nn.Module) -> Callable[[], None]:
        raise NotImplementedError


class NoInplace(Canonizer):
    """Set ``inplace=False`` on every module with ``inplace=True``; undo restores the flags."""

    def apply(self, model):
        changed = [m for m in model.modules() if getattr(m, "inplace", None) is True]
        for m in changed:
            m.inplace = False

        def undo():
            for m in changed:
                m.inplace = True

        return undo


# ----- forwards of known residual blocks, with the skip addition routed through ``self.lrp_add``


def _tv_basic_block(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return self.relu(self.lrp_add(out, identity))


def _tv_bottleneck(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(self.lrp_add(out, identity))


def _timm_basic_block(self, x):
    shortcut = x
    x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
    x = self.bn2(self.conv2(x))
    if self.se is not None:
        x = self.se(x)
    if self.drop_path is not None:
        x = self.drop_path(x)
    if self.downsample is not None:
        shortcut = self.downsample(shortcut)
    return self.act2(self.lrp_add(x, shortcut))


def _timm_bottleneck(self, x):
    shortcut = x
    x = self.act1(self.bn1(self.conv1(x)))
    x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
    x = self.bn3(self.conv3(x))
    if self.se is not None:
        x = self.se(x)
    if self.drop_path is not None:
        x = self.drop_path(x)
    if self.downsample is not None:
        shortcut = self.downsample(shortcut)
    return self.act3(self.lrp_add(x, shortcut))


def _tv_inverted_residual(self, x):  # torchvision MobileNetV2 and visionlens MobileNetV2
    skip = self.use_res_connect if hasattr(self, "use_res_connect") else self.use_skip
    return self.lrp_add(x, self.conv(x)) if skip else self.conv(x)


def _tv_mbconv(self, x):  # torchvision EfficientNet MBConv / FusedMBConv, MobileNetV3 InvertedResidual
    result = self.block(x)
    if self.use_res_connect:
        if hasattr(self, "stochastic_depth"):
            result = self.stochastic_depth(result)
        result = self.lrp_add(result, x)
    return result


def _vl_mbconv(self, inputs):  # visionlens EfficientNet-Lite0 MBConv
    x = inputs
    if self.expand:
        x = self._expand_act(self._bn0(self._expand_conv(x)))
    x = self._depthwise_act(self._bn1(self._depthwise_conv(x)))
    x = self._bn2(self._project_conv(x))
    return self.lrp_add(x, inputs) if self.use_skip else x


def _world_basic_block(self, x):  # visionlens world models (WorldResNet, WorldMetricNet trunk)
    identity = x if self.downsample is None else self.downsample(x)
    out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
    return self.relu2(self.lrp_add(out, identity))


_RESIDUAL_FORWARDS: dict[str, Callable] = {
    "torchvision.models.resnet.BasicBlock": _tv_basic_block,
    "torchvision.models.resnet.Bottleneck": _tv_bottleneck,
    "timm.models.resnet.BasicBlock": _timm_basic_block,
    "timm.models.resnet.Bottleneck": _timm_bottleneck,
    "torchvision.models.mobilenetv2.InvertedResidual": _tv_inverted_residual,
    "torchvision.models.efficientnet.MBConv": _tv_mbconv,
    "torchvision.models.efficientnet.FusedMBConv": _tv_mbconv,
    "torchvision.models.mobilenetv3.InvertedResidual": _tv_mbconv,
    "visionlens.models.mobilenet_v2.InvertedResidual": _tv_inverted_residual,
    "visionlens.models.efficientnet_lite.MBConv": _vl_mbconv,
    "visionlens.models.world_models.BasicBlock": _world_basic_block,
}


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class ResidualAdd(Canonizer):
    """Route the residual addition of known blocks through an :class:`Add` child ``lrp_add``.

    The replacement forwards are matched by exact class (qualified name), never by subclass, since
    a subclass may compute something else. Add a block with ``ResidualAdd.register(cls, forward)``,
    where ``forward(self, x)`` reproduces the block's output using ``self.lrp_add(a, b)``.
    """

    attribute = "lrp_add"

    @classmethod
    def register(cls, block: type | str, forward: Callable) -> None:
        _RESIDUAL_FORWARDS[block if isinstance(block, str) else _qualname(block)] = forward

    @staticmethod
    def supported() -> list[str]:
        return sorted(_RESIDUAL_FORWARDS)

    def apply(self, model):
        done: list[tuple[nn.Module, bool, object]] = []

        def undo():
            for module, had_forward, old in reversed(done):
                module._modules.pop(self.attribute, None)
                if had_forward:
                    module.forward = old
                else:
                    module.__dict__.pop("forward", None)

        try:
            for module in list(model.modules()):
                fn = _RESIDUAL_FORWARDS.get(_qualname(type(module)))
                if fn is None:
                    continue
                if self.attribute in module._modules or hasattr(module, self.attribute):
                    raise RuntimeError(f"{type(module).__name__} already has an attribute '{self.attribute}'")
                had = "forward" in module.__dict__
                done.append((module, had, module.__dict__.get("forward")))
                module.add_module(self.attribute, Add())
                module.forward = types.MethodType(fn, module)
        except BaseException:
            undo()
            raise
        return undo


def default_canonizers() -> list[Canonizer]:
    return [NoInplace(), ResidualAdd()]


@contextmanager
def canonized(model: nn.Module, canonizers: Sequence[Canonizer]) -> Iterator[nn.Module]:
    """Apply ``canonizers`` in order; undo them in reverse order on exit (also on error)."""
    undos: list[Callable[[], None]] = []
    try:
        for c in canonizers:
            undos.append(c.apply(model))
        yield model
    finally:
        for undo in reversed(undos):
            undo()
