"""The rest of the CAM family against pytorch-grad-cam (test-only oracle) on MobileNetV2 with the
packaged weights, and the documented formula choices on hand-checkable cases."""

import numpy as np
import pytest
import torch

from visionlens import AblationCAM, EigenCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from visionlens.data import load_image
from helpers import assert_same_state, snapshot

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection  # noqa: E402


@pytest.fixture(scope="module")
def photos_x(mobilenet, imagenet_photos):
    x = torch.stack([mobilenet.preprocess(load_image(p)) for p in imagenet_photos[:4]])
    with torch.no_grad():
        classes = mobilenet.module(x).argmax(1).tolist()
    return x, classes


def _agree(ours, reference):
    for a, b in zip(ours, reference):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.999
        assert np.abs(a - b).max() <= 1e-3


@pytest.mark.parametrize(
    "ours, ref_name, layer, n",
    [
        (GradCAMPlusPlus, "GradCAMPlusPlus", "features", 4),
        (XGradCAM, "XGradCAM", "features", 4),
        (LayerCAM, "LayerCAM", "features.13", 4),
        (HiResCAM, "HiResCAM", "features", 4),
        (ScoreCAM, "ScoreCAM", "features.3", 2),  # 24 channels keeps the test short
        (AblationCAM, "AblationCAM", "features.0", 1),  # a ReLU6 layer: both ablate to zero there
    ],
)
def test_matches_pytorch_grad_cam(mobilenet, photos_x, ours, ref_name, layer, n):
    x, classes = photos_x[0][:n], photos_x[1][:n]
    mine = ours(mobilenet.module, layer)(x, classes).maps.numpy()
    module = dict(mobilenet.module.named_modules())[layer]
    with getattr(pgc, ref_name)(model=mobilenet.module, target_layers=[module]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
    _agree(mine, ref)


def test_eigencam_is_the_first_principal_component_with_a_fixed_sign(mobilenet, photos_x):
    x = photos_x[0]
    exp = EigenCAM(mobilenet.module, "features")(x)
    with torch.no_grad():
        acts = mobilenet.module.features(x).numpy()
    ref = get_2d_projection(acts)  # pytorch-grad-cam's projection, arbitrary sign
    for ours, theirs, a in zip(exp.raw.numpy(), ref, acts):
        assert abs(np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]) >= 0.999
        assert np.corrcoef(ours.ravel(), a.sum(0).ravel())[0, 1] > 0  # the documented sign choice


def test_ablation_cam_by_hand_and_the_stand_in_input(tiny_net):
    x = torch.randn(2, 3, 32, 32)
    exp = AblationCAM(tiny_net, "features", batch_size=5)(x, [1, 3])
    with torch.no_grad():
        acts = tiny_net.features(x)
        base = tiny_net(x).gather(1, torch.tensor([[1], [3]]))[:, 0]
        weights = torch.empty(2, acts.shape[1])
        for k in range(acts.shape[1]):
            ablated = acts.clone()
            ablated[:, k] = 0
            out = tiny_net.fc(tiny_net.pool(ablated).flatten(1)).gather(1, torch.tensor([[1], [3]]))[:, 0]
            weights[:, k] = (base - out) / base
    torch.testing.assert_close(exp.raw, torch.einsum("bk,bkhw->bhw", weights, acts), rtol=1e-4, atol=1e-5)


