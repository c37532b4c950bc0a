"""Transformer coverage (issue 27, item 3): Score-CAM and Ablation-CAM on Hugging Face models
(outputs unwrapped, the stand-in fallback), DINOv2 and Swin (Hugging Face and timm) token layers
for the CAM family and their DAAM/rollout support or refusal, and the flat-map warning. Every
model is a tiny random-init one built here (no downloads)."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from visionlens import DAAM, AttentionRollout, GradCAM
from visionlens.core.vit import find_swin, find_vit
from visionlens.errors import FlatMapWarning, LayerError
from visionlens.methods.ablationcam import AblationCAM
from visionlens.methods.base import explain_many
from visionlens.methods.eigencam import EigenCAM
from visionlens.methods.gradcam_plusplus import GradCAMPlusPlus
from visionlens.methods.layercam import LayerCAM
from visionlens.methods.scorecam import ScoreCAM

from helpers import TinyGapNet, assert_same_state, snapshot

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

DINO = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=56,
            patch_size=14, num_labels=5)


def _seeded(build):
    torch.manual_seed(0)
    return build().eval()


def hf_vit():
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                 image_size=32, patch_size=8, num_labels=5)
    return _seeded(lambda: transformers.ViTForImageClassification(cfg))


def hf_resnet():
    cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                                    num_labels=5)
    return _seeded(lambda: transformers.ResNetForImageClassification(cfg))


def hf_dino(registers: int = 0):
    if registers:
        cfg = transformers.Dinov2WithRegistersConfig(**DINO, num_register_tokens=registers)
        return _seeded(lambda: transformers.Dinov2WithRegistersForImageClassification(cfg))
    return _seeded(lambda: transformers.Dinov2ForImageClassification(transformers.Dinov2Config(**DINO)))


def timm_dino(registers: bool = False):
    name = "vit_small_patch14_reg4_dinov2" if registers else "vit_small_patch14_dinov2"
    return _seeded(lambda: timm.create_model(name, pretrained=False, img_size=56, embed_dim=32, depth=2, num_heads=2,
                                             num_classes=5))


def hf_swin():
    cfg = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                                  window_size=4, num_labels=5)
    return _seeded(lambda: transformers.SwinForImageClassification(cfg))


def timm_swin():
    return _seeded(lambda: timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32,
                                             embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4,
                                             num_classes=5))


HF_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
              patch_size=8, num_labels=5)


def hf_deit():
    return _seeded(lambda: transformers.DeiTForImageClassification(transformers.DeiTConfig(**HF_VIT)))


def hf_beit(**options):
    return _seeded(lambda: transformers.BeitForImageClassification(transformers.BeitConfig(**HF_VIT, **options)))


def torchvision_swin():
    from torchvision.models.swin_transformer import SwinTransformer

    return _seeded(lambda: SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                                           window_size=[4, 4], num_classes=5))


class Logits(nn.Module):
    """A Hugging Face classifier behind a plain ``forward(x) -> logits`` (pytorch-grad-cam's
    usual wrapper): the same modules, so a layer of the one is a layer of the other."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).logits


class PlainViT(nn.Module):
    """The same ViT as a Hugging Face ``ViTForImageClassification``, returning a plain tensor:
    ``classifier(vit(x).last_hidden_state[:, 0])`` (``.vit`` keeps the token layers recognisable)."""

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.vit, self.classifier = hf.vit, hf.classifier

    def forward(self, x):
        return self.classifier(self.vit(x).last_hidden_state[:, 0])


def _check_maps(maps: torch.Tensor, shape: tuple) -> None:
    assert tuple(maps.shape) == shape
    assert bool(torch.isfinite(maps).all())
    flat = maps.flatten(-2)
    assert bool((flat.amax(-1) - flat.amin(-1) > 0.5).all()), "every map must vary (min-max spans [0, 1])"


def _close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-4) -> None:
    torch.testing.assert_close(a, b, rtol=1e-4, atol=atol)


# -- 1. Score-CAM and Ablation-CAM on Hugging Face outputs -----------------------------------------

@pytest.mark.parametrize("method", [ScoreCAM, AblationCAM])
def test_perturbation_methods_on_hf_vit_equal_the_plain_tensor_model(method):
    model = hf_vit()
    plain = PlainViT(model)
    x = torch.randn(2, 3, 32, 32)
    layer = model.get_submodule(find_vit(model).blocks[-1].norm1)
    ours = method(model, layer)(x, [1, 3])
    ref = method(plain, layer)(x, [1, 3])
    _check_maps(ours.maps, (2, 32, 32))
    _close(ours.raw, ref.raw)
    _close(ours.maps, ref.maps)
    _close(ours.logits, model(x).logits)


