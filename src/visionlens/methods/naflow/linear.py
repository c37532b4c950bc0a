"""A cheaper Jacobian for piecewise-linear blocks: the block run with its biases removed and each
activation replaced by its slope at the operating point (a fixed 0/1 mask for ReLU/ReLU6).

For such a block ``J v`` is then one plain forward pass (no double backward) and ``J^T u`` one
backward pass through a graph built once. :func:`fixed_slope_jacobian` checks the result against
the autograd Jacobian on a random direction and returns ``None`` when the block is not of this kind
(e.g. a sigmoid gate, or a forward that multiplies two branches), so the caller falls back to
:func:`~visionlens.methods.naflow.inverse.linearized`."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

Map = Callable[[torch.Tensor], torch.Tensor]

SLOPED = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.LeakyReLU)
PIECEWISE_LINEAR = SLOPED + (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.Identity, nn.Dropout, nn.Dropout2d, nn.ZeroPad2d,
                             nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten)


def _leaves(modules: list[nn.Module]) -> list[nn.Module]:
    return [m for mod in modules for m in mod.modules() if next(m.children(), None) is None]


def _slope(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The derivative of an elementwise piecewise-linear activation at ``x`` (as autograd's)."""
    if isinstance(module, nn.LeakyReLU):
        return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, module.negative_slope))
    if isinstance(module, nn.Hardtanh):  # ReLU6 included
        return ((x > module.min_val) & (x < module.max_val)).to(x.dtype)
    return (x > 0).to(x.dtype)


def _state(module: nn.Module, dtype: torch.dtype, linear: bool) -> dict[str, torch.Tensor]:
    """Parameters and buffers cast to ``dtype``; ``linear``: biases and BatchNorm means set to zero."""
    state = {k: v.detach().to(dtype) if v.is_floating_point() else v
             for k, v in list(module.named_parameters()) + list(module.named_buffers())}
    if linear:
        for name, sub in module.named_modules():
            prefix = f"{name}." if name else ""
            zeroed = ("bias", "running_mean") if isinstance(sub, nn.BatchNorm2d) else ("bias",)
            for key in (prefix + z for z in zeroed):
                if key in state:
                    state[key] = torch.zeros_like(state[key])
    return state


@contextmanager
def _hooked(leaves: list[nn.Module], hook):
    """Forward hooks on the sloped activations, with in-place activations switched off."""
    sloped = [m for m in leaves if isinstance(m, SLOPED)]
    inplace = [m for m in sloped if getattr(m, "inplace", False)]
    handles = [m.register_forward_hook(hook) for m in sloped]
    for m in inplace:
        m.inplace = False
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for m in inplace:
            m.inplace = True


def fixed_slope_jacobian(modules: list[nn.Module], x0: torch.Tensor, reference: Map) -> tuple[Map, Map] | None:
    """``(J v, J^T u)`` at ``x0`` of ``modules`` applied in order, as a fixed-slope linear block, or
    ``None`` when a leaf is not piecewise linear or ``J v`` differs from ``reference`` (the
    autograd Jacobian's ``J v``) on a random direction."""
    leaves = _leaves(modules)
    if not all(isinstance(m, PIECEWISE_LINEAR) for m in leaves):
        return None
    dtype = x0.dtype
    slopes: dict[int, list[torch.Tensor]] = {}

    def record(mod, inputs, output):
        slopes.setdefault(id(mod), []).append(_slope(mod, inputs[0]))

    full = [_state(m, dtype, linear=False) for m in modules]
    linear = [_state(m, dtype, linear=True) for m in modules]

    def run(states, t):
        for m, s in zip(modules, states):
            t = torch.func.functional_call(m, s, (t,))
        return t

    with torch.no_grad(), _hooked(leaves, record):
        run(full, x0)
    calls: dict[int, int] = {}

    def apply_slope(mod, inputs, output):
        k = calls.get(id(mod), 0)
        calls[id(mod)] = k + 1
        return inputs[0] * slopes[id(mod)][k]

    def forward(t):
        calls.clear()
        with _hooked(leaves, apply_slope):
            return run(linear, t)

    with torch.no_grad():
        generator = torch.Generator(device=x0.device).manual_seed(0)  # leaves the caller's random state alone
        probe = torch.randn(x0.shape, generator=generator, dtype=dtype, device=x0.device)
        got, want = forward(probe), reference(probe)
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    if got.shape != want.shape or float((got - want).norm()) > tol * max(float(want.norm()), 1e-30):
        return None
    z = torch.zeros_like(x0, requires_grad=True)
    with torch.enable_grad():
        out = forward(z)
    if not out.requires_grad:  # the output does not depend on the input: autograd's operator handles it
        return None

    def mv(v):
        with torch.no_grad():
            return forward(v)

    def rmv(u):
        g, = torch.autograd.grad(out, z, u, retain_graph=True)
        return g

    return mv, rmv
