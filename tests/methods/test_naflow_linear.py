"""The fixed-slope Jacobian of piecewise-linear blocks (methods/naflow/linear.py) against autograd:
used for inverted residuals and ResNet blocks, refused for a sigmoid gate."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.mobilenetv2 import InvertedResidual
from torchvision.models.resnet import BasicBlock, Bottleneck

from visionlens.methods.naflow.inverse import linearized, module_function
from visionlens.methods.naflow.linear import fixed_slope_jacobian

pytestmark = pytest.mark.usefixtures("one_thread")


def _randomised(block: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return block.double().eval()


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.gate = nn.Conv2d(4, 4, 3, padding=1), nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Sigmoid())

    def forward(self, x):
        return x * self.gate(self.conv(x))


class Product(nn.Module):
    """Only piecewise-linear leaves, but a forward that multiplies two branches: not linear."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(4, 4, 1), nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU())

    def forward(self, x):
        return self.a(x) * self.b(x)


BLOCKS = {
    "inverted_residual": (lambda: InvertedResidual(6, 6, 1, 3), 6),
    "inverted_residual_stride2": (lambda: InvertedResidual(6, 8, 2, 3), 6),
    "basic_block": (lambda: BasicBlock(6, 6), 6),
    "bottleneck": (lambda: Bottleneck(6, 3, stride=2, downsample=nn.Sequential(nn.Conv2d(6, 12, 1, stride=2), nn.BatchNorm2d(12))), 6),
}


@pytest.mark.parametrize("name", list(BLOCKS))
def test_the_fixed_slope_jacobian_equals_autograds(name):
    build, channels = BLOCKS[name]
    block = _randomised(build())
    x0 = torch.randn(2, channels, 8, 8, dtype=torch.float64)
    reference, _ = linearized(module_function(block, torch.float64), x0)
    inplace = [getattr(m, "inplace", None) for m in block.modules()]
    rng = torch.get_rng_state()
    fixed = fixed_slope_jacobian([block], x0, reference.matvec)
    assert fixed is not None, name
    assert torch.equal(torch.get_rng_state(), rng)  # its random check direction leaves the caller's state alone
    matvec, rmatvec = fixed
    v, u = torch.randn_like(x0), torch.randn(2, *reference.out_shape, dtype=torch.float64)
    torch.testing.assert_close(matvec(v), reference.matvec(v), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(rmatvec(u), reference.rmatvec(u), rtol=1e-10, atol=1e-10)
    assert [getattr(m, "inplace", None) for m in block.modules()] == inplace  # in-place activations restored


@pytest.mark.parametrize("block", [Gated(), Product()], ids=["sigmoid_gate", "product"])
def test_blocks_that_are_not_piecewise_linear_fall_back(block):
    block = block.double().eval()
    x0 = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    reference, _ = linearized(module_function(block, torch.float64), x0)
    assert fixed_slope_jacobian([block], x0, reference.matvec) is None


def test_the_jacobian_of_an_operation_without_a_double_backward_uses_forward_mode():
    """hardsigmoid (MobileNetV3's squeeze-and-excitation gate) has no double backward, which the
    cheap J v needs: the operator falls back to forward-mode AD and still equals the Jacobian."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 3, 3, padding=1).double()

    def gated(x):
        return x * torch.nn.functional.hardsigmoid(conv(x))

    x0 = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    operator, fx = linearized(gated, x0)
    dense = torch.autograd.functional.jacobian(lambda t: gated(t.view(1, 3, 5, 5)).flatten(), x0.flatten())
    v = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(operator.matvec(v).flatten(), dense @ v.flatten(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(operator.rmatvec(v).flatten(), dense.T @ v.flatten(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(fx, gated(x0))


def test_naflow_follows_mobilenet_v3_and_efficientnet_blocks():
    """MobileNetV3's gate needs the forward-mode J v; torchvision EfficientNet's StochasticDepth is
    the identity in eval mode (it was "no inverse for module type StochasticDepth")."""
    torchvision = pytest.importorskip("torchvision")
    from visionlens import NAFlow

    torch.manual_seed(0)
    for model in (torchvision.models.mobilenet_v3_small(weights=None), torchvision.models.efficientnet_b0(weights=None)):
        result = NAFlow(model.eval(), max_iter=5)(torch.randn(1, 3, 32, 32))
        assert result.flow.shape[1] > 10 and bool(torch.isfinite(result.flow).all())