@pytest.mark.parametrize("method", [ScoreCAM, AblationCAM])
def test_perturbation_methods_on_hf_resnet_equal_the_plain_tensor_model(method):
    model = hf_resnet()
    plain = Logits(model)
    x = torch.randn(3, 3, 32, 32)
    layer = model.resnet.encoder.stages[-1]
    ours = method(model, layer)(x)
    ref = method(plain, layer)(x)
    _check_maps(ours.maps, (3, 32, 32))
    _close(ours.raw, ref.raw)
    _close(ours.maps, ref.maps)


def test_ablation_cam_falls_back_to_the_full_input_when_the_small_one_fails():
    """HF ViT refuses an 8 px stand-in with a ValueError (not a RuntimeError): the full input is
    used, and the weights equal the textbook ablation of every channel on the full model."""
    model = hf_vit()
    x = torch.randn(1, 3, 32, 32)
    layer = model.get_submodule(find_vit(model).blocks[-1].norm1)
    ours = AblationCAM(model, layer)(x, 2)
    with torch.no_grad():
        base = float(model(x).logits[0, 2])
        drops = []
        for k in range(32):
            handle = layer.register_forward_hook(lambda m, i, o, k=k: o.index_fill(2, torch.tensor([k]), 0.0))
            drops.append((base - float(model(x).logits[0, 2])) / base)
            handle.remove()
        tokens = layer(_layer_input(model, layer, x))
    grid = tokens[0, 1:].reshape(4, 4, 32).permute(2, 0, 1)
    raw = torch.einsum("k,khw->hw", torch.tensor(drops), grid)
    _close(ours.raw[0], raw, atol=1e-4 * (1 + float(raw.abs().max())))


def _layer_input(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


def test_hf_swin_is_left_as_it_was_after_ablation_cams_small_stand_in():
    """A small stand-in shrinks HF Swin's attention window for good; Ablation-CAM restores it."""
    model = hf_swin()
    x = torch.randn(2, 3, 32, 32)
    before = snapshot(model)
    windows = [b.window_size for stage in model.swin.encoder.layers for b in stage.blocks]
    with torch.no_grad():
        logits = model(x).logits
    _check_maps(AblationCAM(model)(x).maps, (2, 32, 32))
    assert [b.window_size for stage in model.swin.encoder.layers for b in stage.blocks] == windows
    assert_same_state(before, snapshot(model))
    with torch.no_grad():
        _close(model(x).logits, logits)


# -- 2. DINOv2 and Swin, Hugging Face and timm -----------------------------------------------------

# name -> (builder, input side, prefix tokens, patch grid of the default layer, has [class])
TRANSFORMERS = {
    "hf-dinov2": (hf_dino, 56, 1, (4, 4)),
    "hf-dinov2-registers": (lambda: hf_dino(registers=4), 56, 5, (4, 4)),
    "timm-dinov2": (timm_dino, 56, 1, (4, 4)),
    "timm-dinov2-registers": (lambda: timm_dino(registers=True), 56, 5, (4, 4)),
    "hf-swin": (hf_swin, 32, 0, (4, 4)),
    "timm-swin": (timm_swin, 32, 0, (4, 4)),
    "hf-deit": (hf_deit, 32, 2, (4, 4)),  # [class] and distillation tokens
    "hf-beit": (hf_beit, 32, 1, (4, 4)),
    "torchvision-swin": (torchvision_swin, 32, 0, (4, 4)),
}
CAMS = (GradCAM, GradCAMPlusPlus, LayerCAM, EigenCAM, ScoreCAM, AblationCAM)


@pytest.mark.parametrize("name", list(TRANSFORMERS))
def test_cam_family_on_the_default_token_layer(name):
    build, side, _, grid = TRANSFORMERS[name]
    model = build()
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        logits = getattr(model(x), "logits", None)
    for method in CAMS:
        result = method(model)(x, [0, 4])
        assert result.raw.shape == (2, *grid), method.name
        _check_maps(result.maps, (2, side, side))
        if logits is not None:
            _close(result.logits, logits)


def _pgc_reshape(prefix: int, grid: tuple, channels_last: bool = False):
    def reshape(t):
        if channels_last:
            return t.permute(0, 3, 1, 2)
        return t[:, prefix:].reshape(t.shape[0], grid[0], grid[1], t.shape[2]).permute(0, 3, 1, 2)
    return reshape


@pytest.mark.parametrize("name", list(TRANSFORMERS))
def test_gradcam_on_token_layers_matches_pytorch_grad_cam(name):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    build, side, prefix, grid = TRANSFORMERS[name]
    model = build()
    swin = find_swin(model)
    layer = swin.norms[-1] if swin else find_vit(model).blocks[-1].norm1
    module = model.get_submodule(layer)
    x = torch.randn(2, 3, side, side)
    ours = GradCAM(model, layer)(x, [1, 3]).maps.numpy()
    wrapped = Logits(model) if name.startswith("hf") else model
    reshape = _pgc_reshape(prefix, grid, channels_last=name in ("timm-swin", "torchvision-swin"))
    with pgc.GradCAM(model=wrapped, target_layers=[module], reshape_transform=reshape) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in (1, 3)])
    for a, b in zip(ours, ref):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.999
        assert np.abs(a - b).max() <= 1e-4  # measured <= 7e-7


