"""NAFlow (spec section 5): map count and resolutions on AlexNet, the top-map identity, model
restoration, composites (residual blocks) and the pointing game on the world CNN."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import visionlens
from visionlens import NAFlow
from visionlens.errors import LayerError

from helpers import assert_same_state, snapshot


class SmallSeq(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def _small():
    torch.manual_seed(0)
    net = SmallSeq().eval()
    with torch.no_grad():
        net.features[1].running_mean.uniform_(-0.5, 0.5)
        net.features[1].running_var.uniform_(0.5, 2)
    return net


def test_alexnet_map_count_and_resolutions_match_the_spec_table():
    torch.manual_seed(0)
    model = torchvision.models.alexnet().eval()
    t = NAFlow(model, max_iter=2).terms(torch.randn(1, 3, 224, 224))
    assert len(t.maps) == len(t.names) == 11
    assert [tuple(m.shape[-2:]) for m in t.maps] == [(55, 55)] * 2 + [(27, 27)] * 3 + [(13, 13)] * 5 + [(6, 6)]
    assert "features.6+features.8" in t.names  # Composite(conv3, relu3, conv4)
    assert t.names[0] == "features.0" and t.names[-1] == "features.12"
    assert all(getattr(m, "inplace", True) for m in model.features if isinstance(m, nn.ReLU))


def test_top_map_is_gradient_times_activation():
    net = _small()
    x = torch.randn(2, 3, 12, 12)
    t = NAFlow(net, max_iter=20).terms(x, target=[1, 3])
    a = net.features(x).detach().requires_grad_(True)
    y = net.fc(a.mean((2, 3)))
    g, = torch.autograd.grad(y[0, 1] + y[1, 3], a)
    torch.testing.assert_close(t.maps[-1], (a * g).clamp_min(0).sum(1).detach(), rtol=1e-5, atol=1e-6)
    # the BPFMs are masked by the abandoning mask: zero wherever the gradient is exactly zero
    for b, g in zip(t.features, t.gradients):
        assert bool((b[g == 0] == 0).all())


def test_flow_is_normalised_per_map_and_the_model_is_restored():
    net = _small().train()
    before = snapshot(net)
    exp = NAFlow(net, max_iter=10)(torch.randn(2, 3, 12, 12))
    assert_same_state(before, snapshot(net))
    assert exp.flow.shape == (2, len(exp.flow_layers), 12, 12)
    assert float(exp.flow.min()) >= 0 and float(exp.flow.max()) <= 1
    assert torch.equal(exp.maps, exp.flow[:, -1])


def test_residual_blocks_are_inverted_as_composites_and_bad_layers_fail():
    zoo = visionlens.load_model("world-cnn")
    exp = NAFlow(zoo.module, max_iter=5)(torch.randn(1, 3, 64, 64))
    assert exp.flow_layers == ("stem.0", "stem.1", "stem.2", "layer1", "layer2", "layer3")
    with pytest.raises(LayerError, match="inside 'layer2'"):
        NAFlow(zoo.module, layer="layer2.conv1")(torch.randn(1, 3, 64, 64))


def test_a_module_type_without_an_inverse_is_named():
    class Mystery(nn.Module):
        def forward(self, x):
            return x.flip(-1)

    net = _small()
    net.features[3] = Mystery()
    with pytest.raises(LayerError, match="Mystery"):
        NAFlow(net)(torch.randn(1, 3, 12, 12))


def test_world_cnn_top_map_points_at_the_object_at_least_as_often_as_gradcam():
    from visionlens.data.world import World, WorldConfig

    zoo = visionlens.load_model("world-cnn")
    b = World(WorldConfig(size=64), seed=0).batch("test", range(200))
    x = (b["image"] - 0.5) / 0.5

    def pointing(maps):
        idx = maps.flatten(1).argmax(1)
        return float(b["object_mask"].flatten(1).gather(1, idx[:, None]).float().mean())

    grad = pointing(visionlens.GradCAM(zoo.module, zoo.layer)(x, b["label"]).maps)
    # the top map does not depend on the solver: the cheap released-code fallback suffices here
    top = pointing(NAFlow(zoo.module, solver="released")(x, b["label"]).maps)
    assert top >= grad  # 0.615 vs 0.605 on these 200 images


@pytest.mark.parametrize("name", ["mobilenet", "efficientnet"])
def test_the_maps_equal_layercam_on_the_imagenet_models(request, imagenet_photos, name):
    """Why docs/evaluation.md (b) lets the LayerCAM rows stand for NAFlow: the top map, which is
    what NAFlow returns as ``maps``, is LayerCAM's formula at the last feature layer."""
    from visionlens import LayerCAM
    from visionlens.data import load_image

    zm = request.getfixturevalue(name)
    x = zm.preprocess(load_image(imagenet_photos[0]))[None]
    # max_iter only shapes the lower layers' inverses, never the top map: 1 keeps the test short
    torch.testing.assert_close(NAFlow(zm.module, max_iter=1)(x).maps, LayerCAM(zm.module, zm.layer)(x).maps, rtol=0, atol=1e-5)
