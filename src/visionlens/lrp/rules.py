"""LRP rules: how the relevance ``R`` at a module's output is handed down to its inputs.

Every rule has one method, :meth:`Rule.relevance`, called during the backward pass with the module,
the inputs it was called with in the forward pass and the relevance arriving at its output; it
returns one relevance tensor per input. Rules never change the module: modified weights (``w+``,
``w-``) are substituted for the duration of one call of ``module.forward`` and put back at once, so
padding and other details of the module's own forward (e.g. TensorFlow "SAME" padding) are kept.

Notation: ``x+ = max(x, 0)``, ``x- = min(x, 0)``, the same for weights; ``g(S)`` is the gradient of
the modified forward pass applied to ``S`` (a transposed convolution for a conv).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from ..errors import LRPError

EPS = 1e-9


def safe_divide(numerator: torch.Tensor, denominator: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``numerator / denominator`` with the denominator pushed ``eps`` away from zero (keeping its
    sign); exactly zero where the denominator is zero (as the reference's ``safe_divide``)."""
    sign = torch.where(denominator >= 0, 1.0, -1.0).to(denominator.dtype)
    quotient = numerator / (denominator + eps * sign)
    return torch.where(denominator == 0, torch.zeros_like(quotient), quotient)


@contextmanager
def substituted(module: nn.Module, params: dict[str, torch.Tensor | None]) -> Iterator[nn.Module]:
    """Temporarily replace parameters of ``module`` (the same ``Parameter`` objects are put back)."""
    saved: dict[str, nn.Parameter | None] = {}
    try:
        for name, value in params.items():
            saved[name] = module._parameters[name]
            module._parameters[name] = value
        yield module
    finally:
        for name, value in saved.items():
            module._parameters[name] = value


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_(True)


class Rule:
    """Base class. ``relevance(module, inputs, relevance_out) -> one tensor (or None) per input``."""

    name = "rule"

    def relevance(self, module: nn.Module, inputs: Sequence[torch.Tensor], relevance: torch.Tensor) -> tuple:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Pass(Rule):
    """Identity: ``R_in = R_out`` (reshaped to the input's shape). For BatchNorm, elementwise
    activations (ReLU, ReLU6, ...), dropout, ``Identity`` and ``Flatten``, as in the reference."""

    name = "pass"

    def relevance(self, module, inputs, relevance):
        x = inputs[0]
        if x.numel() != relevance.numel():
            raise LRPError(
                f"the pass-through rule needs a module whose output has as many elements as its input; "
                f"{type(module).__name__} maps {tuple(x.shape)} to {tuple(relevance.shape)}; register another rule for it"
            )
        return (relevance.reshape(x.shape),) + (None,) * (len(inputs) - 1)


class Gating(Pass):
    """Elementwise gating ``y = x * g(x)`` (squeeze-and-excitation): the gate ``g`` is treated as
    a constant per-channel weight, so the z-rule gives ``R_x = x g R / (x g) = R``: all relevance
    flows to the gated activation branch (input ``to``), none to the gate branch. Applied to the
    whole gating module, whose internals (pool, 1x1 convs, sigmoid) get no relevance."""

    name = "gating"

    def __init__(self, to: int = 0):
        self.to = to

    def relevance(self, module, inputs, relevance):
        out: list = [None] * len(inputs)
        out[self.to] = super().relevance(module, [inputs[self.to]], relevance)[0]
        return tuple(out)


class ZRule(Rule):
    """Proportional z-rule through the module's own forward ``Z = f(x_1, ..., x_n)``:
    ``R_i = x_i * g_i(R / Z)``. Max-pooling: winner-take-all; average pooling: proportional to the
    inputs; residual ``Add``: ``R_i = x_i / (x_1 + x_2) * R``. With ``positive=True`` the inputs
    are clamped to ``x+`` first (the reference's rule for adaptive average pooling)."""

    name = "z"

    def __init__(self, positive: bool = False, eps: float = EPS):
        self.positive = positive
        self.eps = eps

    def relevance(self, module, inputs, relevance):
        xs = [_leaf(x.clamp(min=0) if self.positive else x) for x in inputs]
        with torch.enable_grad():
            z = module.forward(*xs)
        s = safe_divide(relevance, z.detach(), self.eps)
        grads = torch.autograd.grad(z, xs, s, allow_unused=True)
        return tuple(None if g is None else x.detach() * g for x, g in zip(xs, grads))