@pytest.mark.parametrize("name", [n for n in TRANSFORMERS if "dinov2" in n])
def test_dinov2_adapters_give_daam_and_rollout(name):
    build, side, prefix, grid = TRANSFORMERS[name]
    model = build()
    adapter = find_vit(model)
    assert adapter.has_class_token and adapter.grid((side, side)) == grid
    assert adapter.prefix_tokens(prefix + grid[0] * grid[1], grid) == prefix
    x = torch.randn(2, 3, side, side)
    before = snapshot(model)
    for method in (DAAM, AttentionRollout):
        result = method(model)(x)
        assert result.flow.shape == (2, 2, side, side) and result.raw.shape == (2, *grid)
        _check_maps(result.maps, (2, side, side))
    assert_same_state(before, snapshot(model))


@pytest.mark.parametrize("name", ["hf-swin", "timm-swin"])
def test_swin_refuses_daam_and_rollout_naming_the_reason_and_the_layer(name):
    model = TRANSFORMERS[name][0]()
    layer = find_swin(model).norms[-1]
    for method in (DAAM, AttentionRollout):
        with pytest.raises(LayerError) as err:
            method(model)
        line = str(err.value)
        assert line.startswith("Swin has no [class] token: ") and "\n" not in line
        assert f"use gradcam on layer '{layer}'" in line
    GradCAM(model, layer)(torch.randn(1, 3, 32, 32))  # and the layer it names works


def test_swin_token_layers_of_every_stage_and_a_window_layer():
    model = timm_swin()
    x = torch.randn(1, 3, 32, 32)
    for layer, grid in (("layers.0.blocks.0.norm1", (8, 8)), ("layers.0.blocks.0.norm2", (8, 8)),
                        ("layers.1.blocks.0.norm1", (4, 4)), ("norm", (4, 4))):
        assert GradCAM(model, layer)(x).raw.shape == (1, *grid), layer
    with pytest.raises(LayerError, match="attention windows") as err:
        GradCAM(model, "layers.0.blocks.0.attn.qkv")(x)
    assert "\n" not in str(err.value)
    hf = hf_swin()
    assert GradCAM(hf, "swin.encoder.layers.0.blocks.0.layernorm_before")(x).raw.shape == (1, 8, 8)


@pytest.mark.parametrize("name", ["hf-dinov2", "hf-swin", "timm-swin"])
def test_several_classes_per_image_stay_one_forward_and_one_backward(name, monkeypatch):
    build, side, _, _ = TRANSFORMERS[name]
    model = build()
    x = torch.randn(2, 3, side, side)
    calls, backwards, grad = [], [], torch.autograd.grad

    def counted_grad(*args, **kwargs):
        backwards.append(kwargs.get("is_grads_batched", False))
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counted_grad)
    handle = model.register_forward_pre_hook(lambda m, i: calls.append(1))
    try:
        both = GradCAM(model)(x, [[0, 2], [4, 1]])
    finally:
        handle.remove()
    assert len(calls) == 1 and backwards == [True] and both.maps.shape == (2, 2, side, side)
    monkeypatch.undo()
    for j in range(2):
        single = GradCAM(model)(x, [[0, 2][j], [4, 1][j]])
        _close(both.maps[:, j], single.maps, atol=1e-5)


# -- 3. The flat-map warning -----------------------------------------------------------------------

def test_hf_vit_final_layernorm_warns_once_naming_the_layer_and_the_usual_one():
    model = hf_vit()
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = GradCAM(model, "vit.layernorm")(x)
    flat = [w for w in caught if issubclass(w.category, FlatMapWarning)]
    assert len(flat) == 1 and float(result.maps.abs().max()) == 0.0
    line = str(flat[0].message)
    assert "'vit.layernorm'" in line and f"'{find_vit(model).blocks[-1].norm1}'" in line and "\n" not in line
    assert "gradcam 2 of 2" in line


def test_zero_head_model_warns_once_per_call_for_several_methods():
    torch.manual_seed(0)
    model = TinyGapNet().eval()
    nn.init.zeros_(model.fc.weight)
    x = torch.randn(2, 3, 16, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explain_many([GradCAM(model, "features"), LayerCAM(model, "features")], x)
    flat = [str(w.message) for w in caught if issubclass(w.category, FlatMapWarning)]
    assert len(flat) == 1
    assert "'features'" in flat[0] and "gradcam 2 of 2" in flat[0] and "layercam 2 of 2" in flat[0]
    assert "check the model's weights and the target" in flat[0]


def test_normal_maps_give_no_warning():
    model = hf_vit()
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FlatMapWarning)
        GradCAM(model)(x)
        ScoreCAM(model)(x)
        DAAM(model)(x)


