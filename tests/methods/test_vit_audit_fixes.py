"""ViT audit fixes: distilled Hugging Face DeiT loaded with its heads, timm and Hugging Face BEiT
attention biases recomputed exactly, timm's dynamic image sizes (padded or whole patches),
headless models (the [class] embedding, no fake classes), parameter checks and channels-last input."""

import math

import pytest
import torch
import torch.nn.functional as F

from visionlens import DAAM, AttentionRollout, GradCAM
from visionlens.core.result import normalize_maps
from visionlens.core.vit import AttentionRecorder, find_vit, is_headless, model_output
from visionlens.errors import InputError
from visionlens.methods import AttnLRP, CheferRollout, LeGrad

from helpers import assert_same_state, snapshot

timm = pytest.importorskip("timm")
ALL = (DAAM, AttentionRollout, CheferRollout, LeGrad, AttnLRP)


def _hf_cfg(**kw):
    return dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32,
                patch_size=8, num_labels=5, **kw)


def _timm_vit(**kw):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    kw.setdefault("num_classes", 5)
    return VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, **kw).eval()


# -- 1: distilled DeiT ----------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::visionlens.errors.FlatMapWarning")
def test_hf_distilled_deit_loads_with_both_heads_and_is_not_headless(tmp_path):
    transformers = pytest.importorskip("transformers")
    from visionlens.models.hub import hf_model

    torch.manual_seed(0)
    model = transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(**_hf_cfg())).eval()
    model.save_pretrained(tmp_path)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    loaded, _ = hf_model(str(tmp_path))
    assert type(loaded).__name__ == "DeiTForImageClassificationWithTeacher"
    x = torch.randn(2, 3, 32, 32)
    out = loaded(x)
    assert out.logits.shape == (2, 5)
    assert torch.allclose(out.logits, (out.cls_logits + out.distillation_logits) / 2)
    assert not is_headless(loaded, find_vit(loaded))
    for method in ALL:
        e = method(loaded)(x)
        assert e.targets.tolist() == out.logits.argmax(1).tolist(), method.name


# -- 2 and 5: BEiT attention biases ------------------------------------------------------------------
def _timm_beit():
    from timm.models.beit import Beit

    torch.manual_seed(0)
    model = Beit(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=5, use_abs_pos_emb=False,
                 use_rel_pos_bias=True, global_pool="token").eval()
    attn = model.blocks[0].attn
    with torch.no_grad():  # small, nonzero biases (they start at zero)
        attn.q_bias.normal_(std=0.5)
        attn.v_bias.normal_(std=0.5)
        attn.relative_position_bias_table.normal_(std=0.5)
    return model


