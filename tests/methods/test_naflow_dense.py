"""NAFlow against an independent dense-Jacobian cascade (issue 29, item 1), float64, small CNNs.

The oracle builds each stage's Jacobian at its stored input with
``torch.autograd.functional.jacobian``, drops the rows that are zero in the Jacobian of the stage
followed by the unit-wise modules up to its ReLU (the inactive units: they impose nothing), and
applies the pseudo-inverse; the abandoning mask, the map positions (a ReLU's input shows its
output's map) and the maps follow the paper. NAFlow solves the same systems matrix-free (LSMR)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck

from visionlens import NAFlow
from visionlens.core.result import normalize_maps
from visionlens.methods.naflow import SimilarityNAFlow

UNIT_WISE = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Identity)
RELU_LIKE = (nn.ReLU, nn.ReLU6)
SOLVER = dict(float64=True, atol=1e-12, btol=1e-12, max_iter=5000)
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: extra threads only contend


class SqueezeExcite(nn.Module):
    """EfficientNet-style block: expand, depthwise, squeeze-and-excite (sigmoid gate), project, skip."""

    def __init__(self, c: int, expand: int = 2):
        super().__init__()
        e = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(e, e, 3, padding=1, groups=e, bias=False), nn.BatchNorm2d(e), nn.ReLU6())
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(e, 4, 1), nn.ReLU(), nn.Conv2d(4, e, 1), nn.Sigmoid())
        self.project = nn.Sequential(nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        h = self.depthwise(self.expand(x))
        return x + self.project(h * self.se(h))


class Classifier(nn.Module):
    def __init__(self, features: nn.Sequential, channels: int, classes: int = 5):
        super().__init__()
        self.features, self.fc = features, nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def _randomise_batchnorms(net: nn.Module) -> nn.Module:
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return net


def alexnet_style():
    # conv3 (8 -> 24) - relu3 - conv4 (24 -> 12): conv4 reduces, merged back to conv3 as the reference does
    return [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 24, 3, padding=1), nn.ReLU(),
            nn.Conv2d(24, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 12, 3, padding=1), nn.ReLU()], 12, {5: 3}


def vgg_style():
    return [nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8),
            nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU()], 16, {}


def mobilenet_v2_style():
    return [nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
            InvertedResidual(8, 8, 1, 3), InvertedResidual(8, 12, 2, 3), InvertedResidual(12, 12, 1, 3)], 12, {}


def resnet_style():
    down = nn.Sequential(nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))
    return [nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), BasicBlock(8, 8),
            Bottleneck(8, 4, stride=2, downsample=down)], 16, {}


def efficientnet_style():
    return [nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(), SqueezeExcite(8), SqueezeExcite(8)], 8, {}


def _model(builder, seed: int = 0):
    torch.manual_seed(seed)
    modules, channels, merges = builder()
    net = Classifier(nn.Sequential(*modules), channels)
    return _randomise_batchnorms(net).double().eval(), merges


def _jacobian(fn, x: torch.Tensor) -> torch.Tensor:
    out = fn(x)
    return torch.autograd.functional.jacobian(fn, x, vectorize=True).reshape(out.numel(), x.numel())


def _unit_wise_run(modules: list[nn.Module], end: int) -> int:
    """The index after the unit-wise modules that follow ``end`` up to and including a ReLU
    (``end`` itself when none follows or no ReLU closes the run)."""
    j = end
    while j < len(modules) and isinstance(modules[j], UNIT_WISE):
        j += 1
        if isinstance(modules[j - 1], RELU_LIKE):
            return j
    return end


def _least_squares(jac: torch.Tensor, target: torch.Tensor, damp: float) -> torch.Tensor:
    """The pseudo-inverse solution, or with ``damp > 0`` the Tikhonov one ``(J^T J + damp^2 I)^-1 J^T t``."""
    if damp == 0:
        return torch.linalg.pinv(jac, rtol=1e-12) @ target
    eye = torch.eye(jac.shape[1], dtype=jac.dtype)
    return torch.linalg.solve(jac.T @ jac + damp ** 2 * eye, jac.T @ target)


def dense_naflow(net: Classifier, x: torch.Tensor, merges: dict[int, int], score=None,
                 damps: list[float] | None = None, sigmas: list[float] | None = None) -> list[torch.Tensor]:
    """The paper's cascade with dense Jacobians and pseudo-inverses, one sample at a time; the
    maps shallowest first. ``merges``: ``{last: first}`` modules inverted as one stage; ``score``:
    the explained scalar as a function of the features (default: the top logit); ``damps``: the
    Tikhonov damping of each least-squares inverse (conv or block), deepest first, and ``sigmas``
    collects each one's largest singular value."""
    damps = iter(damps or [])
    modules = list(net.features)
    tensors = [x.clone().requires_grad_(True)]
    for m in modules:
        tensors.append(m(tensors[-1]))
    y = net.fc(tensors[-1].mean((2, 3)))[0].max() if score is None else score(tensors[-1])
    grads = torch.autograd.grad(y, tensors[1:])
    tensors = [t.detach()[0] for t in tensors]
    grads = [None] + [g[0] for g in grads]
    stages, k = [], len(modules) - 1  # (first, last) module index of each stage, deepest first
    while k >= 0:
        first = merges.get(k, k)
        stages.append((first, k))
        k = first - 1
    top = len(modules)
    b, maps = tensors[top], [(tensors[top] * grads[top]).clamp_min(0).sum(0)]
    for first, last in stages[:-1]:
        if first == last and isinstance(modules[first], RELU_LIKE):
            g = grads[last + 1]  # the map at a ReLU's input is its output's
        else:
            stage = nn.Sequential(*modules[first:last + 1])
            through = nn.Sequential(*modules[first:_unit_wise_run(modules, last + 1)])
            xs = tensors[first][None]
            jac = _jacobian(stage, xs)
            keep = _jacobian(through, xs).abs().sum(1) != 0  # zero rows: units whose ReLU is inactive
            target = (b[None] - stage(xs) + (jac @ xs.flatten()).view_as(b[None])).flatten().detach()
            exact = first == last and isinstance(modules[first], (nn.BatchNorm2d, nn.MaxPool2d))
            damp = 0.0 if exact else next(damps, 0.0)
            if sigmas is not None and not exact:
                sigmas.append(float(torch.linalg.matrix_norm(jac[keep], ord=2)))
            b = _least_squares(jac[keep], target[keep], damp).view_as(tensors[first])
            g = grads[first]
            b = b * (g != 0)
        maps.append((b * g).clamp_min(0).sum(0))
    return maps[::-1]