class ZPlus(Rule):
    """z+ = alpha1-beta0 rule for convolutions and linear layers:
    ``Z = f(x+; w+) + f(x-; w-)``, ``R_in = x+ g_+(R/Z) + x- g_-(R/Z)``.

    ``bias`` says how the bias enters ``Z``: ``"twice"`` (in both terms: the reference's
    ``Conv2d``), ``"none"`` (the reference's ``Linear``), ``"positive"`` (``b+`` once, as Zennit).
    Without a bias the total relevance is conserved exactly (up to the stabiliser).
    """

    name = "z+"

    def __init__(self, bias: str = "twice", eps: float = EPS):
        if bias not in ("twice", "none", "positive"):
            raise ValueError(f"bias must be 'twice', 'none' or 'positive', got {bias!r}")
        self.bias = bias
        self.eps = eps

    def _biases(self, module: nn.Module):
        b = module._parameters.get("bias")
        if b is None or self.bias == "none":
            return None, None
        b = b.detach()
        if self.bias == "twice":
            return b, b
        return b.clamp(min=0), None

    def relevance(self, module, inputs, relevance):
        x = inputs[0]
        weight = module.weight.detach()
        b_pos, b_neg = self._biases(module)
        terms = [(x.clamp(min=0), weight.clamp(min=0), b_pos)]
        if bool((x < 0).any()):
            terms.append((x.clamp(max=0), weight.clamp(max=0), b_neg))
        xs, zs = [], []
        with torch.enable_grad():
            for xi, wi, bi in terms:
                xi = _leaf(xi)
                params = {"weight": wi}
                if "bias" in module._parameters:
                    params["bias"] = bi
                with substituted(module, params):
                    zs.append(module.forward(xi))
                xs.append(xi)
        z = sum(t.detach() for t in zs)
        if len(terms) == 1 and b_neg is not None:  # bias counted twice even when x- is all zero
            z = z + b_neg.reshape((1, -1) + (1,) * (z.dim() - 2))
        s = safe_divide(relevance, z, self.eps)
        grads = torch.autograd.grad(zs, xs, [s] * len(zs))
        r = sum(xi.detach() * g for xi, g in zip(xs, grads))
        return (r,) + (None,) * (len(inputs) - 1)


class ZBox(Rule):
    """z^B (bounded-input) rule for the first layer: with bounds ``L <= x <= H``,
    ``Z = f(x; w) - f(L; w+) - f(H; w-)`` (no bias) and
    ``R_in = x g(R/Z) - L g_+(R/Z) - H g_-(R/Z)``.

    ``low``/``high`` default to the per-image minimum and maximum of the input over all channels
    and pixels (the reference); give numbers or broadcastable tensors to fix them.
    """

    name = "z^B"

    def __init__(self, low: float | torch.Tensor | None = None, high: float | torch.Tensor | None = None, eps: float = EPS):
        self.low = low
        self.high = high
        self.eps = eps

    def _bound(self, value, x: torch.Tensor, reduce) -> torch.Tensor:
        if value is None:
            return reduce(x.flatten(1), dim=1).values.reshape((-1,) + (1,) * (x.dim() - 1)).expand_as(x)
        return torch.as_tensor(value, dtype=x.dtype, device=x.device).expand_as(x)

    def relevance(self, module, inputs, relevance):
        x = inputs[0]
        weight = module.weight.detach()
        low, high = self._bound(self.low, x, torch.min), self._bound(self.high, x, torch.max)
        terms = [(x, weight), (low, weight.clamp(min=0)), (high, weight.clamp(max=0))]
        xs, zs = [], []
        with torch.enable_grad():
            for xi, wi in terms:
                xi = _leaf(xi.contiguous())
                params = {"weight": wi}
                if "bias" in module._parameters:
                    params["bias"] = None
                with substituted(module, params):
                    zs.append(module.forward(xi))
                xs.append(xi)
        z = zs[0].detach() - zs[1].detach() - zs[2].detach()
        s = safe_divide(relevance, z, self.eps)
        g = torch.autograd.grad(zs, xs, [s, s, s])
        r = xs[0].detach() * g[0] - xs[1].detach() * g[1] - xs[2].detach() * g[2]
        return (r,) + (None,) * (len(inputs) - 1)
