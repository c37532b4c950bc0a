"""ViT adapters: blocks, attention, prefix tokens and patch grids of timm (fused attention, q/k
norms, distilled, registers, non-square), torchvision, Hugging Face and the project's ViTs; the
explicit attention recomputation; rollout and Grad-CAM on ViT tokens."""

import numpy as np
import pytest
import torch
from torch import nn

import visionlens
from visionlens import DAAM, AttentionRollout, GradCAM
from visionlens.core.hooks import preserved_model_state
from visionlens.core.vit import AttentionRecorder, find_vit
from visionlens.errors import InputError, LayerError

from helpers import assert_same_state, snapshot

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

TINY = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)


def _timm(**kw):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(**({"img_size": 32} | TINY | kw)).eval()


def _distilled():
    from timm.models.deit import VisionTransformerDistilled

    torch.manual_seed(0)
    return VisionTransformerDistilled(img_size=32, **TINY).eval()


def _torchvision():
    torch.manual_seed(0)
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                                mlp_dim=64, num_classes=5).eval()


def _hf(head: bool = True):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, num_labels=5)
    return (transformers.ViTForImageClassification(cfg) if head else transformers.ViTModel(cfg)).eval()


def _hf_dinov2(registers: int = 0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    kw = dict(image_size=56, patch_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
              intermediate_size=64, num_labels=5)
    if registers:
        cfg = transformers.Dinov2WithRegistersConfig(**kw, num_register_tokens=registers)
        return transformers.Dinov2WithRegistersForImageClassification(cfg).eval()
    return transformers.Dinov2ForImageClassification(transformers.Dinov2Config(**kw)).eval()


def _timm_dinov2(name: str = "vit_small_patch14_dinov2"):
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, img_size=56, embed_dim=32, depth=2, num_heads=2,
                             num_classes=5).eval()


def _world():
    return visionlens.load_model("world-vit").module


# name -> (builder, input size, prefix tokens, grid)
MODELS = {
    "timm-fused-qknorm": (lambda: _timm(qk_norm=True), (32, 32), 1, (4, 4)),
    "timm-distilled": (_distilled, (32, 32), 2, (4, 4)),
    "timm-registers": (lambda: _timm(reg_tokens=4), (32, 32), 5, (4, 4)),
    "timm-non-square": (lambda: _timm(img_size=(32, 48)), (32, 48), 1, (4, 6)),
    "torchvision": (_torchvision, (32, 32), 1, (4, 4)),
    "huggingface": (_hf, (32, 32), 1, (4, 4)),
    "world-vit": (_world, (64, 64), 1, (8, 8)),
    "hf-dinov2": (_hf_dinov2, (56, 56), 1, (4, 4)),
    "hf-dinov2-registers": (lambda: _hf_dinov2(registers=4), (56, 56), 5, (4, 4)),
    "timm-dinov2": (_timm_dinov2, (56, 56), 1, (4, 4)),
    "timm-dinov2-registers": (lambda: _timm_dinov2("vit_small_patch14_reg4_dinov2"), (56, 56), 5, (4, 4)),
}


def _proj_input_reference(model, adapter, x):
    """The [class] row of each block's projection input from a plain forward pass of the model
    (its own kernels: fused SDPA for timm), or, for nn.MultiheadAttention (whose out_proj is not
    called as a module), the block's attention output at [class]."""
    refs, handles = [None] * len(adapter.blocks), []
    for blk in adapter.blocks:
        a = blk.attn
        if blk.kind == "mha":
            handles.append(a.register_forward_hook(lambda m, i, o, b=blk.index: refs.__setitem__(b, o[0][:, 0])))
        else:
            proj = a.proj if blk.kind == "qkv" else a.o_proj
            handles.append(proj.register_forward_pre_hook(lambda m, i, b=blk.index: refs.__setitem__(b, i[0][:, 0])))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return refs


