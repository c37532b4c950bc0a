"""Score-CAM and Ablation-CAM on the fastest checked inference copy at an automatic batch size
(issue 29 item 2): the same maps as on the model itself, and the user's model returned unchanged."""

from __future__ import annotations

import pytest
import torch

from visionlens import AblationCAM, ScoreCAM
from visionlens.core import inference as I

from helpers import TinyGapNet, assert_same_state, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


def _resnet():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    with torch.no_grad():  # batch norms that do something, so that folding them matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("method, layer", [(ScoreCAM, "layer3"), (AblationCAM, "layer3"),
                                           (AblationCAM, "layer4.1.conv2")])
def test_the_fast_path_gives_the_plain_paths_maps(method, layer):
    """``layer4.1.conv2`` is a convolution whose batch norm follows: the copy keeps that pair
    unfolded, so the ablated activations are the convolution's own output."""
    model = _resnet()
    x = torch.randn(2, 3, 64, 64)
    before = snapshot(model)
    fast = method(model, layer)(x, [1, 7])
    plain = method(model, layer, batch_size=64, inference_copy=False)(x, [1, 7])
    assert fast.maps.abs().amax() > 0
    torch.testing.assert_close(fast.maps, plain.maps, rtol=0, atol=1e-4)
    assert_same_state(before, snapshot(model))


def test_the_copy_is_chosen_once_and_renewed_when_the_weights_change():
    torch.manual_seed(0)
    net = TinyGapNet().eval()
    x = torch.randn(2, 3, 32, 32)
    first, how = I.fastest_checked_copy(net, x, 16)
    assert I.fastest_checked_copy(net, x, 16)[0] is first
    assert how == "model itself" or how.startswith("inference copy (2 BatchNorm folded")
    with torch.no_grad():
        net.fc.weight.mul_(2)
    again = I.fastest_checked_copy(net, x, 16)[0]
    assert again is not first or how == "model itself"
    torch.testing.assert_close(again(x), net(x), rtol=0, atol=1e-4)
    kept = I.fastest_checked_copy(net, x, 16, keep=("features.0",))[0]
    if isinstance(kept, I.InferenceCopy):
        assert isinstance(kept.inner.features[1], torch.nn.BatchNorm2d)  # the kept pair stays unfolded


def test_an_explicit_batch_size_bounds_every_masked_pass(monkeypatch):
    torch.manual_seed(0)
    net = TinyGapNet().eval()
    sizes = []
    real = net.forward
    monkeypatch.setattr(I, "fastest_checked_copy", lambda module, x, batch, keep=(): (module, "model itself"))
    monkeypatch.setattr(net, "forward", lambda x: sizes.append(len(x)) or real(x))
    x = torch.randn(2, 3, 32, 32)
    from visionlens.methods import scorecam

    monkeypatch.setattr(scorecam, "fastest_checked_copy", I.fastest_checked_copy)
    a = ScoreCAM(net, "features.3", batch_size=5)(x, [0, 1])
    assert sizes and max(sizes[1:]) <= 5
    sizes.clear()
    b = ScoreCAM(net, "features.3")(x, [0, 1])  # the memory bound: every masked image in one pass here
    assert max(sizes) > 5
    torch.testing.assert_close(a.maps, b.maps, rtol=0, atol=1e-5)
