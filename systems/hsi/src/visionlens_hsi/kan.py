"""KAN and WKAN layers on a fixed uniform cubic B-spline grid (SpectralKAN, arXiv:2407.00949 v2).

A layer maps ``m`` inputs to ``n`` outputs::

    KAN : y_j = sum_i Wa_ji SiLU(x_i) + sum_i s_ji sum_r c_jir B_r(x_i)      (efficient-kan; 10mn params)
    WKAN: y_j = sum_i Wa_ji SiLU(x_i) + sum_i Wb_ji sum_r c_ir  B_r(x_i)      (one spline per input; 2mn + 8m)

B_r are the ``grid_size + order`` cubic B-splines on ``grid_size`` uniform intervals of
``grid_range`` extended by ``order`` knots each side (12 knots, 8 functions for the defaults).
Two exact evaluations of the basis are provided: the reference Cox-de Boor recursion and a
closed-form cardinal cubic B-spline, valid because the grid is uniform and never updated.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from visionlens.errors import InputError


def uniform_knots(grid_size: int = 5, order: int = 3, grid_range=(-1.0, 1.0)) -> torch.Tensor:
    """The ``grid_size + 2*order + 1`` extended uniform knots (12 for the defaults, -2.2 .. 2.2)."""
    h = (grid_range[1] - grid_range[0]) / grid_size
    return torch.arange(-order, grid_size + order + 1, dtype=torch.float32) * h + grid_range[0]


def bspline_basis_recursive(x: torch.Tensor, knots: torch.Tensor, order: int = 3) -> torch.Tensor:
    """Cox-de Boor recursion: ``x`` of any shape -> ``(*x.shape, len(knots) - order - 1)``.

    Half-open intervals ``[t_k, t_k+1)``; zero outside ``[t_0, t_last)``. This is the reference.
    """
    t = knots.to(x)
    x = x.unsqueeze(-1)
    bases = ((x >= t[:-1]) & (x < t[1:])).to(x.dtype)
    for k in range(1, order + 1):
        left = (x - t[: -(k + 1)]) / (t[k:-1] - t[: -(k + 1)]) * bases[..., :-1]
        right = (t[k + 1:] - x) / (t[k + 1:] - t[1:-k]) * bases[..., 1:]
        bases = left + right
    return bases


def _cubic_pieces(x: torch.Tensor, start: float, step: float, n_intervals: int):
    """Knot-interval index ``j`` (``n_intervals`` where ``x`` is off the grid) and the 4 non-zero values."""
    t = (x - start) / step
    j = torch.floor(t)
    u = t - j
    u2 = u * u
    u3 = u2 * u
    w0 = (1 - u) ** 3 / 6
    w1 = (3 * u3 - 6 * u2 + 4) / 6
    w3 = u3 / 6
    w = torch.stack([w0, w1, 1 - w0 - w1 - w3, w3], dim=-1)           # the 4 pieces sum to one
    j = torch.where((j >= 0) & (j < n_intervals), j, torch.full_like(j, n_intervals)).long()
    return j, w


def cubic_bspline_basis_fast(x: torch.Tensor, start: float, step: float, n_basis: int) -> torch.Tensor:
    """Closed-form cardinal cubic B-splines on the uniform knots ``start + k*step``.

    With ``t = (x - start)/step``, ``j = floor(t)`` and ``u = t - j``, only ``B_{j-3..j}`` are non-zero
    and equal ``(1-u)^3/6, (3u^3-6u^2+4)/6, (-3u^3+3u^2+3u+1)/6, u^3/6``. They are scattered into
    place; indices outside ``0..n_basis-1`` are dropped, which reproduces the recursion's partial
    basis near the ends of the extended grid. Exact (same piecewise polynomials), several times cheaper.
    """
    n_intervals = n_basis + 3
    j, w = _cubic_pieces(x, start, step, n_intervals)
    idx = j.unsqueeze(-1) + torch.arange(4, device=x.device)                # padded slot of B_{j-3+k} is j+k
    padded = torch.zeros(*x.shape, n_intervals + 4, dtype=x.dtype, device=x.device)
    return padded.scatter_add(-1, idx, w)[..., 3:3 + n_basis]


def cubic_spline_fast(x: torch.Tensor, coefficients: torch.Tensor, start: float, step: float) -> torch.Tensor:
    """``sum_r c[i, r] B_r(x[..., i])`` for ``x (..., m)``, ``c (m, n_basis)``, gathering only 4 coefficients."""
    n_basis = coefficients.shape[-1]
    j, w = _cubic_pieces(x, start, step, n_basis + 3)
    padded = F.pad(coefficients, (3, 4))                                     # slot r+3 holds c_r; the rest are 0
    idx = j.unsqueeze(-1) + torch.arange(4, device=x.device)
    picked = padded.expand(*x.shape[:-1], *padded.shape).gather(-1, idx)
    return (w * picked).sum(-1)


class _SplineLayer(nn.Module):
    """Shared grid, basis choice and init helpers for KAN and WKAN layers."""

    def __init__(self, in_features: int, out_features: int, grid_size: int = 5, order: int = 3,
                 grid_range=(-1.0, 1.0), basis: str = "fast", scale_noise: float = 0.1):
        super().__init__()
        if basis not in ("fast", "recursive"):
            raise InputError(f"unknown B-spline basis {basis!r}: use 'fast' or 'recursive'")
        if basis == "fast" and order != 3:
            raise InputError(f"the fast basis is cubic only (order 3, got {order}): use basis='recursive'")
        self.in_features, self.out_features = in_features, out_features
        self.grid_size, self.order, self.basis_kind = grid_size, order, basis
        self.n_basis = grid_size + order
        self.register_buffer("knots", uniform_knots(grid_size, order, grid_range))
        self._start, self._step = float(self.knots[0]), (grid_range[1] - grid_range[0]) / grid_size
        self.scale_noise = scale_noise
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features))

    def basis(self, x: torch.Tensor) -> torch.Tensor:
        if self.basis_kind == "fast":
            return cubic_bspline_basis_fast(x, self._start, self._step, self.n_basis)
        return bspline_basis_recursive(x, self.knots, self.order)

    def _noise_coefficients(self, outputs: int) -> torch.Tensor:
        """Least-squares spline fit to tiny uniform noise at the grid points: ``(outputs, m, n_basis)``."""
        points = self.knots[self.order:-self.order]                       # grid_size + 1 points
        noise = (torch.rand(points.numel(), self.in_features, outputs) - 0.5) * self.scale_noise / self.grid_size
        a = bspline_basis_recursive(points, self.knots, self.order)       # (P, n_basis)
        a = a.unsqueeze(0).expand(self.in_features, -1, -1)                # (m, P, n_basis)
        sol = torch.linalg.lstsq(a, noise.transpose(0, 1)).solution        # (m, n_basis, outputs)
        return sol.permute(2, 0, 1).contiguous()

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise InputError(f"{type(self).__name__} expects (batch, {self.in_features}), got {tuple(x.shape)}")


class KANLinear(_SplineLayer):
    """efficient-kan layer: a spline per edge ``(i, j)`` with a per-edge scaler (10mn parameters)."""

    def __init__(self, in_features: int, out_features: int, **kwargs):
        super().__init__(in_features, out_features, **kwargs)
        self.spline_weight = nn.Parameter(torch.empty(out_features, in_features, self.n_basis))
        self.spline_scaler = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.base_weight, a=math.sqrt(5))
        with torch.no_grad():
            self.spline_weight.copy_(self._noise_coefficients(self.out_features))
        nn.init.kaiming_uniform_(self.spline_scaler, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        base = F.linear(F.silu(x), self.base_weight)
        weight = (self.spline_weight * self.spline_scaler.unsqueeze(-1)).reshape(self.out_features, -1)
        return base + F.linear(self.basis(x).reshape(x.shape[0], -1), weight)


class WKANLinear(_SplineLayer):
    """Weighted-activation-distribution KAN layer: one spline per input, distributed by ``Wb`` (2mn + 8m)."""

    def __init__(self, in_features: int, out_features: int, **kwargs):
        super().__init__(in_features, out_features, **kwargs)
        self.spline_weight = nn.Parameter(torch.empty(in_features, self.n_basis))
        self.spline_scaler = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.base_weight, a=math.sqrt(5))
        with torch.no_grad():
            self.spline_weight.copy_(self._noise_coefficients(1)[0])
        nn.init.kaiming_uniform_(self.spline_scaler, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        if self.basis_kind == "fast":                                       # (B, m): one function per input
            phi = cubic_spline_fast(x, self.spline_weight, self._start, self._step)
        else:
            phi = (self.basis(x) * self.spline_weight).sum(-1)
        return F.linear(F.silu(x), self.base_weight) + F.linear(phi, self.spline_scaler)


LAYERS = {"kan": KANLinear, "wkan": WKANLinear}


class KANStack(nn.Sequential):
    """Layers of widths ``[w0, w1, ...]`` (no activation between them: the splines are the nonlinearity)."""

    def __init__(self, widths, layer: str = "wkan", basis: str = "fast"):
        if layer not in LAYERS:
            raise InputError(f"unknown KAN layer {layer!r}: use one of {sorted(LAYERS)}")
        super().__init__(*[LAYERS[layer](a, b, basis=basis) for a, b in zip(widths[:-1], widths[1:])])
        self.widths, self.layer_kind = list(widths), layer


def layer_parameter_count(m: int, n: int, layer: str, n_basis: int = 8) -> int:
    """The spec's formulas: WKAN ``2mn + n_basis*m``; KAN ``(2 + n_basis) mn``."""
    return 2 * m * n + n_basis * m if layer == "wkan" else (2 + n_basis) * m * n


def layer_flops(m: int, n: int, layer: str, n_basis: int = 8) -> dict:
    """Analytic cost of one layer for one input row.

    ``flops``: every multiply and add counted (SiLU 4/input, closed-form basis 20/input, linear maps
    2 per multiply-add). ``base_macs``: multiply-adds of the ``Wa`` map only, which is what thop
    reports for the reference code (the spline path uses no nn.Linear); it reproduces the paper's
    FLOPs column.
    """
    per_input = 4 + 20
    if layer == "wkan":
        flops = m * per_input + 2 * m * n + 2 * n_basis * m + 2 * m * n
    else:
        flops = m * per_input + 2 * m * n + 2 * n_basis * m * n
    return {"flops": flops, "base_macs": m * n}