def test_a_map_negative_everywhere_says_so():
    """Class 0's head weights are all negative and the features (after a ReLU) non-negative, so its
    Grad-CAM map is negative at every position and all zero after the ReLU: the warning says why
    (not "an all-zero head"); class 1 (positive weights) is fine."""
    torch.manual_seed(0)
    model = TinyGapNet().eval()
    with torch.no_grad():
        model.fc.weight[0] = -1.0
        model.fc.weight[1] = 1.0
    x = torch.randn(3, 3, 16, 16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = GradCAM(model, "features")(x, [[0, 1]] * 3)
    assert bool((result.raw[:, 0].flatten(1).amax(1) <= 0).all())
    assert bool((result.maps[:, 1].flatten(1).amax(1) > 0.5).all())  # class 1: a real map
    flat = [str(w.message) for w in caught if issubclass(w.category, FlatMapWarning)]
    assert len(flat) == 1 and "gradcam 3 of 6" in flat[0] and "negative everywhere" in flat[0]


def test_hf_deit_and_beit_token_layers_are_the_default_not_the_patch_convolution():
    """They were not recognised: the CAM family's default was the patch-embedding convolution."""
    for build in (hf_deit, hf_beit):
        layer = GradCAM(build())(torch.randn(2, 3, 32, 32)).layer
        assert layer.endswith("layers.1.layernorm_before"), layer


def test_a_vit_whose_head_reads_the_patch_mean_refuses_the_class_row_flows():
    """BEiT's classifier (and a timm ViT with global_pool="avg") reads the mean of the patch
    tokens, so the [class] token's attention row explains nothing it predicts."""
    from visionlens import CheferRollout

    avg = _seeded(lambda: timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5, global_pool="avg"))
    for model in (hf_beit(), avg):
        for method in (DAAM, AttentionRollout, CheferRollout):
            with pytest.raises(LayerError, match=r"does not classify from a \[class\] token .* use attnlrp, legrad or "
                                                 r"gradcam"):
                method(model)
    for method in (DAAM, AttentionRollout):  # a BEiT classifying from its [class] token keeps them
        assert method(hf_beit(use_mean_pooling=False))(torch.randn(1, 3, 32, 32)).maps.shape == (1, 32, 32)


def test_torchvision_swin_reads_its_channels_last_tokens_and_its_permuted_map_alike():
    model = torchvision_swin()
    x = torch.randn(2, 3, 32, 32)
    tokens, permuted = GradCAM(model, "norm")(x, [1, 3]), GradCAM(model, "permute")(x, [1, 3])
    assert tokens.raw.shape == (2, 4, 4)  # the last stage's 4x4 grid, not (width, channels)
    torch.testing.assert_close(tokens.raw, permuted.raw, rtol=1e-5, atol=1e-7)
    with pytest.raises(LayerError, match="Swin has no \\[class\\] token"):
        DAAM(model)


@pytest.mark.parametrize("build", [hf_vit, hf_deit, timm_swin, torchvision_swin])
def test_naflow_refuses_transformers_in_one_line(build):
    """Their last spatial layer is the patch embedding: NAFlow used to return a one-layer "flow"."""
    from visionlens import NAFlow

    with pytest.raises(LayerError, match=r"^NAFlow follows the layers of a CNN and \w+ is a (Vision|Swin) Transformer; "
                                         r"use "):
        NAFlow(build())


def test_a_hugging_face_model_that_installs_its_hooks_on_first_use_still_runs_afterwards():
    """SegFormer's decoder reads hidden states that hooks collect; transformers installs them on the
    first forward pass and marks them installed. Removing them with visionlens's own hooks left
    the model failing (IndexError) on its next forward pass."""
    cfg = transformers.SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16],
                                       patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2],
                                       mlp_ratios=[2, 2], decoder_hidden_size=16, num_labels=3)
    segformer = _seeded(lambda: transformers.SegformerForSemanticSegmentation(cfg))
    x = torch.randn(1, 3, 64, 64)
    explained = GradCAM(segformer, "decode_head.linear_fuse")(x, lambda out: out[:, 1].sum((1, 2)))
    assert explained.maps.shape == (1, 64, 64)
    with torch.no_grad():
        assert segformer(x).logits.shape == (1, 3, 16, 16)
    visionlens_hooks = [h for m in segformer.modules() for d in ("_forward_hooks", "_forward_pre_hooks")
                        for h in getattr(m, d).values() if getattr(h, "__module__", "").startswith("visionlens")]
    assert not visionlens_hooks
