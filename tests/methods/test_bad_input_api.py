"""Bad input through the Python API: one-line errors, and the model comes back unchanged."""

import gc
import re
import warnings

import pytest
import torch

import visionlens
from visionlens import CAM, GradCAM
from visionlens.errors import InputError, LayerError, VisionlensError

from helpers import assert_same_state, snapshot


@pytest.mark.parametrize(
    "make_x, target, error, message",
    [
        (lambda: torch.full((2, 3, 32, 32), float("nan")), None, InputError, "NaN or infinite"),
        (lambda: torch.randn(3, 32, 32), None, InputError, "add a batch dimension"),
        (lambda: torch.randn(0, 3, 32, 32), None, InputError, "batch is empty"),
        (lambda: torch.zeros(2, 3, 32, 32, dtype=torch.uint8), None, InputError, "float tensor"),
        (lambda: torch.randn(3, 3, 32, 32), [0, 1], InputError, "got 2 targets for a batch of 3"),
        (lambda: torch.randn(2, 3, 32, 32), [0, 1, 2], InputError, "got 3 targets for a batch of 2"),
        (lambda: torch.randn(2, 3, 32, 32), 7, InputError, "out of range for a model with 5 classes"),
        (lambda: torch.randn(2, 3, 32, 32), -1, InputError, "out of range"),
        (lambda: torch.randn(2, 3, 32, 32), [0.5, 1.0], InputError, "1-D list of integers"),
        (lambda: torch.randn(2, 3, 32, 32), "cat", InputError, "class index"),
        (lambda: torch.randn(2, 3, 32, 32), lambda out: out.sum(), InputError, "one score per sample"),
    ],
)
def test_bad_inputs_and_targets(tiny_net, make_x, target, error, message):
    before = snapshot(tiny_net)
    with pytest.raises(error) as info:
        GradCAM(tiny_net)(make_x(), target)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert_same_state(before, snapshot(tiny_net))


def test_nan_in_one_image_names_its_position(tiny_net):
    x = torch.randn(3, 3, 32, 32)
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match=r"batch positions \[1\]"):
        CAM(tiny_net)(x)


@pytest.mark.parametrize(
    "layer, message",
    [
        ("features.99", "unknown layer 'features.99'"),
        ("featurs", "close names: features"),
        ("fc", "not a spatial (B, C, H, W) map"),
        ("pool", None),  # 1x1 spatial output is allowed for Grad-CAM
    ],
)
def test_layer_errors(tiny_net, layer, message):
    before = snapshot(tiny_net)
    if message is None:
        assert GradCAM(tiny_net, layer)(torch.randn(1, 3, 32, 32)).raw.shape == (1, 1, 1)
        return
    with pytest.raises(LayerError) as info:
        GradCAM(tiny_net, layer)(torch.randn(1, 3, 32, 32))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert_same_state(before, snapshot(tiny_net))


def test_foreign_module_is_rejected(tiny_net):
    with pytest.raises(LayerError, match="not part of the model"):
        GradCAM(tiny_net, torch.nn.Conv2d(3, 3, 1))


def test_cam_refuses_layers_that_do_not_feed_gap_fc(tiny_net):
    with pytest.raises(LayerError, match="global average pooling and a final linear classifier"):
        CAM(tiny_net, "features.3")(torch.randn(2, 3, 32, 32))
    with pytest.raises(InputError, match="callable target"):
        CAM(tiny_net)(torch.randn(2, 3, 32, 32), lambda out: out[:, 0])


def test_unknown_method_and_model():
    with pytest.raises(InputError, match="unknown method 'gradcam\\+\\+\\+' \\(did you mean 'gradcam\\+\\+'\\?\\); "
                                         "choose from: cam, gradcam"):
        visionlens.explain(torch.randn(1, 3, 32, 32), visionlens.load_model(torch.nn.Conv2d(3, 3, 1)), "gradcam+++")
    with pytest.raises(VisionlensError, match="unknown model"):
        visionlens.load_model("vgg99")


@pytest.mark.parametrize("typed, meant", [("ScoreCAM", "scorecam"), ("relevance_cam", "relevance-cam"),
                                          ("Grad-CAM++", "gradcam++"), ("GradCAMPlusPlus", "gradcam++"),
                                          ("AttentionRollout", "rollout")])
