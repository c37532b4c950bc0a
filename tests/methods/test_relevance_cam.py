"""Relevance-CAM: the GAP+FC case by hand, batching, targets, the zoo and torchvision/timm models at
intermediate and last layers, model restoration and the command line."""

import json

import pytest
import torch
import torchvision

from helpers import assert_same_state, snapshot
from visionlens import RelevanceCAM
from visionlens.cli import main
from visionlens.core.result import normalize_maps


def test_gap_fc_network_by_hand(tiny_net):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    exp = RelevanceCAM(tiny_net, "features")(x, target=[1, 3])
    with torch.no_grad():
        a = tiny_net.features(x)  # (B, K, h, w), >= 0 after ReLU
        p = a.mean(dim=(2, 3))  # GAP
        w = tiny_net.fc.weight.clamp(min=0)  # z+ on a non-negative input, bias not in Z (reference Linear)
        start = torch.full((2, 5), -1 / 5).scatter_(1, torch.tensor([[1], [3]]), 1.0)  # contrastive start
        r_p = p * ((start / (p @ w.t())) @ w)  # relevance of the pooled features
        # GAP z-rule: R_A = A / (hw * p) * R_p, so the spatial mean of R_A is R_p / hw
        weights = r_p / (a.shape[2] * a.shape[3])
        raw = torch.einsum("bk,bkhw->bhw", weights, a)
    assert torch.allclose(exp.raw, raw, rtol=1e-4, atol=1e-7)
    assert torch.allclose(exp.maps, normalize_maps(raw, (16, 16), relu=False), atol=1e-5)
    assert exp.targets.tolist() == [1, 3] and exp.method == "relevance-cam" and exp.layer == "features"
    assert exp.raw.min() < 0  # signed: no ReLU, as the reference


def test_batched_equals_one_by_one_and_callable_target(tiny_net):
    torch.manual_seed(1)
    x = torch.randn(3, 3, 16, 16)
    batch = RelevanceCAM(tiny_net, "features.3")(x, target=2)
    for i in range(3):
        single = RelevanceCAM(tiny_net, "features.3")(x[i:i + 1], target=2)
        assert torch.allclose(batch.raw[i], single.raw[0], rtol=1e-4, atol=1e-8)
    onehot = RelevanceCAM(tiny_net, "features.3", contrastive=False)(x, target=2)
    fn = RelevanceCAM(tiny_net, "features.3")(x, target=lambda y: y[:, 2])
    assert fn.targets is None and torch.allclose(fn.raw, onehot.raw, rtol=1e-4, atol=1e-8)


def _check(exp, batch, size):
    assert exp.maps.shape == (batch, size, size) and torch.isfinite(exp.raw).all()
    assert exp.maps.min() >= 0 and exp.maps.max() <= 1
    assert (exp.maps.flatten(1).max(1).values == 1).all()  # not constant


def test_zoo_models_intermediate_and_last_layer(mobilenet, efficientnet, imagenet_photos):
    from visionlens.data.images import load_image

    for model, layers in [(mobilenet, ["features.13", "features"]), (efficientnet, ["_blocks.10", "_head_act"])]:
        x = torch.stack([model.preprocess(load_image(p)) for p in imagenet_photos[:2]])
        state = snapshot(model.module)
        for layer in layers:
            exp = RelevanceCAM(model.module, layer)(x)
            _check(exp, 2, 224)
            assert torch.equal(exp.targets, exp.predictions)
        assert_same_state(state, snapshot(model.module))


@pytest.mark.parametrize(
    "build, layers",
    [
        (lambda: torchvision.models.resnet18(), ["layer2", "layer4"]),
        (lambda: torchvision.models.resnet50(), ["layer3", None]),
        (lambda: torchvision.models.vgg16_bn(), ["features.23", "features.43"]),
        (lambda: pytest.importorskip("timm").create_model("resnet18", pretrained=False), ["layer3", "layer4"]),
    ],
    ids=["resnet18", "resnet50", "vgg16_bn", "timm-resnet18"],
)
def test_torchvision_and_timm_models_unmodified(build, layers):
    torch.manual_seed(0)
    model = build().eval()
    state = snapshot(model)
    x = torch.randn(2, 3, 64, 64)
    for layer in layers:
        _check(RelevanceCAM(model, layer)(x, target=[5, 9]), 2, 64)
    assert_same_state(state, snapshot(model))


def test_cli_per_method_layers(tmp_path, imagenet_photos):
    out = tmp_path / "out"
    code = main(["explain", str(imagenet_photos[0]), "--method", "relevance-cam@features.13,relevance-cam",
                 "--out", str(out), "--device", "cpu", "--quiet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["layer"] == {"relevance-cam@features.13": "features.13", "relevance-cam": "features"}
    stem = imagenet_photos[0].stem
    assert (out / f"{stem}.relevance-cam@features.13.png").is_file()
    import numpy as np

    maps = np.load(out / f"{stem}.npz")
    assert maps["relevance-cam@features.13_raw"].shape == (14, 14) and maps["relevance-cam_raw"].shape == (7, 7)
    assert "relevance-cam@features.13" in (out / "index.html").read_text()


def test_cli_bad_per_method_layer_exits_2(tmp_path, imagenet_photos, capsys):
    code = main(["explain", str(imagenet_photos[0]), "--method", "gradcam,relevance-cam@features.99",
                 "--out", str(tmp_path / "o"), "--quiet", "--device", "cpu"])
    assert code == 2 and "unknown layer 'features.99'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
