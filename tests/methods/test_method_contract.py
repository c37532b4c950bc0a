"""The contract every registered method keeps: bad input refused in one line, the model given
back exactly as it was, results on the model's device with the documented shapes, ``.to()``
keeping every field, and ``explain_many`` over any mix of methods."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import TinyGapNet, assert_same_state, snapshot
from visionlens import METHODS, GradCAM, RelevanceCAM, explain_many
from visionlens.methods import SIMILARITY_METHODS
from visionlens.errors import InputError, VisionlensError
from visionlens.methods.sfam import SFAM
from visionlens.methods.similarity import SimilarityExplanation

VIT_METHODS = {"daam", "rollout", "chefer", "legrad", "attnlrp"}


def _vit():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5).eval()


def _model_and_input(name: str):
    torch.manual_seed(0)
    if name in VIT_METHODS:
        return _vit(), torch.randn(2, 3, 32, 32)
    return TinyGapNet().eval(), torch.randn(2, 3, 32, 32)


def _build(name: str, model):
    return METHODS[name](model)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_keeps_the_contract(name):
    model, x = _model_and_input(name)
    next(model.parameters()).requires_grad_(False)  # a frozen parameter must stay frozen
    before = snapshot(model)
    method = _build(name, model)
    result = method(x)
    assert_same_state(before, snapshot(model))
    assert result.maps.shape == (2, 32, 32) and result.maps.device == x.device
    assert torch.isfinite(result.maps).all() and 0 <= float(result.maps.min()) and float(result.maps.max()) <= 1
    assert result.logits.shape == (2, 5) and result.method == name
    moved = result.to("cpu")
    assert type(moved) is type(result) and moved.layer == result.layer and torch.equal(moved.maps, result.maps)
    for bad in (x[0], x.long(), x[:0], torch.full_like(x, float("nan"))):
        with pytest.raises(InputError) as info:
            method(bad)
        assert "\n" not in str(info.value)
    assert_same_state(before, snapshot(model))


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_restores_the_model_after_an_error_inside(name):
    model, x = _model_and_input(name)
    model.train()
    before = snapshot(model)
    method = _build(name, model)
    with pytest.raises((VisionlensError, IndexError, RuntimeError)):
        method(x, torch.tensor([99, 99]))  # a class the model does not have
    assert_same_state(before, snapshot(model))


def test_similarity_explanation_to_keeps_its_own_fields(tiny_net):
    embedder = torch.nn.Sequential(tiny_net.features, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    sfam = SFAM(embedder, "0", "cosine")
    x = torch.randn(2, 3, 32, 32)
    result = sfam(x, torch.randn(2, 16))
    assert isinstance(result, SimilarityExplanation) and result.weights is not None
    moved = result.to("cpu")
    assert isinstance(moved, SimilarityExplanation)
    for field in ("references", "cis", "weights", "coefficients"):
        before, after = getattr(result, field), getattr(moved, field)
        assert (before is None) == (after is None) and (before is None or torch.equal(before, after)), field
    assert moved.metric == result.metric


def test_explain_many_runs_methods_that_need_their_own_pass(tiny_net):
    x = torch.randn(2, 3, 32, 32)
    both = explain_many([GradCAM(tiny_net), RelevanceCAM(tiny_net)], x)
    assert list(both) == ["gradcam", "relevance-cam"]
    alone = RelevanceCAM(tiny_net)(x)
    assert torch.allclose(both["relevance-cam"].maps, alone.maps, atol=1e-5)
    assert torch.allclose(both["gradcam"].maps, GradCAM(tiny_net)(x).maps, atol=1e-5)


def test_every_registered_method_is_a_method_and_is_listed(capsys):
    from visionlens.cli import main
    from visionlens.methods import REGISTRY
    from visionlens.methods.base import Method

    assert all(issubclass(m.cls, Method) for m in REGISTRY)
    assert {m.kind for m in REGISTRY} == {"cam", "flow", "similarity"}
    assert main(["methods"]) == 0
    listed = [line.split()[:3] for line in capsys.readouterr().out.splitlines()[1:]]
    assert listed == [[m.name, m.kind, m.explains] for m in REGISTRY]


def _second_logit(y):
    return y[:, 1]


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("target", [None, _second_logit], ids=["predicted", "callable"])
def test_every_method_works_under_no_grad_and_inside_inference_mode(name, target):
    """A caller in ``torch.no_grad()`` or inside ``torch.inference_mode()`` (tensors made there
    cannot enter a backward pass) gets the same maps as outside them, and its mode back."""
    model, x = _model_and_input(name)
    try:
        expected = _build(name, model)(x, target).maps
    except InputError:  # the method takes class indices only (CAM, LeGrad)
        assert target is not None
        return
    with torch.no_grad():
        quiet = _build(name, model)(x, target)
        assert not torch.is_grad_enabled()
    with torch.inference_mode():
        frozen = x.clone()
        result = _build(name, model)(frozen, target)
        assert torch.is_inference_mode_enabled()
    torch.testing.assert_close(quiet.maps, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(result.maps, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SIMILARITY_METHODS))
def test_every_similarity_method_works_inside_inference_mode(name, tiny_net):
    embedder = torch.nn.Sequential(tiny_net.features, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    options = {"damp": 0.1} if name == "naflow" else {}
    expected = SIMILARITY_METHODS[name](embedder, **options).pair(x[:1], x[1:])
    with torch.inference_mode():
        frozen = x.clone()
        refs = embedder(frozen).flip(0)  # reference embeddings made in inference mode too
        SIMILARITY_METHODS[name](embedder, **options)(frozen, refs)
        result = SIMILARITY_METHODS[name](embedder, **options).pair(frozen[:1], frozen[1:])
    for got, want in ((result.query, expected.query), (result.reference, expected.reference)):
        torch.testing.assert_close(got.maps, want.maps, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_an_input_of_another_dtype_than_the_model_is_one_line_that_says_how_to_convert_it(name):
    model, x = _model_and_input(name)
    before = snapshot(model)
    for wrong in (x.double(), x.half()):  # a float64 array from NumPy; a float16 batch
        with pytest.raises(InputError) as info:
            _build(name, model)(wrong)
        message = str(info.value)
        assert "\n" not in message and f"the input is {wrong.dtype}" in message
        assert "x.to(torch.float32)" in message
    assert_same_state(before, snapshot(model))


@pytest.mark.parametrize("name", sorted(SIMILARITY_METHODS))
def test_a_similarity_input_of_another_dtype_is_one_line(name, tiny_net):
    embedder = torch.nn.Sequential(tiny_net.features, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    options = {"damp": 0.1} if name == "naflow" else {}
    for call in (lambda m: m(x, torch.randn(2, 16)), lambda m: m.pair(x[:1], x[1:])):
        with pytest.raises(InputError, match=r"the input is torch.float64 but the model's weights are torch.float32"):
            call(SIMILARITY_METHODS[name](embedder, **options))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_torchscript_model_is_one_line_that_names_the_eager_module(name):
    model, x = _model_and_input(name)
    traced = torch.jit.trace(model, x)
    with pytest.raises(InputError, match=r"^model is a TorchScript \w+, whose layers cannot be hooked; explain the eager"):
        _build(name, traced)(x)


@pytest.mark.parametrize("name", sorted(set(METHODS) - VIT_METHODS))
def test_an_input_with_other_channels_than_the_model_takes_is_one_line(name):
    model, x = _model_and_input(name)
    before = snapshot(model)
    with pytest.raises(InputError, match=r"^the input has 1 channels but a convolution of the model takes 3; give the "
                                         r"model 3-channel images") as info:
        _build(name, model)(x[:, :1])
    assert "\n" not in str(info.value)
    assert_same_state(before, snapshot(model))


class _WrappedOutput(torch.nn.Module):
    """TinyGapNet returning its logits inside a dict or a tuple (beside non-tensors), as many training codebases do."""

    def __init__(self, kind: str):
        super().__init__()
        self.net, self.kind = TinyGapNet().eval(), kind

    def forward(self, x):
        logits = self.net(x)
        return {"logits": logits} if self.kind == "dict" else (logits, None)  # one tensor: the scores (several: refused)


@pytest.mark.parametrize("kind", ["dict", "tuple"])
@pytest.mark.parametrize("name", sorted(set(METHODS) - VIT_METHODS))
def test_logits_in_a_dict_or_a_tuple_are_explained_as_the_bare_logits(name, kind):
    torch.manual_seed(0)
    wrapped = _WrappedOutput(kind).eval()
    x = torch.randn(2, 3, 32, 32)
    got = METHODS[name](wrapped, "net.features")(x, [1, 3])
    bare = METHODS[name](wrapped.net, "features")(x, [1, 3])
    torch.testing.assert_close(got.maps, bare.maps, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(set(METHODS) - VIT_METHODS))
def test_one_class_per_image_as_a_column_gives_one_map_per_image_and_class_or_one_line(name):
    model, x = _model_and_input(name)
    method = _build(name, model)
    if not method.multi_target:
        with pytest.raises(InputError, match=r"explains one class per image"):
            method(x, [[1], [3]])
        return
    column = method(x, [[1], [3]])
    assert column.maps.shape == (2, 1, 32, 32) and column.targets.shape == (2, 1)
    torch.testing.assert_close(column.maps[:, 0], method(x, [1, 3]).maps, rtol=0, atol=1e-5)


@pytest.mark.parametrize("target", [np.int64(3), np.array(3), torch.tensor(3)], ids=["numpy-int", "0-d-array", "0-d-tensor"])
def test_a_numpy_or_0_d_class_index_is_one_class_for_the_batch(target):
    model, x = _model_and_input("gradcam")
    assert GradCAM(model)(x, target).targets.tolist() == [3, 3]


@pytest.mark.parametrize("target", [np.float64(3.0), torch.tensor(2.7), 2.5, np.bool_(True)])
def test_a_number_that_is_not_a_class_index_is_one_line(target):
    model, x = _model_and_input("gradcam")
    with pytest.raises(InputError, match="target must be a class index"):
        GradCAM(model)(x, target)


def test_explain_many_refuses_two_methods_of_one_name():
    model, x = _model_and_input("gradcam")
    with pytest.raises(InputError, match="explain_many got two methods named 'gradcam'"):
        explain_many([GradCAM(model, "features.0"), GradCAM(model, "features.3")], x)


class _LinearProbe(torch.nn.Module):
    """A linear probe on a frozen backbone that the forward runs under ``torch.no_grad()``."""

    def __init__(self):
        super().__init__()
        self.backbone = TinyGapNet().features
        self.head = torch.nn.Linear(16, 5)

    def forward(self, x):
        with torch.no_grad():
            features = self.backbone(x).mean((2, 3))
        return self.head(features)


@pytest.mark.parametrize("name", ["gradcam", "naflow"])
def test_a_forward_that_cuts_the_gradient_is_one_line_that_says_so(name):
    torch.manual_seed(0)
    with pytest.raises(VisionlensError, match=r"the model's forward cuts the gradient after it, e\.g\. with "
                                              r"torch\.no_grad\(\)") as info:
        METHODS[name](_LinearProbe().eval(), "backbone")(torch.randn(2, 3, 32, 32))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["gradcam", "scorecam", "relevance-cam", "naflow"])
def test_a_compiled_model_is_explained_through_the_module_it_compiled(name):
    """A compiled graph skips hooks added after it was built: a compiled model that had run once was
    refused with "layer ... was not executed" (and Relevance-CAM refused every compiled model).
    Its eager module (same parameters) is explained, by its own layer names or the compiled ones."""
    torch.manual_seed(0)
    model, x = TinyGapNet().eval(), torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, backend="eager")
    with torch.no_grad():
        compiled(x)
    options = {"max_iter": 5} if name == "naflow" else {}
    want = METHODS[name](model, "features", **options)(x, [0, 1])
    for layer in ("features", "_orig_mod.features"):
        got = METHODS[name](compiled, layer, **options)(x, [0, 1])
        assert got.layer == want.layer and torch.equal(got.maps, want.maps)


def test_a_reused_layer_is_warned_about_and_its_last_call_explained_and_ablation_refuses_it():
    """torchvision's BasicBlock calls one ReLU module twice: which call a map is of was silent
    (pytorch-grad-cam reads the first), and Ablation-CAM, which replaces the output of every call,
    failed with a message about the input's channels."""
    import warnings

    from torchvision.models import resnet18

    from visionlens import AblationCAM
    from visionlens.errors import LayerError, VisionlensWarning

    torch.manual_seed(0)
    model = resnet18(num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    for method in (GradCAM, RelevanceCAM):
        with pytest.warns(VisionlensWarning, match=r"'layer1\.0\.relu' runs 2 times .* last call .*'layer1\.0'"):
            reused = method(model, "layer1.0.relu")(x, [1, 3])
        with warnings.catch_warnings():
            warnings.simplefilter("error", VisionlensWarning)  # a module that runs once: no warning
            block = method(model, "layer1.0")(x, [1, 3])
        torch.testing.assert_close(reused.raw, block.raw, rtol=1e-4, atol=1e-6 * float(block.raw.abs().max()))
    with pytest.raises(LayerError, match=r"ablationcam replaces the output of layer 'layer1\.0\.relu', which runs 2 "
                                         r"times .*such as its block 'layer1\.0'"):
        AblationCAM(model, "layer1.0.relu")(x, [1, 3])


@pytest.mark.parametrize("method", ["gradcam", "eigencam", "scorecam", "ablationcam"])
def test_the_cam_family_on_a_fixed_size_vit_refuses_another_size_in_one_line(method):
    """The CAM family passed timm's AssertionError through ("Input height (48) doesn't match model
    (32)"); the attention methods already said what to do."""
    timm = pytest.importorskip("timm")
    from visionlens import METHODS

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=3).eval()
    with pytest.raises(InputError, match=r"expects 32x32 inputs .* got 48x48; resize the images to 32x32"):
        METHODS[method](vit)(torch.randn(1, 3, 48, 48))
    assert METHODS[method](vit)(torch.randn(1, 3, 32, 32)).maps.shape == (1, 32, 32)