def test_ablation_cam_on_vit_tokens_by_hand():
    """On a ViT token layer, channel k is zeroed in every token (class token included) and the map
    is over the patch grid; checked against ablating each channel on the full input by a hook."""
    import visionlens
    from visionlens.data.world import World, WorldConfig

    vit = visionlens.load_model("world-vit").module
    x = (World(WorldConfig(size=64)).batch("test", [0, 1, 2])["image"] - 0.5) / 0.5
    before = snapshot(vit)
    exp = AblationCAM(vit, batch_size=48)(x)
    layer = dict(vit.named_modules())[exp.layer]
    with torch.no_grad():
        captured = []
        handle = layer.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
        logits = vit(x)
        handle.remove()
        target = logits.argmax(1, keepdim=True)
        base = logits.gather(1, target)[:, 0]
        acts = captured[0]  # (B, 1 + h*w, C)
        weights = torch.empty(3, acts.shape[2])
        for k in range(acts.shape[2]):
            def zero_channel(m, i, o, k=k):
                o = o.clone()
                o[:, :, k] = 0
                return o
            handle = layer.register_forward_hook(zero_channel)
            weights[:, k] = (base - vit(x).gather(1, target)[:, 0]) / base
            handle.remove()
        grid = acts[:, 1:].reshape(3, 8, 8, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(exp.raw, torch.einsum("bk,bkhw->bhw", weights, grid), rtol=1e-4, atol=1e-5)
    assert torch.equal(exp.targets, target[:, 0])
    assert_same_state(before, snapshot(vit))


def test_ablation_cam_on_vit_tokens_matches_pytorch_grad_cam():
    """pytorch-grad-cam's ViT ablation layer ablates a channel in every token too; it sets it to a
    very negative value where the layer's minimum is not zero, so the oracle's layer is given the
    paper's zero (our documented choice) and everything else is pytorch-grad-cam's."""
    import visionlens
    from pytorch_grad_cam.ablation_layer import AblationLayerVit
    from visionlens.data.world import World, WorldConfig

    class ZeroAblationVit(AblationLayerVit):
        def __call__(self, x):
            out = self.activations.transpose(1, 2)
            for i in range(out.size(0)):
                out[i, self.indices[i], :] = 0
            return out.transpose(2, 1)

    vit = visionlens.load_model("world-vit").module
    x = (World(WorldConfig(size=64)).batch("test", [7, 10])["image"] - 0.5) / 0.5  # maps partly positive
    with torch.no_grad():
        classes = vit(x).argmax(1).tolist()
    mine = AblationCAM(vit)(x, classes).maps.numpy()
    assert all(0.1 < (m > 0).mean() < 0.99 and m.std() > 0.1 for m in mine)  # not all zero after the ReLU
    grid = lambda t: t[:, 1:].reshape(t.shape[0], 8, 8, t.shape[2]).permute(0, 3, 1, 2)  # noqa: E731
    with pgc.AblationCAM(model=vit, target_layers=[vit.blocks[-1].norm1], reshape_transform=grid,
                         ablation_layer=ZeroAblationVit()) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
    _agree(mine, ref)


def test_score_cam_on_the_inference_copy_equals_the_model(mobilenet, photos_x):
    x, classes = photos_x[0][:2], photos_x[1][:2]
    before = snapshot(mobilenet.module)
    fast = ScoreCAM(mobilenet.module, "features.3")(x, classes)
    exact = ScoreCAM(mobilenet.module, "features.3", inference_copy=False)(x, classes)
    torch.testing.assert_close(fast.maps, exact.maps, rtol=0, atol=1e-4)
    assert_same_state(before, snapshot(mobilenet.module))


def test_ablation_cam_one_image_stand_in_equals_the_full_input(mobilenet, photos_x):
    x, classes = photos_x[0][:2], photos_x[1][:2]
    before = snapshot(mobilenet.module)
    cam = AblationCAM(mobilenet.module, "features")
    with torch.no_grad():
        small, expand = cam._feed(mobilenet.module.features, x, mobilenet.module.features(x), mobilenet.module(x))
    assert small.shape == (1, 3, 8, 8) and not expand  # one 8 px image drives the layers before the ablation
    # the maps equal those from the full input (at a 24-channel layer, to keep the full path short),
    # both on the model itself (the inference copy would run its traced tail instead)
    fast = AblationCAM(mobilenet.module, "features.3", inference_copy=False)
    with torch.no_grad():
        assert fast._feed(mobilenet.module.features[3], x, mobilenet.module.features[:4](x), mobilenet.module(x)) is not None
    full = AblationCAM(mobilenet.module, "features.3", inference_copy=False)
    full._feed = lambda *args: None  # every ablated copy runs on its own full input
    torch.testing.assert_close(fast(x, classes).maps, full(x, classes).maps, rtol=0, atol=1e-5)
    traced = AblationCAM(mobilenet.module, "features.3")  # the default: the copy's traced tail
    torch.testing.assert_close(traced(x, classes).maps, full(x, classes).maps, rtol=0, atol=1e-4)
    assert_same_state(before, snapshot(mobilenet.module))


def test_score_cam_memory_bound_does_not_change_the_result(tiny_net):
    x = torch.randn(3, 3, 32, 32)
    a = ScoreCAM(tiny_net, "features.2", batch_size=1)(x)
    b = ScoreCAM(tiny_net, "features.2", batch_size=1000)(x)
    torch.testing.assert_close(a.maps, b.maps)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        ScoreCAM(tiny_net, batch_size=0)


def test_layercam_and_hirescam_formulas_by_hand(tiny_net):
    x = torch.randn(2, 3, 32, 32)
    a = tiny_net.features(x).detach().requires_grad_(True)
    score = tiny_net.fc(tiny_net.pool(a).flatten(1))[:, 2].sum()
    (g,) = torch.autograd.grad(score, a)
    torch.testing.assert_close(LayerCAM(tiny_net)(x, 2).raw, (g.clamp_min(0) * a).sum(1).detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(HiResCAM(tiny_net)(x, 2).raw, (g * a).sum(1).detach(), rtol=1e-4, atol=1e-6)


def test_k_targets_in_one_pass_equal_k_single_calls(mobilenet, photos_x):
    from visionlens import CAM, GradCAM

    x = photos_x[0][:2]
    multi = torch.tensor([[1, 281, 999], [5, 6, 7]])
    for method in (GradCAM, GradCAMPlusPlus, XGradCAM, LayerCAM, HiResCAM, CAM):
        many = method(mobilenet.module, "features")(x, multi)
        assert many.maps.shape == (2, 3, 224, 224) and many.raw.shape == (2, 3, 7, 7)
        assert torch.equal(many.targets, multi) and many.scores.shape == (2, 3)
        for j in range(3):
            single = method(mobilenet.module, "features")(x, multi[:, j])
            torch.testing.assert_close(many.maps[:, j], single.maps, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="one class per image"):
        ScoreCAM(mobilenet.module, "features.3")(x, multi)


def test_many_methods_in_one_pass_equal_separate_calls(tiny_net):
    from visionlens import CAM, GradCAM
    from visionlens.methods.base import explain_many

    x = torch.randn(3, 3, 32, 32)
    methods = [m(tiny_net, "features") for m in (GradCAM, GradCAMPlusPlus, XGradCAM, LayerCAM, HiResCAM, EigenCAM, CAM,
                                                   ScoreCAM, AblationCAM)]
    together = explain_many(methods, x, [0, 1, 2])
    assert list(together) == [m.name for m in methods]
    for m in methods:
        alone = m(x, [0, 1, 2])
        torch.testing.assert_close(together[m.name].maps, alone.maps, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="needs one layer"):
        explain_many([GradCAM(tiny_net, "features"), LayerCAM(tiny_net, "features.2")], x)
