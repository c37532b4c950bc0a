"""Per-module inverses for NAFlow's Neuron-Abandoning Back-Propagation, and a matrix-free,
batched LSMR solver in torch.

Every inverse maps a back-propagated feature map ``B`` at a module's output to one at its input,
using what the forward pass stored (the input ``X``):

* elementwise activations (ReLU, ReLU6, ...), Dropout, Identity: identity;
* ``MaxPool2d``: unpool, ``B``'s values placed at the forward argmax positions (recomputed on
  ``X`` with ``return_indices=True``), zeros elsewhere;
* ``BatchNorm2d`` (running statistics): the exact affine inverse
  ``x = (y - beta) / gamma * sqrt(var + eps) + mean``;
* ``Conv2d`` (zero padding): least squares ``argmin_v ||conv(v) - (B - b)||`` by LSMR with
  ``conv2d`` as the operator and ``conv_transpose2d`` as its adjoint (never a dense Jacobian);
* anything else (residual blocks, inverted residuals, TF-"SAME" convs, merged chains): a
  composite ``f``, linearised at the stored input (:func:`linearized`: ``J^T u`` and ``J v``
  from one autograd graph); least squares ``argmin_v ||J v - (B - o)||`` with the offset
  ``o = f(X) - J X`` (the affine map at the operating point, exact for piecewise-linear ``f``)
  or, for parity with ``ly9802/NAFlow``, ``o = f(0)``.

The least-squares inverses take ``keep``, the output units whose equations count: NAFlow passes
the mask of the ReLU after the layer (:func:`inactive_units`), so the inverse is that of
ReLU-after-conv, whose Jacobian has zero rows at inactive units (they impose nothing). Each
returns a :class:`SolveReport` (iterations, residual, stop reason per sample).

The solver (``lsmr``) follows Fong & Saunders (SIAM J. Sci. Comput. 2011), as SciPy's
``scipy.sparse.linalg.lsmr`` with ``damp = 0``, but every scalar is a per-sample ``(B,)`` tensor,
so a batch is solved at once and each sample stops at its own convergence test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import LayerError
from .linear import fixed_slope_jacobian

ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardtanh, nn.Dropout,
               nn.Dropout2d, nn.Identity, nn.PReLU, nn.Mish)
# activations whose derivative is 0 or 1: the layer before them is inverted with their mask folded in
ZERO_MASK = (nn.ReLU, nn.ReLU6, nn.Hardtanh)


@dataclass
class SolverOptions:
    """Least-squares settings: ``atol``/``btol`` (LSMR stopping tolerances, 1e-8 as the reference),
    ``max_iter`` (iteration cap; ``None``: ``min(m, n)`` as SciPy), ``float64`` (solve in double),
    ``mode``: ``"lsmr"`` (full least squares, default), ``"truncated_square"`` (the reference's
    square truncation: keep the first ``n`` of ``m > n`` equations), ``"released"`` (the released
    code's actual behaviour: every linear/composite inverse falls back to the forward input),
    ``offset``: ``"operating_point"`` (default) or ``"zero"`` (``f(0)``, the reference's
    convention for composites); ``damp``: Tikhonov damping relative to each operator's largest
    singular value (``0``: the plain least-squares inverse; see :meth:`LinearOperator.solve`)."""

    atol: float = 1e-8
    btol: float = 1e-8
    max_iter: int | None = None
    float64: bool = False
    mode: str = "lsmr"
    offset: str = "operating_point"
    damp: float = 0.0

    def __post_init__(self):
        if self.mode not in ("lsmr", "truncated_square", "released"):
            raise LayerError(f"solver mode must be 'lsmr', 'truncated_square' or 'released', got {self.mode!r}")
        if self.offset not in ("operating_point", "zero"):
            raise LayerError(f"offset must be 'operating_point' or 'zero', got {self.offset!r}")


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(1)


def _norm(a: torch.Tensor) -> torch.Tensor:
    return a.flatten(1).norm(dim=1)


def _bc(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return s.view(-1, *([1] * (like.dim() - 1)))


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(b != 0, a / torch.where(b != 0, b, torch.ones_like(b)), torch.zeros_like(a))


def _sym_ortho(a: torch.Tensor, b: torch.Tensor):
    r = torch.hypot(a, b)
    zero = r == 0
    c = torch.where(zero, torch.ones_like(r), _div(a, r))
    s = torch.where(zero, torch.zeros_like(r), _div(b, r))
    return c, s, r


def lsmr(matvec: Callable[[torch.Tensor], torch.Tensor], rmatvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor,
         x_shape: tuple[int, ...], atol: float = 1e-8, btol: float = 1e-8, conlim: float = 1e8,
         max_iter: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``min ||A x - b||`` per sample for a batched linear operator (``matvec``: ``(B, *x_shape)``
    to ``b``'s shape, ``rmatvec`` its adjoint). Returns ``(x, iterations)``; ``x`` is the
    minimum-norm least-squares solution (started from zero). :func:`lsmr_solve` also reports
    residuals and stop reasons."""
    result = lsmr_solve(matvec, rmatvec, b, x_shape, atol, btol, conlim, max_iter)
    return result.x, result.iterations


@dataclass
class LsmrResult:
    """``x`` and, per sample, ``iterations``, the residual norm ``normr = ||b - A x||``,
    ``normar = ||A^T r||``, the estimate ``normA`` of ``||A||_F``, ``normb`` and the ``stop`` code
    (see :data:`STOP_REASONS`)."""

    x: torch.Tensor
    iterations: torch.Tensor
    normr: torch.Tensor
    normar: torch.Tensor
    normA: torch.Tensor
    normb: torch.Tensor
    stop: torch.Tensor


# LSMR's stop codes (as SciPy's istop, 7 = iteration cap reached)
STOP_REASONS = {0: "zero_target", 1: "solved", 2: "least_squares", 3: "ill_conditioned", 7: "max_iter"}


def lsmr_solve(matvec: Callable[[torch.Tensor], torch.Tensor], rmatvec: Callable[[torch.Tensor], torch.Tensor],
               b: torch.Tensor, x_shape: tuple[int, ...], atol: float = 1e-8, btol: float = 1e-8, conlim: float = 1e8,
               max_iter: int | None = None, damp: float | torch.Tensor = 0.0) -> LsmrResult:
    """:func:`lsmr` with its diagnostics (:class:`LsmrResult`); ``damp`` (a scalar or one per sample)
    solves the damped problem ``min ||A x - b||^2 + damp^2 ||x||^2`` (SciPy's ``damp``)."""
    batch = b.shape[0]
    n, m = int(torch.tensor(x_shape).prod()), b[0].numel()
    max_iter = min(m, n) if max_iter is None else int(max_iter)
    u = b.clone()
    damp = torch.as_tensor(damp, dtype=b.dtype, device=b.device).expand(batch)
    normb = _norm(u)
    beta = normb.clone()
    u = u * _bc(_div(torch.ones_like(beta), beta), u)
    v = rmatvec(u)
    alpha = _norm(v)
    v = v * _bc(_div(torch.ones_like(alpha), alpha), v)
    x = torch.zeros((batch, *x_shape), dtype=b.dtype, device=b.device)
    one = torch.ones_like(beta)
    zero = torch.zeros_like(beta)
    zetabar, alphabar, rho, rhobar, cbar, sbar = alpha * beta, alpha.clone(), one.clone(), one.clone(), one.clone(), zero.clone()
    h, hbar = v.clone(), torch.zeros_like(v)
    betadd, betad, rhodold, tautildeold, thetatilde, zeta, d = beta.clone(), zero.clone(), one.clone(), zero.clone(), zero.clone(), zero.clone(), zero.clone()
    normA2 = alpha ** 2
    maxrbar, minrbar = zero.clone(), torch.full_like(beta, torch.finfo(beta.dtype).max)
    active = (alpha * beta) != 0
    iters = torch.zeros(batch, dtype=torch.long, device=b.device)
    stop = torch.where(active, torch.full_like(iters, 7), torch.zeros_like(iters))
    out_r, out_ar, out_A = beta.clone(), alpha * beta, alpha.clone()
    itn = 0
    while itn < max_iter and bool(active.any()):
        itn += 1
        iters += active.long()
        u = matvec(v) - _bc(alpha, u) * u
        beta = _norm(u)
        u = u * _bc(_div(one, beta), u)
        v = rmatvec(u) - _bc(beta, v) * v
        alpha = _norm(v)
        v = v * _bc(_div(one, alpha), v)
        chat, shat, alphahat = _sym_ortho(alphabar, damp)
        rhoold = rho
        c, s, rho = _sym_ortho(alphahat, beta)
        thetanew = s * alpha
        alphabar = c * alpha
        rhobarold, zetaold = rhobar, zeta
        thetabar = sbar * rho
        rhotemp = cbar * rho
        cbar, sbar, rhobar = _sym_ortho(cbar * rho, thetanew)
        zeta = cbar * zetabar
        zetabar = -sbar * zetabar
        hbar = h - _bc(_div(thetabar * rho, rhoold * rhobarold), h) * hbar
        x = torch.where(_bc(active, x), x + _bc(_div(zeta, rho * rhobar), x) * hbar, x)
        h = v - _bc(_div(thetanew, rho), v) * h
        # estimate of ||r||
        betaacute, betacheck = chat * betadd, -shat * betadd
        betahat, betadd = c * betaacute, -s * betaacute
        thetatildeold = thetatilde
        ctildeold, stildeold, rhotildeold = _sym_ortho(rhodold, thetabar)
        thetatilde = stildeold * rhobar
        rhodold = ctildeold * rhobar
        betad = -stildeold * betad + ctildeold * betahat
        tautildeold = _div(zetaold - thetatildeold * tautildeold, rhotildeold)
        taud = _div(zeta - thetatilde * tautildeold, rhodold)
        d = d + betacheck ** 2
        normr = torch.sqrt(d + (betad - taud) ** 2 + betadd ** 2)
        # estimates of ||A|| and cond(A)
        normA2 = normA2 + beta ** 2
        normA = torch.sqrt(normA2)
        normA2 = normA2 + alpha ** 2
        maxrbar = torch.maximum(maxrbar, rhobarold)
        if itn > 1:
            minrbar = torch.minimum(minrbar, rhobarold)
        condA = _div(torch.maximum(maxrbar, rhotemp), torch.minimum(minrbar, rhotemp))
        normar = zetabar.abs()
        normx = _norm(x)
        test1 = _div(normr, normb)
        test2 = torch.where(normA * normr != 0, _div(normar, normA * normr), torch.full_like(normr, float("inf")))
        test3 = _div(one, condA)
        rtol = btol + atol * _div(normA * normx, normb)
        solved, least = test1 <= rtol, (test2 <= atol) | (normar == 0) | (1 + test2 <= 1)
        code = torch.where(solved, 1, torch.where(least, 2, torch.where(test3 <= 1 / conlim, 3, 7)))
        stop = torch.where(active, code, stop)
        out_r, out_ar, out_A = (torch.where(active, new, old) for new, old in ((normr, out_r), (normar, out_ar), (normA, out_A)))
        active = active & (code == 7)
    return LsmrResult(x, iters, out_r, out_ar, out_A, normb, stop)


@dataclass
class SolveReport:
    """How one layer's least-squares inverse ended, per sample: ``iterations``, the relative
    residual ``residual = ||A v - t|| / ||t||`` and the relative normal-equation residual
    ``normal_residual = ||A^T r|| / (||A|| ||r||)`` (LSMR's estimates; 0 when ``r = 0``), and the
    ``stop`` reason: ``"solved"`` (``A v = t`` to ``btol``), ``"least_squares"`` (a least-squares
    solution to ``atol``), ``"zero_target"``, ``"ill_conditioned"`` or ``"max_iter"`` (not
    converged). ``rows``: the equations kept (units the ReLU mask leaves active) of ``equations``;
    ``damp``: the Tikhonov damping ``lambda`` per sample (0: the plain least-squares inverse)."""

    layer: str
    kind: str
    iterations: tuple[int, ...]
    residual: tuple[float, ...]
    normal_residual: tuple[float, ...]
    stop: tuple[str, ...]
    rows: tuple[int, ...]
    equations: int
    damp: tuple[float, ...] = ()

    @property
    def converged(self) -> bool:
        """Every sample stopped on a convergence test (not on the iteration cap)."""
        return all(s != "max_iter" for s in self.stop)

    @classmethod
    def from_lsmr(cls, result: LsmrResult, keep: torch.Tensor | None, equations: int,
                  damp: torch.Tensor | float = 0.0) -> "SolveReport":
        normr, normb = result.normr, result.normb
        damp = torch.as_tensor(damp, dtype=normr.dtype).expand(normr.shape)
        residual = _div(normr, normb)
        normal = torch.where(normr > 0, _div(result.normar, result.normA * normr), torch.zeros_like(normr))
        rows = keep.flatten(1).sum(1) if keep is not None else torch.full_like(result.iterations, equations)
        return cls("", "", tuple(result.iterations.tolist()), tuple(residual.tolist()), tuple(normal.tolist()),
                   tuple(STOP_REASONS[int(c)] for c in result.stop), tuple(int(r) for r in rows.tolist()), equations,
                   tuple(damp.tolist()))


class LinearOperator:
    """A batched linear map with its adjoint: ``matvec`` ``(B, *in_shape) -> (B, *out_shape)``."""

    def __init__(self, matvec, rmatvec, in_shape: tuple[int, ...], out_shape: tuple[int, ...]):
        self.matvec, self.rmatvec, self.in_shape, self.out_shape = matvec, rmatvec, tuple(in_shape), tuple(out_shape)

    def rows(self, keep: torch.Tensor) -> "LinearOperator":
        """The operator with the equations where ``keep`` (``(B, *out_shape)``, bool) is False
        removed: their rows are zero, so they impose nothing."""
        def mv(v):
            return self.matvec(v) * keep.to(v.dtype)

        def rmv(u):
            return self.rmatvec(u * keep.to(u.dtype))

        return LinearOperator(mv, rmv, self.in_shape, self.out_shape)

    def truncated(self) -> "LinearOperator":
        """The reference's square system: the first ``n`` of ``m >= n`` equations (per sample)."""
        n = int(torch.tensor(self.in_shape).prod())
        out_shape = self.out_shape

        def mv(v):
            return self.matvec(v).flatten(1)[:, :n]

        def rmv(u):
            full = u.new_zeros((u.shape[0], int(torch.tensor(out_shape).prod())))
            full[:, :n] = u
            return self.rmatvec(full.view(u.shape[0], *out_shape))

        return LinearOperator(mv, rmv, self.in_shape, (n,))

    def solve(self, target: torch.Tensor, options: SolverOptions,
              keep: torch.Tensor | None = None) -> tuple[torch.Tensor, SolveReport]:
        """Least squares ``argmin_v ||A v - target||`` over the rows ``keep`` (all when ``None``);
        with ``options.damp > 0``, ``argmin_v ||A v - target||^2 + lambda^2 ||v||^2`` with
        ``lambda = damp * ||A||_2`` (:func:`largest_singular_value`)."""
        op = self
        equations = target[0].numel()
        if keep is not None:
            op, target = op.rows(keep), target * keep.to(target.dtype)
        if options.mode == "truncated_square" and target[0].numel() > int(torch.tensor(self.in_shape).prod()):
            op = op.truncated()
            target = target.flatten(1)[:, : int(torch.tensor(self.in_shape).prod())]
        damp = options.damp * largest_singular_value(op, target) if options.damp > 0 else 0.0
        result = lsmr_solve(op.matvec, op.rmatvec, target, op.in_shape, options.atol, options.btol,
                            max_iter=options.max_iter, damp=damp)
        return result.x, SolveReport.from_lsmr(result, keep, equations, damp)


def largest_singular_value(op: LinearOperator, like: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Per-sample estimate of ``||A||_2``: the largest singular value of the bidiagonal matrix from
    ``steps`` Golub-Kahan steps (Lanczos) started at a fixed random vector; a lower bound that
    converges much faster than power iteration (``steps`` operator pairs)."""
    generator = torch.Generator(device=like.device).manual_seed(0)  # leaves the caller's random state alone
    u = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
    u = u * _bc(_div(torch.ones(like.shape[0], dtype=like.dtype, device=like.device), _norm(u)), u)
    bidiagonal = like.new_zeros(like.shape[0], steps + 1, steps)
    v = torch.zeros((like.shape[0], *op.in_shape), dtype=like.dtype, device=like.device)
    beta = torch.zeros(like.shape[0], dtype=like.dtype, device=like.device)
    for k in range(steps):
        v = op.rmatvec(u) - _bc(beta, v) * v
        alpha = _norm(v)
        v = v * _bc(_div(torch.ones_like(alpha), alpha), v)
        u = op.matvec(v) - _bc(alpha, u) * u
        beta = _norm(u)
        u = u * _bc(_div(torch.ones_like(beta), beta), u)
        bidiagonal[:, k, k], bidiagonal[:, k + 1, k] = alpha, beta
    return torch.linalg.svdvals(bidiagonal)[:, 0]


def conv_operator(conv: nn.Conv2d, in_shape: tuple[int, ...], dtype: torch.dtype | None = None) -> LinearOperator:
    """``conv2d`` without bias and its adjoint ``conv_transpose2d`` (zero padding only)."""
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise LayerError(f"conv_operator needs explicit zero padding, got padding={conv.padding!r}, mode={conv.padding_mode!r}")
    w = conv.weight.detach()
    if dtype is not None:
        w = w.to(dtype)
    args = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)
    c, hh, ww = in_shape
    probe = F.conv2d(torch.zeros(1, c, hh, ww, dtype=w.dtype, device=w.device), w, **args)
    out_shape = tuple(probe.shape[1:])
    full = F.conv_transpose2d(probe, w, **args)
    output_padding = (hh - full.shape[2], ww - full.shape[3])

    def mv(v):
        return F.conv2d(v, w, **args)

    def rmv(u):
        return F.conv_transpose2d(u, w, output_padding=output_padding, **args)

    return LinearOperator(mv, rmv, in_shape, out_shape)


def _plain_conv(module: nn.Module) -> bool:
    return (type(module) is nn.Conv2d or type(module).forward is nn.Conv2d.forward) and isinstance(module, nn.Conv2d) \
        and module.padding_mode == "zeros" and not isinstance(module.padding, str)


def kind_of(module: nn.Module) -> str:
    """How a module is inverted: ``elementwise``, ``maxpool``, ``batchnorm``, ``conv`` or ``composite``."""
    if isinstance(module, ELEMENTWISE):
        return "elementwise"
    if isinstance(module, nn.MaxPool2d):
        return "maxpool"
    if isinstance(module, nn.BatchNorm2d) and module.running_var is not None and type(module).forward is nn.BatchNorm2d.forward:
        return "batchnorm"
    if isinstance(module, nn.Conv2d) and _plain_conv(module):
        return "conv"
    return "composite"


def unpool(pool: nn.MaxPool2d, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Place ``b``'s values at the argmax positions of ``pool`` on its input ``x``; zeros elsewhere
    (a position that is the argmax of several windows gets one of the values, as MaxUnpool2d)."""
    _, idx = F.max_pool2d(x, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode, return_indices=True)
    out = torch.zeros(x.shape[0], x.shape[1], x.shape[2] * x.shape[3], dtype=b.dtype, device=b.device)
    out.scatter_(2, idx.flatten(2), b.flatten(2))
    return out.view(x.shape)


def batchnorm_inverse(bn: nn.BatchNorm2d, y: torch.Tensor) -> torch.Tensor:
    """Exact inverse of an eval-mode BatchNorm2d: ``(y - beta) / gamma * sqrt(var + eps) + mean``
    (channels with ``gamma = 0`` carry no information and give the running mean)."""
    shape = (1, -1, 1, 1)
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(bn.running_var)
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(bn.running_var)
    scale = torch.sqrt(bn.running_var + bn.eps) / torch.where(gamma != 0, gamma, torch.ones_like(gamma))
    scale = torch.where(gamma != 0, scale, torch.zeros_like(scale))
    return ((y - beta.view(shape).to(y.dtype)) * scale.view(shape).to(y.dtype) + bn.running_mean.view(shape).to(y.dtype))


def _fallback_zero(solution: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The reference's rule: an all-zero least-squares solution is replaced by the forward input."""
    zero = (solution.flatten(1) == 0).all(dim=1)
    return torch.where(_bc(zero, solution), x.to(solution.dtype), solution)


def _finish(solution: torch.Tensor, x: torch.Tensor, options: SolverOptions) -> torch.Tensor:
    """``lsmr``: the least-squares solution as it is (zero when the target is); the parity mode
    ``truncated_square`` keeps the reference's fallback to the forward input."""
    return _fallback_zero(solution, x) if options.mode == "truncated_square" else solution


Solved = tuple[torch.Tensor, "SolveReport | None"]


def conv_solve(conv: nn.Conv2d, x: torch.Tensor, b: torch.Tensor, options: SolverOptions = SolverOptions(),
               keep: torch.Tensor | None = None) -> Solved:
    """Least-squares input of ``conv`` for the output ``b``: ``argmin_v ||conv2d(v, W) - (b - bias)||``
    over the output units ``keep`` (all when ``None``), with its :class:`SolveReport`."""
    if options.mode == "released":
        return x.to(b.dtype), None
    dtype = torch.float64 if options.float64 else b.dtype
    op = conv_operator(conv, tuple(x.shape[1:]), dtype)
    target = b.to(dtype)
    if conv.bias is not None:
        target = target - conv.bias.detach().to(dtype).view(1, -1, 1, 1)
    solution, report = op.solve(target, options, keep)
    return _finish(solution, x, options).to(b.dtype), report


def conv_inverse(conv: nn.Conv2d, x: torch.Tensor, b: torch.Tensor, options: SolverOptions = SolverOptions(),
                 keep: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`conv_solve` without the report."""
    return conv_solve(conv, x, b, options, keep)[0]


def composite_solve(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, b: torch.Tensor,
                    options: SolverOptions = SolverOptions(), keep: torch.Tensor | None = None,
                    modules: list[nn.Module] | None = None) -> Solved:
    """Least-squares inverse of a composite ``f`` linearised at its stored input ``x`` (jvp/vjp;
    ``f`` must treat samples independently, e.g. BatchNorm in eval mode), over the output units
    ``keep``, with its :class:`SolveReport`. Units where ``f``'s own activations are inactive have
    zero Jacobian rows and impose nothing already. ``modules``: the modules ``f`` applies in order;
    when they form a piecewise-linear block, its fixed-slope Jacobian (:mod:`.linear`) is used."""
    if options.mode == "released":
        return x.to(b.dtype), None
    dtype = torch.float64 if options.float64 else x.dtype
    op, fx = linearized(f, x.detach().to(dtype))
    fixed = fixed_slope_jacobian(modules, x.detach().to(dtype), op.matvec) if modules else None
    if fixed is not None:
        op = LinearOperator(*fixed, op.in_shape, op.out_shape)
    if fx.shape != b.shape:
        raise LayerError(f"composite output {tuple(fx.shape)} does not match the feature map {tuple(b.shape)}")
    x0 = x.detach().to(dtype)
    if options.offset == "operating_point":
        offset = fx - op.matvec(x0)
    else:
        with torch.no_grad():
            offset = f(torch.zeros_like(x0))
    with torch.no_grad():
        solution, report = op.solve(b.to(dtype) - offset, options, keep)
    return _finish(solution, x0, options).to(b.dtype), report


def linearized(f: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor) -> tuple[LinearOperator, torch.Tensor]:
    """The Jacobian of ``f`` at ``x0`` as a :class:`LinearOperator`, and ``f(x0)``: the adjoint is a
    backward pass through the stored graph, and ``J v`` the backward pass of that adjoint (linear
    in its cotangent ``u``) with respect to ``u``: both reuse graphs built once, which is far
    cheaper per LSMR iteration than forward-mode AD. Where an operation has no double backward
    (``hardsigmoid``, in MobileNetV3's squeeze-and-excitation), ``J v`` is forward-mode AD
    (``torch.func.jvp``) instead."""
    x_in = x0.clone().requires_grad_(True)
    with torch.enable_grad():
        fx = f(x_in)
        u0 = torch.zeros_like(fx, requires_grad=True)
        gx, = torch.autograd.grad(fx, x_in, u0, create_graph=True, allow_unused=True)
    gx = torch.zeros_like(x0) if gx is None else gx
    forward_mode = []  # set once the double backward turns out to be missing

    def rmv(u):
        g, = torch.autograd.grad(fx, x_in, u, retain_graph=True, allow_unused=True)
        return torch.zeros_like(x0) if g is None else g.detach()

    def mv(v):
        if not gx.requires_grad:  # f does not depend on its input
            return torch.zeros_like(fx)
        if not forward_mode:
            try:
                j, = torch.autograd.grad(gx, u0, v, retain_graph=True, allow_unused=True)
                return torch.zeros_like(fx) if j is None else j.detach()
            except RuntimeError as err:
                if "not implemented" not in str(err):
                    raise
                forward_mode.append(True)
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)  # torch.func's own import
            return torch.func.jvp(f, (x0,), (v.to(x0.dtype),))[1].detach()

    return LinearOperator(mv, rmv, tuple(x0.shape[1:]), tuple(fx.shape[1:])), fx.detach()


def composite_inverse(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, b: torch.Tensor,
                      options: SolverOptions = SolverOptions(), keep: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`composite_solve` without the report."""
    return composite_solve(f, x, b, options, keep)[0]


def module_function(module: nn.Module, dtype: torch.dtype) -> Callable[[torch.Tensor], torch.Tensor]:
    """``module`` as a function of its input, with its parameters and buffers cast to ``dtype``."""
    params = {k: v.detach().to(dtype) if v.is_floating_point() else v for k, v in module.named_parameters()}
    buffers = {k: v.to(dtype) if v.is_floating_point() else v for k, v in module.named_buffers()}
    state = params | buffers
    return lambda t: torch.func.functional_call(module, state, (t,))


# leaf types a composite may contain: linearised by jvp/vjp, samples independent in eval mode
COMPOSITE_LEAVES = ELEMENTWISE + (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                                  nn.ZeroPad2d, nn.ConstantPad2d, nn.Sigmoid, nn.Hardsigmoid, nn.Tanh, nn.Flatten, nn.Linear)


def _eval_identity(module: nn.Module) -> bool:
    """torchvision's ``StochasticDepth`` and timm's ``DropPath``: the identity in eval mode."""
    return type(module).__name__ in ("StochasticDepth", "DropPath") and not module.training


def check_invertible(module: nn.Module, name: str = "") -> None:
    """Raise a one-line :class:`LayerError` naming the first leaf module type with no NA-BP inverse."""
    for sub_name, sub in module.named_modules():
        if next(sub.children(), None) is None and not isinstance(sub, COMPOSITE_LEAVES) and not _eval_identity(sub):
            where = ".".join(p for p in (name, sub_name) if p)
            raise LayerError(f"NAFlow has no inverse for module type {type(sub).__name__} ('{where}'); "
                             "supported: conv, BatchNorm, max/avg-pool, linear, elementwise activations and blocks of them")




def inactive_units(module: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """Where an elementwise activation's derivative at its input ``x`` is exactly zero (a ReLU's
    inactive units; ReLU6 also above 6), or ``None`` when it is nowhere zero / not an activation
    whose mask is 0/1. These units' equations are dropped from the inverse of the layer before."""
    if not isinstance(module, ZERO_MASK):
        return None
    t = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        slope, = torch.autograd.grad(module.forward(t.clone()).sum(), t)  # clone: in-place activations
    dead = slope == 0
    return dead if bool(dead.any()) else None


def solve_inverse(module: nn.Module, x: torch.Tensor, b: torch.Tensor, options: SolverOptions = SolverOptions(),
                  keep: torch.Tensor | None = None) -> Solved:
    """``module^{-1}(b)`` given the module's stored forward input ``x`` (see the module docstring),
    with the output units ``keep`` only (the ReLU mask after it; ``None``: all), and the
    :class:`SolveReport` of a least-squares inverse (``None`` for the exact ones)."""
    kind = kind_of(module)
    if kind == "elementwise":
        return b, None
    if kind == "maxpool":
        return unpool(module, x, b), None
    if kind == "batchnorm":
        return batchnorm_inverse(module, b), None
    if kind == "conv":
        return conv_solve(module, x, b, options, keep)
    check_invertible(module)
    dtype = torch.float64 if options.float64 else x.dtype
    return composite_solve(module_function(module, dtype), x, b, options, keep, [module])


def invert(module: nn.Module, x: torch.Tensor, b: torch.Tensor, options: SolverOptions = SolverOptions(),
           keep: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`solve_inverse` without the report."""
    return solve_inverse(module, x, b, options, keep)[0]
