"""How ill-conditioned NAFlow's exact inverses are on MobileNetV2's inverted residuals (issue 29,
item 1): each block's Jacobian at one photo's activations is built as a sparse matrix (the
fixed-slope operator applied to coloured probes: the block's receptive field is 3 pixels wide, so
9 colours x C channels recover every entry), factorised exactly (SciPy's SuperLU, float64), and
solved for a random target ``t``. Printed per block: size, non-zeros, build and factorisation
time, ``||x|| / ||t||`` (a lower bound on ``1 / sigma_min``: how much the exact inverse amplifies),
and LSMR's iterations to ``atol = btol = 1e-6`` for the same target, plain and with the damping
``--damp`` (relative to ``||J||_2``).

    python benchmarks/naflow_conditioning.py [--blocks 5,10,16] [--damp 0.1] [--max-iter 3000]
                                             [--photos /work/shared/data/imagenet-sample]

Needs SciPy (a test dependency). One torch thread.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from naflow_speed import DEFAULT_PHOTOS, build, photo_folder, photos_batch  # noqa: E402

from visionlens.methods.naflow.inverse import LinearOperator, largest_singular_value, linearized, lsmr_solve, module_function  # noqa: E402
from visionlens.methods.naflow.linear import fixed_slope_jacobian  # noqa: E402

import _cli  # noqa: E402


def sparse_jacobian(matvec, in_shape, out_shape, period: int = 3):
    """The Jacobian of a block whose receptive field is ``period`` pixels wide, from ``period^2 * C``
    probes (each input pixel's colour is unique within any window)."""
    import scipy.sparse as sp

    c, h, w = in_shape
    co, ho, wo = out_shape
    stride = h // ho
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    rows, cols, vals = [], [], []
    for a in range(period):
        for b in range(period):
            probes = torch.zeros(c, c, h, w, dtype=torch.float64)
            colour = ((ii % period) == a) & ((jj % period) == b)
            probes[torch.arange(c), torch.arange(c)] = colour.to(torch.float64)
            out = torch.cat([matvec(probes[k:k + 256]) for k in range(0, c, 256)])
            c_in, c_out, y, x = out.nonzero(as_tuple=True)
            top, left = y * stride - 1, x * stride - 1  # the window of output (y, x) starts here
            qi, qj = top + (a - top) % period, left + (b - left) % period
            rows.append((c_out * ho + y) * wo + x)
            cols.append((c_in * h + qi) * w + qj)
            vals.append(out[c_in, c_out, y, x])
    return sp.csc_matrix((torch.cat(vals).numpy(), (torch.cat(rows).numpy(), torch.cat(cols).numpy())),
                         shape=(co * ho * wo, c * h * w))


def main() -> None:
    import scipy.sparse.linalg as sla

    parser = _cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=photo_folder, default=None,
                        help=f"folder of photos (.jpg, .jpeg, .png); default {DEFAULT_PHOTOS} where it holds "
                             "photos, else a random input")
    parser.add_argument("--blocks", type=_cli.positive_ints, default=[5, 10, 16],
                        help="comma-separated MobileNetV2 features.N blocks with an identity skip")
    parser.add_argument("--damp", type=float, default=0.1)
    parser.add_argument("--max-iter", type=_cli.positive_int, default=3000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, preprocess = build("mobilenet_v2", "cpu")
    if max(args.blocks) >= len(model.features):
        _cli.fail(f"--blocks: MobileNetV2 has features.0 to features.{len(model.features) - 1}")
    x = photos_batch(args.photos, 1, preprocess)
    acts = [x]
    with torch.no_grad():
        for block in model.features:
            acts.append(block(acts[-1]))
    print(f"load average {os.getloadavg()[0]:.2f}; MobileNetV2, one photo, float64", flush=True)
    for index in args.blocks:
        block, x0 = model.features[index], acts[index].double()
        op, fx = linearized(module_function(block, torch.float64), x0)
        mv, rmv = fixed_slope_jacobian([block], x0, op.matvec)
        start = time.perf_counter()
        jac = sparse_jacobian(mv, tuple(x0.shape[1:]), tuple(fx.shape[1:]))
        built = time.perf_counter() - start
        probe = torch.randn(1, *x0.shape[1:], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        check = np.abs(jac @ probe.flatten().numpy() - mv(probe).flatten().numpy()).max() / float(mv(probe).abs().max())
        t = np.random.default_rng(0).standard_normal(jac.shape[0])
        start = time.perf_counter()
        solution = sla.splu(jac, permc_spec="MMD_AT_PLUS_A").solve(t)
        factorised = time.perf_counter() - start
        residual = np.linalg.norm(jac @ solution - t) / np.linalg.norm(t)
        target = torch.from_numpy(t).view(1, *fx.shape[1:])
        linear = LinearOperator(mv, rmv, tuple(x0.shape[1:]), tuple(fx.shape[1:]))
        sigma = float(largest_singular_value(linear, target)[0])
        runs = {}
        for damp in (0.0, args.damp):
            result = lsmr_solve(mv, rmv, target, linear.in_shape, 1e-6, 1e-6, max_iter=args.max_iter, damp=damp * sigma)
            runs[damp] = (int(result.iterations[0]), "converged" if int(result.stop[0]) != 7 else "cap")
        print(f"features.{index}: {jac.shape[0]} unknowns, {jac.nnz / 1e6:.1f} M non-zeros (entries checked to "
              f"{check:.0e}), built in {built:.1f} s, exact solve {factorised:.1f} s (residual {residual:.0e}); "
              f"||x||/||t|| = {np.linalg.norm(solution) / np.linalg.norm(t):.3g}, ||J||_2 ~ {sigma:.3g}; LSMR to 1e-6: "
              f"plain {runs[0.0][0]} iterations ({runs[0.0][1]}), damp {args.damp:g} {runs[args.damp][0]} "
              f"({runs[args.damp][1]})", flush=True)


if __name__ == "__main__":
    _cli.run(main)
