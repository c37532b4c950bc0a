"""CAM and Grad-CAM: the GAP+FC identity, batching, targets, the Explanation contract."""

import pytest
import torch

from visionlens import CAM, GradCAM
from visionlens.core.result import normalize_maps


def test_cam_equals_gradcam_on_gap_fc_net(tiny_net):
    x = torch.randn(4, 3, 32, 32)
    for target in (None, 2, [0, 1, 3, 4]):
        cam = CAM(tiny_net)(x, target)
        grad = GradCAM(tiny_net)(x, target)
        # Grad-CAM = CAM / (h w) before post-processing, identical after ReLU and min-max
        hw = cam.raw.shape[1] * cam.raw.shape[2]
        torch.testing.assert_close(grad.raw, cam.raw / hw, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(grad.maps, cam.maps, rtol=1e-4, atol=1e-5)
        assert torch.equal(cam.targets, grad.targets)


def test_cam_equals_gradcam_on_mobilenet(mobilenet, imagenet_photos):
    x = torch.stack([mobilenet.preprocess(__import__("visionlens").data.load_image(p)) for p in imagenet_photos[:4]])
    cam = CAM(mobilenet.module, "features")(x)
    grad = GradCAM(mobilenet.module, "features")(x)
    torch.testing.assert_close(grad.maps, cam.maps, rtol=1e-3, atol=1e-4)


def test_explanation_contract(tiny_net):
    x = torch.randn(3, 3, 32, 20)
    exp = GradCAM(tiny_net)(x)
    assert exp.layer == "features"  # found automatically: the last spatial layer
    assert exp.method == "gradcam"
    assert exp.maps.shape == (3, 32, 20) and exp.maps.dtype == torch.float32
    assert exp.raw.shape == (3, 16, 10)
    assert exp.targets.tolist() == exp.logits.argmax(1).tolist()
    torch.testing.assert_close(exp.scores, exp.logits.gather(1, exp.targets[:, None])[:, 0])
    assert float(exp.maps.min()) >= 0 and float(exp.maps.max()) <= 1
    for m in exp.maps:  # each map spans [0, 1] unless the positive part is empty
        assert float(m.max()) == pytest.approx(1.0, abs=1e-5) or float(m.max()) == 0.0
    assert not exp.maps.requires_grad and not exp.raw.requires_grad
    torch.testing.assert_close(exp.probabilities.sum(1), torch.ones(3))


def test_batched_equals_one_by_one(tiny_net):
    x = torch.randn(5, 3, 32, 32)
    batch = GradCAM(tiny_net)(x, [0, 1, 2, 3, 4])
    for i in range(5):
        single = GradCAM(tiny_net)(x[i : i + 1], i)
        torch.testing.assert_close(single.maps[0], batch.maps[i], rtol=1e-4, atol=1e-5)


def test_callable_target_matches_class_index(tiny_net):
    x = torch.randn(2, 3, 32, 32)
    by_index = GradCAM(tiny_net)(x, 3)
    by_callable = GradCAM(tiny_net)(x, lambda logits: logits[:, 3])
    assert by_callable.targets is None
    torch.testing.assert_close(by_callable.maps, by_index.maps)


def test_layer_by_module_name_and_index(tiny_net):
    x = torch.randn(2, 3, 32, 32)
    a = GradCAM(tiny_net, tiny_net.features[5])(x)
    b = GradCAM(tiny_net, "features.5")(x)
    c = GradCAM(tiny_net, "features[-1]")(x)
    assert a.layer == b.layer == c.layer == "features.5"
    torch.testing.assert_close(a.maps, b.maps)
    torch.testing.assert_close(a.maps, c.maps)


def test_inplace_relu_after_layer_does_not_corrupt_capture(tiny_net):
    # features.4 (BatchNorm) is followed by ReLU(inplace=True); the captured map must be the BN output
    x = torch.randn(2, 3, 32, 32)
    exp = GradCAM(tiny_net, "features.4")(x)
    with torch.no_grad():
        bn_out = tiny_net.features[:5](x)
        assert bool((bn_out < 0).any())
    assert exp.raw.shape == (2, 16, 16)
    assert torch.isfinite(exp.maps).all()
    # the gradient of the logit w.r.t. the BN output is zero where the ReLU clipped it
    a = bn_out.clone().requires_grad_(True)
    logits = tiny_net.fc(tiny_net.pool(torch.relu(a)).flatten(1))
    score = logits.gather(1, exp.targets[:, None]).sum()
    (g,) = torch.autograd.grad(score, a)
    raw = (g.mean((2, 3))[:, :, None, None] * bn_out).sum(1)
    torch.testing.assert_close(exp.raw, raw, rtol=1e-4, atol=1e-6)


def test_frozen_model_still_explained(tiny_net):
    for p in tiny_net.parameters():
        p.requires_grad_(False)
    x = torch.randn(2, 3, 32, 32)
    frozen = GradCAM(tiny_net)(x)
    assert all(not p.requires_grad for p in tiny_net.parameters())
    for p in tiny_net.parameters():
        p.requires_grad_(True)
    torch.testing.assert_close(frozen.maps, GradCAM(tiny_net)(x).maps)


def test_normalize_maps_matches_gradcam_postprocessing():
    raw = torch.tensor([[[0.0, 1.0], [-2.0, 3.0]]])
    out = normalize_maps(raw, (2, 2))
    torch.testing.assert_close(out, torch.tensor([[[0.0, 1 / 3], [0.0, 1.0]]]), atol=1e-6, rtol=0)
    zero = normalize_maps(-torch.ones(1, 3, 3), (6, 6))
    assert torch.equal(zero, torch.zeros(1, 6, 6))


def test_a_constant_map_stays_zero_after_a_resize_that_rounds():
    """Bilinear resizing of a constant 14 x 14 map to 16 x 16 leaves rounding differences; min-max
    stretched them into a 0-to-1 map of noise. A map that varies, however little, still spans [0, 1]."""
    constant = torch.full((2, 14, 14), 19.1012)
    assert torch.equal(normalize_maps(constant, (16, 16)), torch.zeros(2, 16, 16))
    varies = constant.clone()
    varies[1, 3, 4] += 0.01  # about 5e-4 of the map's magnitude
    out = normalize_maps(varies, (16, 16))
    assert torch.equal(out[0], torch.zeros(16, 16)) and out[1].max() == 1 and out[1].min() == 0


def test_cam_checks_its_layer_relative_to_the_logits_so_tiny_logits_do_not_pass_any_layer():
    """An untrained head gives logits below 1e-3; an absolute tolerance of 1e-3 accepted a layer
    that does not feed the pooling and the classifier."""
    from visionlens import CAM
    from visionlens.errors import LayerError

    from helpers import TinyGapNet

    torch.manual_seed(0)
    net = TinyGapNet().eval()
    with torch.no_grad():
        net.fc.weight.mul_(1e-4)
        net.fc.bias.zero_()
    x = torch.randn(2, 3, 32, 32)
    assert CAM(net)(x).maps.shape == (2, 32, 32)  # the right layer still passes
    with pytest.raises(LayerError, match="CAM needs layer 'features.3' to feed global average pooling"):
        CAM(net, "features.3")(x)
    assert CAM(TinyGapNet().eval().to(torch.bfloat16))(x.bfloat16()).maps.shape == (2, 32, 32)