def test_unknown_method_names_the_method_meant(typed, meant):
    """Another spelling of a method's name, or its class's name (as pytorch-grad-cam users write it),
    gets that method as a suggestion; a name like none gets none."""
    model = visionlens.load_model(torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(InputError, match=f"unknown method '{re.escape(typed)}' \\(did you mean '{re.escape(meant)}'\\?\\)"):
        visionlens.explain(torch.randn(1, 3, 32, 32), model, typed)
    with pytest.raises(InputError) as err:
        visionlens.explain(torch.randn(1, 3, 32, 32), model, "xyz")
    assert "did you mean" not in str(err.value)


def test_arguments_in_the_wrong_order_are_named_without_a_tensor_dump():
    """A model given where the images go, or a tensor where the model goes, gets one short line
    (not the repr of a 150,000-value tensor)."""
    model = visionlens.load_model(torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(InputError, match="images first and the model second"):
        visionlens.explain(model, torch.randn(1, 3, 32, 32))
    with pytest.raises(InputError, match=r"got Tensor of shape \(1, 3, 224, 224\)$"):
        visionlens.explain(torch.randn(1, 3, 32, 32), torch.randn(1, 3, 224, 224))


def test_model_restored_after_success(tiny_net):
    tiny_net.train()
    tiny_net.features[1].eval()
    tiny_net.features[0].weight.requires_grad_(False)
    tiny_net.fc.weight.grad = torch.ones_like(tiny_net.fc.weight)
    user_hook = tiny_net.fc.register_forward_hook(lambda *a: None)
    before = snapshot(tiny_net)
    for method in (CAM, GradCAM):
        method(tiny_net)(torch.randn(2, 3, 32, 32))
        assert_same_state(before, snapshot(tiny_net))
    assert len(tiny_net.fc._forward_hooks) == 1
    user_hook.remove()


def test_model_restored_after_exception_inside_the_computation(tiny_net):
    tiny_net.train()
    before = snapshot(tiny_net)

    def exploding_target(out):
        raise RuntimeError("boom inside the target")

    with pytest.raises(RuntimeError, match="boom"):
        GradCAM(tiny_net)(torch.randn(2, 3, 32, 32), exploding_target)
    assert_same_state(before, snapshot(tiny_net))
    assert torch.is_grad_enabled()

    class Exploding(torch.nn.Module):
        def forward(self, x):
            raise ValueError("boom inside the forward")

    tiny_net.features.append(Exploding())
    with pytest.raises(ValueError, match="boom inside the forward"):
        GradCAM(tiny_net, "features.2")(torch.randn(2, 3, 32, 32))
    tiny_net.features = tiny_net.features[:-1]
    assert_same_state(before, snapshot(tiny_net))


def test_zoo_model_restored(mobilenet, imagenet_photos):
    before = snapshot(mobilenet.module)
    visionlens.explain(imagenet_photos[:2], mobilenet, "gradcam")
    visionlens.explain(imagenet_photos[:2], mobilenet, "cam")
    assert_same_state(before, snapshot(mobilenet.module))


def _count_tensors():
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # gc also yields deprecated torch aliases
        return sum(1 for o in gc.get_objects() if torch.is_tensor(o))


def test_repeated_calls_do_not_leak_hooks_or_tensors(tiny_net):
    x = torch.randn(2, 3, 32, 32)
    methods = [CAM(tiny_net), GradCAM(tiny_net), GradCAM(tiny_net, "features.2")]
    for m in methods:  # warm-up (layer discovery caches its name)
        m(x)
    hooks_before = snapshot(tiny_net)["hooks"]
    tensors_before = _count_tensors()
    for _ in range(100):
        for m in methods:
            exp = m(x)
        del exp
    assert snapshot(tiny_net)["hooks"] == hooks_before
    assert _count_tensors() <= tensors_before


class _FeaturesAndLogits(torch.nn.Module):
    """A research model's ``(embedding, logits)`` output."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        features = self.net.pool(self.net.features(x)).flatten(1)
        return features, self.net.fc(features)


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "ablationcam", "relevance-cam"])
def test_an_output_of_several_tensors_is_refused_not_read_as_its_first(tiny_net, method):
    """`(features, logits)` used to be explained as if the 16 features were 16 class scores."""
    model = _FeaturesAndLogits(tiny_net).eval()
    x = torch.randn(2, 3, 32, 32)
    before = snapshot(model)
    with pytest.raises(InputError, match=r"returns a tuple of 2 tensors \(\(2, 16\), \(2, 5\)\).*ambiguous") as info:
        visionlens.METHODS[method](model)(x)
    assert "\n" not in str(info.value)
    assert_same_state(before, snapshot(model))


def test_a_callable_target_picks_the_scores_from_an_output_of_several_tensors(tiny_net):
    model = _FeaturesAndLogits(tiny_net).eval()
    x = torch.randn(2, 3, 32, 32)
    picked = GradCAM(model, "net.features")(x, lambda out: out[1][:, 3])
    plain = GradCAM(tiny_net, "features")(x, 3)
    torch.testing.assert_close(picked.maps, plain.maps)


@pytest.mark.parametrize("method", ["cam", "gradcam", "scorecam", "ablationcam", "relevance-cam", "naflow"])
def test_a_model_that_computes_nan_is_one_line_not_a_flat_map_or_a_structural_error(tiny_net, method):
    """One NaN weight: CAM and NAFlow blamed the model's structure, Ablation-CAM raised PyTorch's
    "atol must be greater than or equal to zero", the others returned all-zero maps."""
    import copy

    model = copy.deepcopy(tiny_net)
    with torch.no_grad():
        model.features[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="contains NaN or infinite values for every image of a finite input") as info:
        visionlens.METHODS[method](model)(torch.randn(2, 3, 32, 32))
    assert "\n" not in str(info.value)
    assert not model.training and not any(m._forward_hooks for m in model.modules())


def test_gradcam_plus_plus_on_a_float16_model_matches_float32(tiny_net):
    """In float16 the squared and cubed gradients (about 1e-4 here) underflowed to zero: all-zero maps."""
    import copy

    from visionlens import GradCAMPlusPlus

    model = copy.deepcopy(tiny_net)
    with torch.no_grad():
        model.fc.weight.mul_(1e-1)  # gradients of about 1e-5: their squares are below float16's smallest number
    x = torch.randn(2, 3, 32, 32)
    full = GradCAMPlusPlus(model)(x, [1, 2]).maps
    half_model = copy.deepcopy(model).half()
    half = GradCAMPlusPlus(half_model)(x.half(), [1, 2]).maps
    assert float(half.amax()) == 1.0  # not flat
    assert float((half - full).abs().max()) < 0.05


def test_a_channel_mismatch_hints_at_grayscale_only_for_a_grayscale_model(tiny_net):
    with pytest.raises(InputError, match="takes 3; give the model 3-channel images$"):
        GradCAM(tiny_net)(torch.randn(1, 1, 32, 32))
    gray = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with pytest.raises(InputError, match="convert the images to 'L'"):
        GradCAM(gray, "1")(torch.randn(1, 3, 32, 32))


def test_natural_mistakes_of_a_pytorch_grad_cam_user_are_one_line_naming_the_fix(tiny_net):
    """A list of target layers, a channels-last batch, a PIL image and a uint8 batch: each one line
    that says what to give instead."""
    from PIL import Image

    x = torch.randn(2, 3, 32, 32)
    cases = [
        (lambda: GradCAM(tiny_net, [tiny_net.features[-1]]), LayerError, "one layer per method, got a list of 1"),
        (lambda: GradCAM(tiny_net)(x.permute(0, 2, 3, 1).contiguous()), InputError, "x.permute(0, 3, 1, 2)"),
        (lambda: GradCAM(tiny_net)(Image.new("RGB", (32, 32))), InputError, "model.preprocess(image)[None]"),
        (lambda: GradCAM(tiny_net)(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)), InputError, "x.float() / 255"),
    ]
    for make, error, message in cases:
        with pytest.raises(error) as info:
            make()
        assert message in str(info.value) and "\n" not in str(info.value)


def test_layer_shapes_lists_the_names_a_layer_takes_and_the_error_names_it(tiny_net):
    before = snapshot(tiny_net)
    shapes = dict(visionlens.layer_shapes(tiny_net, torch.randn(2, 3, 32, 32)))
    assert shapes["features.5"] == (2, 16, 16, 16) and shapes["fc"] == (2, 5)
    assert_same_state(before, snapshot(tiny_net))
    with pytest.raises(LayerError, match=r"visionlens\.layer_shapes\(model, x\)"):
        GradCAM(tiny_net, "featurs.5")