BLOCKS = {"alexnet": (alexnet_style, 12), "vgg": (vgg_style, 10), "mobilenet_v2": (mobilenet_v2_style, 12),
          "resnet": (resnet_style, 10), "efficientnet": (efficientnet_style, 8)}


@pytest.mark.parametrize("style", list(BLOCKS))
def test_naflow_equals_the_dense_jacobian_cascade(style):
    builder, size = BLOCKS[style]
    net, merges = _model(builder)
    torch.manual_seed(1)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    exp_terms = NAFlow(net, **SOLVER).terms(x)
    for i in range(2):
        dense = dense_naflow(net, x[i:i + 1], merges)
        assert len(dense) == len(exp_terms.maps)
        for name, got, want in zip(exp_terms.names, exp_terms.maps, dense):
            scale = float(want.detach().abs().max())
            assert scale > 0, name
            err = float((got[i] - want).abs().max()) / scale
            assert err < 1e-5, (style, name, err)
    assert exp_terms.solves and all(r.converged for r in exp_terms.solves)


@pytest.mark.parametrize("style", ["vgg", "mobilenet_v2", "resnet", "efficientnet"])
def test_damped_naflow_equals_the_dense_tikhonov_cascade(style):
    """``damp``: every least-squares inverse is the Tikhonov solution with ``lambda = damp * ||J||_2``
    (``||J||_2`` from 5 Golub-Kahan steps: a lower bound within 20 % of the dense spectral norm here)."""
    builder, size = BLOCKS[style]
    net, merges = _model(builder)
    torch.manual_seed(1)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    terms = NAFlow(net, damp=0.05, **SOLVER).terms(x)
    assert terms.solves and all(r.converged for r in terms.solves)
    for i in range(2):
        lambdas, sigmas = [r.damp[i] for r in terms.solves], []
        dense = dense_naflow(net, x[i:i + 1], merges, damps=lambdas, sigmas=sigmas)
        assert len(sigmas) == len(lambdas)
        for lam, sigma in zip(lambdas, sigmas):
            assert 0.8 * 0.05 * sigma <= lam <= 0.05 * sigma * (1 + 1e-9)
        for name, got, want in zip(terms.names, terms.maps, dense):
            scale = float(want.detach().abs().max())
            assert scale > 0, name
            assert float((got[i] - want).abs().max()) / scale < 1e-5, (style, name)