@pytest.mark.parametrize("name", list(MODELS))
def test_decomposition_sums_to_the_class_row_of_the_projection_input(name):
    build, size, _, _ = MODELS[name]
    model = build()
    adapter = find_vit(model)
    x = torch.randn(2, 3, *size)
    refs = _proj_input_reference(model, adapter, x)
    with preserved_model_state(model), AttentionRecorder(adapter) as rec, torch.no_grad():
        model(x)
    for blk, record, ref in zip(adapter.blocks, rec.complete(), refs):
        total = record.features.sum(1)  # sum over all source tokens j
        torch.testing.assert_close(total, record.u[:, 0], rtol=0, atol=1e-5)
        if blk.kind == "mha":
            total = adapter.project(blk, None, total)
        torch.testing.assert_close(total, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_prefix_tokens_and_grid_are_inferred_and_maps_have_the_grid_shape(name):
    build, size, prefix, grid = MODELS[name]
    model = build()
    adapter = find_vit(model)
    x = torch.randn(2, 3, *size)
    assert adapter.grid(size) == grid
    assert adapter.prefix_tokens(prefix + grid[0] * grid[1], grid) == prefix
    with torch.no_grad():
        logits = visionlens.core.vit.model_output(model(x))
    daam = DAAM(model)(x)
    assert daam.flow.shape == (2, len(adapter.blocks), *size) and daam.raw.shape == (2, *grid)
    torch.testing.assert_close(daam.logits, logits, rtol=1e-4, atol=1e-5)  # the recomputed forward is the model's
    roll = AttentionRollout(model)(x)
    assert roll.flow.shape == (2, len(adapter.blocks), *size) and roll.raw.shape == (2, *grid)
    cam = GradCAM(model, adapter.blocks[-1].norm1)(x)
    assert cam.raw.shape == (2, *grid) and cam.maps.shape == (2, *size)


def test_vit_methods_restore_the_model_also_after_an_error():
    model = _timm(qk_norm=True)
    x = torch.randn(2, 3, 32, 32)
    before = snapshot(model)
    for method in (DAAM(model), AttentionRollout(model), GradCAM(model, "blocks.1.norm1")):
        method(x)
        with pytest.raises(InputError):
            method(x, target=99)
    assert_same_state(before, snapshot(model))


def test_rollout_is_the_product_of_residual_attention_and_batched():
    model = _distilled()
    adapter = find_vit(model)
    x = torch.randn(3, 3, 32, 32)
    with preserved_model_state(model), AttentionRecorder(adapter) as rec, torch.no_grad():
        model(x)
    exp = AttentionRollout(model)(x)
    for i in range(3):  # per image, the textbook loop
        r = torch.eye(18)
        for rec_b in rec.complete():
            a = 0.5 * rec_b.attn[i].mean(0) + 0.5 * torch.eye(18)
            r = (a / a.sum(-1, keepdim=True)) @ r
        torch.testing.assert_close(exp.raw[i], r[0, 2:].reshape(4, 4), rtol=1e-5, atol=1e-6)
    single = AttentionRollout(model)(x[1:2])
    torch.testing.assert_close(single.flow[0], exp.flow[1], rtol=1e-5, atol=1e-5)


def test_vit_gradcam_matches_pytorch_grad_cam_with_a_reshape_transform():
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = _timm(reg_tokens=4, img_size=(32, 48))
    x = torch.randn(2, 3, 32, 48)

    def reshape(t):
        return t[:, 5:].reshape(t.shape[0], 4, 6, t.shape[2]).permute(0, 3, 1, 2)

    ours = GradCAM(model, "blocks[-1].norm1")(x, [1, 3]).maps.numpy()
    with pgc.GradCAM(model=model, target_layers=[model.blocks[-1].norm1], reshape_transform=reshape) as ref_cam:
        ref = ref_cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in (1, 3)])
    for a, b in zip(ours, ref):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.999


def test_bad_models_and_inputs_give_one_line_errors():
    with pytest.raises(LayerError, match="not a recognised Vision Transformer"):
        DAAM(torchvision.models.resnet18())
    with pytest.raises(LayerError, match=r"\[class\] token"):
        DAAM(_timm(class_token=False, global_pool="avg"))
    with pytest.raises(InputError, match="expects 32x32 inputs"):
        DAAM(_distilled())(torch.randn(1, 3, 40, 40))
    with pytest.raises(InputError, match="expects 64x64"):
        AttentionRollout(_world())(torch.randn(1, 3, 32, 32))
    with pytest.raises(LayerError, match="every block"):
        DAAM(_world(), layer="blocks.0.norm1")
    with pytest.raises(LayerError, match="not a recognised ViT"):
        GradCAM(nn.Sequential(nn.Conv2d(3, 4, 4, 4), nn.Flatten(2), nn.Linear(16, 5)), "2")(torch.randn(1, 3, 16, 16))
    for line in ("expects 32x32",):
        try:
            DAAM(_distilled())(torch.randn(1, 3, 40, 40))
        except InputError as err:
            assert line in str(err) and "\n" not in str(err)


def test_dinov2_blocks_are_found_by_their_norm1_and_any_input_size_fits():
    model = _hf_dinov2()
    adapter = find_vit(model)
    assert [b.norm1 for b in adapter.blocks] == [f"dinov2.encoder.layer.{i}.norm1" for i in range(2)]
    assert adapter.input_size is None and adapter.has_class_token  # position embeddings are interpolated
    x = torch.randn(1, 3, 70, 42)
    assert DAAM(model)(x).raw.shape == (1, 5, 3)
    assert GradCAM(model)(x).raw.shape == (1, 5, 3)


def test_swin_is_refused_as_a_vit_in_one_line_naming_its_gradcam_layer():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2],
                                  window_size=4, num_labels=5)
    for model in (transformers.SwinForImageClassification(cfg), transformers.SwinModel(cfg),
                  timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=32, embed_dim=16,
                                    depths=(1, 1), num_heads=(1, 2), window_size=4, num_classes=5)):
        with pytest.raises(LayerError) as err:
            find_vit(model)
        line = str(err.value)
        assert line.startswith("Swin has no [class] token") and "use gradcam on layer '" in line and "\n" not in line
