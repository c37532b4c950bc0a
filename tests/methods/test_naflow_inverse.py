"""NA-BP inverses (spec section 5.2 and 9.4): exact BatchNorm inverse, unpool at the argmax,
matrix-free LSMR against a known input and a dense solve, composites by jvp/vjp."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from visionlens.methods.naflow.inverse import (SolverOptions, batchnorm_inverse, check_invertible, conv_inverse, invert, lsmr,
                                     lsmr_solve, unpool)
from visionlens.errors import LayerError

F64 = SolverOptions(float64=True, max_iter=500)


def test_batchnorm_inverse_is_exact():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5).double().eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 3)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(2, 5, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(batchnorm_inverse(bn, bn(x).detach()), x, rtol=0, atol=1e-12)
    assert torch.equal(invert(bn, x, bn(x).detach()), batchnorm_inverse(bn, bn(x).detach()))


def test_unpool_places_values_at_the_argmax():
    x = torch.tensor([[[[1., 5., 2., 0.], [3., 4., 9., 1.], [0., 2., 1., 1.], [7., 1., 3., 8.]]]])
    pool = nn.MaxPool2d(2)
    b = torch.tensor([[[[10., 20.], [30., 40.]]]])
    out = unpool(pool, x, b)
    expected = torch.zeros_like(x)
    expected[0, 0, 0, 1], expected[0, 0, 1, 2], expected[0, 0, 3, 0], expected[0, 0, 3, 3] = 10, 20, 30, 40
    assert torch.equal(out, expected)
    # same positions as the gradient of max-pool (non-overlapping windows)
    xg = x.clone().requires_grad_(True)
    (pool(xg) * b).sum().backward()
    assert torch.equal(out, xg.grad)


@pytest.mark.parametrize("stride", [1, 2])
def test_lsmr_recovers_a_conv_input_from_its_unmasked_output(stride):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, stride=stride, padding=1).double()
    x = torch.randn(3, 4, 7, 7, dtype=torch.float64)
    y = conv(x).detach()
    if stride == 2:  # 8 x 4 x 4 = 128 < 196 = 4 x 7 x 7: underdetermined, check the residual instead
        v = conv_inverse(conv, torch.zeros_like(x), y, F64)
        torch.testing.assert_close(conv(v), y, rtol=0, atol=1e-4)
    else:
        torch.testing.assert_close(conv_inverse(conv, torch.zeros_like(x), y, F64), x, rtol=0, atol=1e-4)


def test_matrix_free_lsmr_equals_a_dense_solve():
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 6, 3, padding=1, bias=False).double()
    x0 = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: conv(t), x0).reshape(6 * 25, 3 * 25)
    b = torch.randn(2, 6, 5, 5, dtype=torch.float64)  # not in the range: a true least-squares problem
    dense = torch.linalg.lstsq(jac, b.reshape(2, -1).T).solution.T
    got = conv_inverse(conv, x0.expand(2, -1, -1, -1), b, F64)
    torch.testing.assert_close(got.reshape(2, -1), dense, rtol=0, atol=1e-5)
    # float32 by default, close to the float64 answer
    got32 = conv_inverse(conv.float(), x0.float().expand(2, -1, -1, -1), b.float(), SolverOptions(max_iter=500))
    torch.testing.assert_close(got32.double().reshape(2, -1), dense, rtol=0, atol=1e-3)


def test_lsmr_is_batched_with_per_sample_convergence():
    torch.manual_seed(2)
    a = torch.randn(2, 12, 5, dtype=torch.float64)
    a[1] *= 1e3  # a very different scale converges at its own pace
    b = torch.randn(2, 12, dtype=torch.float64)
    b[0] = a[0] @ torch.randn(5, dtype=torch.float64)  # consistent system for sample 0
    x, iters = lsmr(lambda v: torch.einsum("bmn,bn->bm", a, v), lambda u: torch.einsum("bmn,bm->bn", a, u), b, (5,),
                    atol=1e-12, btol=1e-12, max_iter=50)
    for i in range(2):
        torch.testing.assert_close(x[i], torch.linalg.lstsq(a[i], b[i]).solution, rtol=0, atol=1e-8)
    assert iters.shape == (2,) and int(iters.max()) <= 6


def test_truncated_square_solver_is_worse_than_full_least_squares():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1).double()
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    y = conv(x).detach()
    full = conv_inverse(conv, torch.zeros_like(x), y, F64)
    trunc = conv_inverse(conv, torch.zeros_like(x), y, SolverOptions(float64=True, max_iter=500, mode="truncated_square"))
    assert float((full - x).abs().max()) < 1e-4 < float((trunc - x).abs().max())
    assert torch.equal(conv_inverse(conv, x, y, SolverOptions(mode="released")), x)  # the released code's fallback


def test_composite_is_inverted_by_least_squares_at_the_operating_point():
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.LeakyReLU(0.3), nn.Conv2d(8, 8, 3, padding=1)).double().eval()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(invert(block, x, block(x).detach(), F64), x, rtol=0, atol=1e-4)


def test_a_module_without_an_inverse_is_named():
    class Mystery(nn.Module):
        def forward(self, x):
            return x.flip(-1)

    with pytest.raises(LayerError, match="Mystery"):
        check_invertible(nn.Sequential(nn.Conv2d(1, 1, 1), Mystery()))


def test_dropped_rows_impose_nothing_and_the_solve_is_reported():
    from visionlens.methods.naflow.inverse import conv_solve

    torch.manual_seed(3)
    conv = nn.Conv2d(4, 8, 3, padding=1).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    keep = conv(x).detach() > 0  # the units a ReLU after the conv leaves active
    target = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    other = torch.where(keep, target, 100 * torch.randn_like(target))  # differs only where a unit is inactive
    options = SolverOptions(float64=True, atol=1e-12, btol=1e-12, max_iter=2000)
    v, report = conv_solve(conv, x, target, options, keep)
    w, _ = conv_solve(conv, x, other, options, keep)
    torch.testing.assert_close(v, w, rtol=0, atol=1e-8)
    assert report.converged and set(report.stop) <= {"solved", "least_squares"}
    assert report.rows == tuple(int(k) for k in keep.flatten(1).sum(1)) and report.equations == 8 * 36
    assert all(0 < it < 2000 for it in report.iterations)
    capped = conv_solve(conv, x, target, SolverOptions(float64=True, atol=1e-12, btol=1e-12, max_iter=3), keep)[1]
    assert capped.stop == ("max_iter", "max_iter") and not capped.converged


@pytest.mark.parametrize("damp", [0.0, 0.5, 3.0])
def test_damped_lsmr_equals_scipys(damp):
    """``damp``: the same iterates as SciPy's ``lsmr(A, b, damp=...)`` and the Tikhonov solution."""
    sla = pytest.importorskip("scipy.sparse.linalg")
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(60, 40, generator=gen, dtype=torch.float64)
    b = torch.randn(2, 60, generator=gen, dtype=torch.float64)
    got = lsmr_solve(lambda v: v @ a.T, lambda u: u @ a, b, (40,), atol=1e-12, btol=1e-12, damp=damp)
    for i in range(2):
        x, stop, iterations, normr = sla.lsmr(a.numpy(), b[i].numpy(), damp=damp, atol=1e-12, btol=1e-12)[:4]
        assert float((got.x[i] - torch.from_numpy(x)).abs().max()) < 1e-6 * float(got.x[i].abs().max())
        # the stopping tests may fire one iteration apart (float rounding of the estimates)
        assert abs(int(got.iterations[i]) - iterations) <= 1 and abs(float(got.normr[i]) - normr) < 1e-6 * normr
    tikhonov = torch.linalg.solve(a.T @ a + damp ** 2 * torch.eye(40, dtype=a.dtype), a.T @ b.T).T
    assert float((got.x - tikhonov).abs().max()) < 1e-6 * float(tikhonov.abs().max())