def test_damping_converges_in_fewer_iterations_and_tends_to_the_plain_inverse():
    builder, size = BLOCKS["mobilenet_v2"]
    net, _ = _model(builder)
    torch.manual_seed(1)
    x = torch.randn(1, 3, size, size, dtype=torch.float64)
    plain = NAFlow(net, **SOLVER).terms(x)
    runs = {d: NAFlow(net, damp=d, **SOLVER).terms(x) for d in (1e-1, 1e-6)}
    assert sum(max(r.iterations) for r in runs[1e-1].solves) < sum(max(r.iterations) for r in plain.solves)
    for got, want in zip(runs[1e-6].maps, plain.maps):
        assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max())


@pytest.mark.parametrize("style", ["vgg", "mobilenet_v2"])
def test_similarity_naflow_equals_the_dense_cascade_of_w_dot_e(style):
    """The similarity variant: the explained scalar is ``w . e`` with SFAM's weights ``w`` held
    constant (spec 5.4); the cascade below it is the same dense-Jacobian oracle."""
    builder, size = BLOCKS[style]
    net, merges = _model(builder)
    torch.manual_seed(3)
    x, ref = torch.randn(2, 3, size, size, dtype=torch.float64), torch.randn(2, 3, size, size, dtype=torch.float64)
    method = SimilarityNAFlow(net, layer=net.features, **SOLVER)
    exp = method(x, ref)
    assert exp.solves and exp.converged
    for i in range(2):
        def score(features, i=i):
            e = net.fc(features.mean((2, 3)))
            e = torch.nn.functional.normalize(e, dim=1) if method.post_norm else e
            return (e[0] * exp.weights[i]).sum()

        dense = dense_naflow(net, x[i:i + 1], merges, score)
        want = torch.stack([normalize_maps(m[None].detach(), (size, size), relu=False)[0] for m in dense])
        assert float((exp.flow[i] - want.float()).abs().max()) < 1e-5, style


def test_alexnet_style_merges_the_reducing_conv_and_shows_post_relu_maps():
    net, _ = _model(alexnet_style)
    t = NAFlow(net, **SOLVER).terms(torch.randn(1, 3, 12, 12, dtype=torch.float64))
    assert "features.3+features.5" in t.names
    # the map at a ReLU's input (a conv's output) is the one at the ReLU's output
    first, second = t.names.index("features.0"), t.names.index("features.1")
    assert torch.equal(t.maps[first], t.maps[second])


def test_the_solution_does_not_depend_on_the_iteration_cap_once_converged():
    net, merges = _model(alexnet_style)
    torch.manual_seed(2)
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    tight = NAFlow(net, **SOLVER).terms(x)
    capped = {cap: NAFlow(net, float64=True, atol=1e-10, btol=1e-10, max_iter=cap).terms(x) for cap in (200, 2000)}
    assert not capped[200].solves[-1].converged and capped[2000].solves[-1].converged
    assert capped[200].solves[-1].stop == ("max_iter", "max_iter")
    # the deepest inverse converges well within both caps: same iterations, same layer map
    assert capped[200].solves[0].iterations == capped[2000].solves[0].iterations
    for a, b in zip(capped[2000].maps, tight.maps):
        assert float((a - b).abs().max()) <= 1e-5 * float(b.abs().max())
    # float32 with the default tolerances and cap converges to the same maps (float32 accuracy)
    default = NAFlow(net.float()).terms(x.float())
    assert all(r.converged for r in default.solves)
    for a, b in zip(default.maps, tight.maps):
        assert float((a.double() - b).abs().max()) <= 1e-3 * float(b.abs().max())


def test_the_released_parity_option_solves_nothing_and_keeps_its_map_positions():
    net, _ = _model(vgg_style)
    x = torch.randn(1, 3, 10, 10, dtype=torch.float64)
    released = NAFlow(net, solver="released")
    t = released.terms(x)
    assert t.solves == [] and released.post_relu is False  # the maps the parity was measured on
    faithful = NAFlow(net, **SOLVER).terms(x)
    torch.testing.assert_close(t.maps[-1], faithful.maps[-1], rtol=0, atol=0)  # the top map is solver-free


def test_the_cli_says_in_one_line_when_layers_stop_before_converging(tmp_path, capsys):
    """explain --method naflow --max-iter N: a layer that stops at the cap is one warning line
    naming --max-iter (the maps are written all the same); a cap that suffices gives none."""
    import numpy as np
    from PIL import Image

    from visionlens.cli import main

    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8")).save(tmp_path / "a.png")
    argv = ["explain", str(tmp_path / "a.png"), "--model", "world-cnn", "--method", "naflow", "--device", "cpu", "--quiet"]
    assert main([*argv, "--max-iter", "1", "--out", str(tmp_path / "short")]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning: naflow:")]
    assert len(warnings) == 1 and "--max-iter" in warnings[0] and "Traceback" not in err, err
    assert (tmp_path / "short" / "summary.json").is_file()