def test_timm_beit_q_v_and_relative_position_biases_are_recomputed_exactly():
    model = _timm_beit()
    attn = model.blocks[0].attn
    x = torch.randn(2, 3, 32, 32)
    attn.fused_attn = False
    eager = {}
    handle = attn.attn_drop.register_forward_hook(lambda m, i, o: eager.setdefault("a", o.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    attn.fused_attn = True
    with AttentionRecorder(find_vit(model)) as recorder, torch.no_grad():
        model(x)
    assert (recorder.complete()[0].attn - eager["a"]).abs().max() < 1e-5


def test_hf_beit_relative_position_bias_is_part_of_the_attention():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BeitConfig(**_hf_cfg(use_relative_position_bias=True, use_mean_pooling=False))
    cfg._attn_implementation = "eager"
    model = transformers.BeitForImageClassification(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_(std=0.5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        eager = model(x, output_attentions=True).attentions[0]
    with AttentionRecorder(find_vit(model)) as recorder, torch.no_grad():
        model(x)
    assert (recorder.complete()[0].attn - eager).abs().max() < 1e-5
    for method in ALL:
        assert method(model)(x).maps.shape == (2, 32, 32), method.name


# -- 3 and 4: timm dynamic image sizes ---------------------------------------------------------------
def test_timm_dynamic_img_pad_grid_is_padded_and_cropped_to_the_image():
    model = _timm_vit(dynamic_img_size=True, dynamic_img_pad=True)
    x = torch.randn(1, 3, 40, 56)  # 3x4 patches of 16, the last row and column partly padding
    before = snapshot(model)
    for method in ALL:
        assert method(model)(x).maps.shape == (1, 40, 56), method.name
    assert GradCAM(model)(x).maps.shape == (1, 40, 56)
    e = AttentionRollout(model)(x)
    assert e.raw.shape == (1, 3, 4)
    padded = F.interpolate(e.raw[:, None], size=(48, 64), mode="bilinear", align_corners=False)[:, 0, :40, :56]
    assert torch.allclose(e.maps, normalize_maps(padded, (40, 56), relu=False), atol=1e-6)
    assert_same_state(before, snapshot(model))


def test_timm_dynamic_img_size_without_padding_needs_whole_patches():
    model = _timm_vit(dynamic_img_size=True)
    x = torch.randn(1, 3, 40, 56)
    for method in (AttentionRollout, GradCAM):
        with pytest.raises(InputError, match=r"whole 16x16 patches, got 40x56; .* e\.g\. 32x64"):
            method(model)(x)
    assert AttentionRollout(model)(torch.randn(1, 3, 32, 64)).maps.shape == (1, 32, 64)


# -- 6 and 7: headless models --------------------------------------------------------------------------
def test_hf_vit_without_pooler_explains_its_class_embedding():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.ViTModel(transformers.ViTConfig(**_hf_cfg()), add_pooling_layer=False).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
    assert torch.equal(model_output(out), out.last_hidden_state[:, 0])
    e = AttentionRollout(model)(x)
    assert e.targets is None and e.maps.shape == (2, 32, 32)
    seen = []
    score = lambda q: seen.append(q.shape) or q.sum(1)  # noqa: E731
    CheferRollout(model)(x, score)
    AttnLRP(model)(x, score)
    assert seen == [(2, 32), (2, 32)]


def test_rollout_on_a_model_without_head_records_no_class():
    model = _timm_vit(num_classes=0)
    e = AttentionRollout(model)(torch.randn(2, 3, 32, 32))
    assert e.targets is None
    with pytest.raises(InputError, match="no classes; rollout is class-agnostic"):
        AttentionRollout(model)(torch.randn(2, 3, 32, 32), 3)


def test_summary_of_an_embedding_model_names_no_class():
    from types import SimpleNamespace

    from visionlens.pipeline import _prediction_record

    e = AttentionRollout(_timm_vit(num_classes=0))(torch.randn(1, 3, 32, 32))
    record = _prediction_record(SimpleNamespace(class_name=lambda i: f"class {i}"), {"rollout": e}, 0)
    assert record["predicted"] is None and record["probability"] is None and record["target"] is None


# -- 8 and 9: parameters and channels-last ------------------------------------------------------------
@pytest.mark.parametrize("method, kw, match", [
    (AttentionRollout, {"residual": "half"}, "residual must be a finite number"),
    (AttentionRollout, {"residual": float("nan")}, "residual must be a finite number"),
    (AttentionRollout, {"residual": 1.5}, "residual must be at most 1"),
    (AttentionRollout, {"residual": -1}, "residual must be at least 0"),
    (DAAM, {"alpha": "five"}, "alpha must be a finite number"),
    (DAAM, {"alpha": 0}, "alpha must be greater than 0"),
])
def test_bad_parameters_are_one_line(method, kw, match):
    with pytest.raises(InputError, match=match):
        method(_timm_vit(), **kw)


def test_parameters_given_as_numeric_strings_work():
    x = torch.randn(1, 3, 32, 32)
    assert AttentionRollout(_timm_vit(), residual="0.5")(x).maps.shape == (1, 32, 32)
    assert DAAM(_timm_vit(), alpha="5")(x).maps.shape == (1, 32, 32)


def test_channels_last_input_is_named_before_the_size():
    model = _timm_vit()
    x = torch.randn(1, 3, 32, 32).permute(0, 2, 3, 1)
    for method in (AttentionRollout, GradCAM):
        with pytest.raises(InputError, match=r"channels-last .* x\.permute\(0, 3, 1, 2\)"):
            method(model)(x)
    assert math.isfinite(float(AttentionRollout(model)(x.permute(0, 3, 1, 2)).maps.sum()))


def test_explain_files_of_an_embedding_model_writes_a_page_without_a_class(tmp_path, imagenet_photos):
    """End to end: a headless ViT explained with rollout writes its summary (no class, no
    probability) and its page ("none (an embedding)", no "probability nan")."""
    import json

    import visionlens
    from visionlens.pipeline import explain_files

    model = visionlens.load_model(_timm_vit(num_classes=0), preprocess=visionlens.Preprocess(resize=32, crop=32))
    summary = explain_files(imagenet_photos[:1], model, ["rollout"], out_dir=tmp_path / "o", progress=False)
    row = json.loads((tmp_path / "o" / "summary.json").read_text())["images"][0]
    assert summary["images"][0]["predicted"] is None and row["probability"] is None and row["target"] is None
    page = (tmp_path / "o" / "index.html").read_text()
    assert "none (an embedding)" in page and "nan" not in page
