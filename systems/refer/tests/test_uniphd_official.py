"""UniPHD at the paper's sizes: Swin-T and a RoBERTa-style encoder through the model specs, and the key
map that loads a checkpoint of the released code (names and shapes written out here from its modules)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from helpers import one_error_line
from visionlens.cli import main
from visionlens.errors import InputError

pytest.importorskip("timm")
pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

D, HEADS, FFN, LEVELS, POINTS, LAYERS, KPTS = 256, 8, 2048, 4, 4, 6, 17
SWIN_DEPTHS, SWIN_HEADS, SWIN_DIMS = (2, 2, 6, 2), (3, 6, 12, 24), (96, 192, 384, 768)
WORDS = ["<pad>", "<unk>", "<s>", "</s>", "the", "person", "in", "a", "red", "shirt", "on", "left"]


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    """A tiny random RoBERTa (RobertaModel, as the official TextEncoder loads) and tokenizer, saved locally."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaModel

    folder = tmp_path_factory.mktemp("roberta")
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>").save_pretrained(folder)
    torch.manual_seed(0)
    RobertaModel(RobertaConfig(vocab_size=len(WORDS), hidden_size=48, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=96, max_position_embeddings=40, pad_token_id=0)).save_pretrained(folder)
    return folder


def linear(prefix, n_out, n_in):
    return {prefix + "weight": (n_out, n_in), prefix + "bias": (n_out,)}


def norm(prefix, n):
    return {prefix + "weight": (n,), prefix + "bias": (n,)}


def mha(prefix, d=D):
    return {prefix + "in_proj_weight": (3 * d, d), prefix + "in_proj_bias": (3 * d,), **linear(prefix + "out_proj.", d, d)}


def mlp(prefix, din, hidden, dout, layers):
    dims = [din] + [hidden] * (layers - 1) + [dout]
    shapes = {}
    for k, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        shapes.update(linear(f"{prefix}layers.{k}.", b, a))
    return shapes


def msdeform(prefix):
    return {**linear(prefix + "sampling_offsets.", HEADS * LEVELS * POINTS * 2, D),
            **linear(prefix + "attention_weights.", HEADS * LEVELS * POINTS, D),
            **linear(prefix + "value_proj.", D, D), **linear(prefix + "output_proj.", D, D)}


def swin_shapes():
    """Swin-T as the detection Swin names it (patch merging at the end of stages 0-2, norm0..norm3)."""
    shapes = {"backbone.0.patch_embed.proj.weight": (96, 3, 4, 4), "backbone.0.patch_embed.proj.bias": (96,),
              **norm("backbone.0.patch_embed.norm.", 96)}
    for i, (depth, heads, c) in enumerate(zip(SWIN_DEPTHS, SWIN_HEADS, SWIN_DIMS)):
        for j in range(depth):
            p = f"backbone.0.layers.{i}.blocks.{j}."
            shapes.update({**norm(p + "norm1.", c), p + "attn.relative_position_bias_table": (169, heads),
                           p + "attn.relative_position_index": (49, 49), **linear(p + "attn.qkv.", 3 * c, c),
                           **linear(p + "attn.proj.", c, c), **norm(p + "norm2.", c),
                           **linear(p + "mlp.fc1.", 4 * c, c), **linear(p + "mlp.fc2.", c, 4 * c)})
        if i < 3:
            shapes.update({f"backbone.0.layers.{i}.downsample.reduction.weight": (2 * c, 4 * c),
                           **norm(f"backbone.0.layers.{i}.downsample.norm.", 4 * c)})
        shapes.update(norm(f"backbone.0.norm{i}.", c))
    return shapes


def official_shapes(text_state: dict) -> dict:
    """Every key of the released UniPHD (config/uniphd.py sizes) and its shape, from its module definitions."""
    params = (D + 2) * 16 + 16 + 16 * 16 + 16
    shapes = {**swin_shapes(), **{f"text_encoder.text_backbone.{k}": tuple(v.shape) for k, v in text_state.items()}}
    for name, din in (("text_proj", 48), ("sentence_proj", 48), ("prompt_proj", 384), ("glob_prompt_proj", D)):
        shapes.update({**linear(f"{name}.fc.", D, din), **norm(f"{name}.layer_norm.", D)})
    shapes.update({**mha("fusion_module.multihead_attn."), **mha("fusion_module.multihead_attn2.")})
    for i, cin in enumerate((192, 384, 768)):
        shapes.update({f"input_proj.{i}.0.weight": (D, cin, 1, 1), f"input_proj.{i}.0.bias": (D,), **norm(f"input_proj.{i}.1.", D)})
    shapes.update({"input_proj.3.0.weight": (D, 768, 3, 3), "input_proj.3.0.bias": (D,), **norm("input_proj.3.1.", D)})
    t = "transformer."
    shapes.update({t + "level_embed": (LEVELS, D), t + "keypoint_embedding.weight": (KPTS, D),
                   **linear(t + "enc_output.", D, D), **norm(t + "enc_output_norm.", D),
                   **linear(t + "enc_out_class_embed.", 2, D), **mlp(t + "enc_pose_embed.", D, 2 * D, 2 * KPTS, 4),
                   **mlp(t + "decoder.half_pose_ref_point_head.", D, D, D, 2)})
    for i in range(LAYERS):
        e = f"{t}encoder.layers.{i}."
        shapes.update({**msdeform(e + "self_attn."), **norm(e + "norm1.", D), **linear(e + "linear1.", FFN, D),
                       **linear(e + "linear2.", D, FFN), **norm(e + "norm2.", D)})
        g = f"{t}decoder.layers.{i}."
        shapes.update({**mha(g + "within_attn."), g + "adjacent_matrix": (HEADS, KPTS + 1, KPTS + 1),
                       **norm(g + "within_norm.", D), **mha(g + "across_attn."), **norm(g + "across_norm.", D),
                       **msdeform(g + "cross_attn."), **norm(g + "norm1.", D), **linear(g + "linear1.", FFN, D),
                       **linear(g + "linear2.", D, FFN), **norm(g + "norm2.", D), **linear(g + "linear1_.", FFN, D),
                       **linear(g + "linear2_.", D, FFN), **norm(g + "norm2_.", D)})
        heads = {**linear(f"class_embed.{i}.", 2, D), **mlp(f"bbox_embed.{i}.", D, D, 4, 3),
                 **mlp(f"pose_embed.{i}.", D, D, 2, 3)}
        shapes.update({**heads, **{t + "decoder." + k: v for k, v in heads.items()}, **linear(f"pose_visi_embed.{i}.", 1, D)})
    shapes.update(mlp("controller.", D, D, params, 3))
    for scale, cin in (("1div8", 192), ("1div4", 96)):
        shapes.update({f"mask_refine.conv1_{scale}.weight": (16, 16 + cin, 3, 3), f"mask_refine.conv1_{scale}.bias": (16,),
                       f"mask_refine.conv2_{scale}.weight": (16, 16, 3, 3), f"mask_refine.conv2_{scale}.bias": (16,)})
    return shapes


def official_state(roberta_dir, extra: dict | None = None) -> dict:
    """Random values with the official names and shapes; the head aliases hold the same tensors."""
    from transformers import RobertaModel

    text_state = RobertaModel.from_pretrained(roberta_dir).state_dict()
    generator = torch.Generator().manual_seed(1)
    state = {}
    for key, shape in official_shapes(text_state).items():
        if key.endswith("relative_position_index"):
            state[key] = torch.randint(0, 169, shape, generator=generator)
        elif key.startswith("text_encoder.") and not text_state[key[len("text_encoder.text_backbone."):]].is_floating_point():
            state[key] = text_state[key[len("text_encoder.text_backbone."):]].clone()
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.02
    for key in list(state):
        if key.startswith("transformer.decoder.") and key.split(".")[2] in ("class_embed", "bbox_embed", "pose_embed"):
            state[key] = state[key[len("transformer.decoder."):]]
    return {**state, **(extra or {})}


@pytest.fixture(scope="module")
def paper_model(roberta_dir):
    from visionlens_refer.uniphd.config import UniPHDConfig
    from visionlens_refer.uniphd.model import UniPHD

    torch.manual_seed(0)
    return UniPHD(UniPHDConfig.paper(f"hf:{roberta_dir}", image_size=224)).eval()


def test_every_official_tensor_lands_where_the_key_map_says(paper_model, roberta_dir):
    from visionlens_refer.uniphd.official import load_official, our_name

    state = official_state(roberta_dir, extra={"transformer.tgt_embed": torch.zeros(20, D)})
    report = load_official(paper_model, {"model": state, "epoch": torch.tensor(19)})
    ours = paper_model.state_dict()
    assert report.unmapped == ["transformer.tgt_embed"]
    assert "unmapped official keys (1): transformer.tgt_embed" in report.line() and "\n" not in report.line()
    assert len(report.aliases) == (2 + 6 + 6) * LAYERS                 # class 2 + bbox 6 + pose 6 keys per layer
    assert all(k.endswith(("relative_position_index", "position_ids")) for k in report.recomputed)
    assert report.kept_at_init == []                                   # every tensor of ours came from the checkpoint
    for key, target in report.loaded.items():
        expected = state[key][1:2] if key.split(".")[-2] in ("enc_out_class_embed",) or key.startswith("class_embed.") else state[key]
        assert torch.equal(ours[target], expected), key
        assert our_name(key) == target
    assert report.loaded["backbone.0.layers.1.downsample.reduction.weight"] == "backbone.body.layers.2.downsample.reduction.weight"
    assert report.loaded["transformer.decoder.layers.0.linear1_.weight"] == "decoder.0.ffn2.linear1.weight"
    assert report.loaded["backbone.0.norm3.weight"] == "backbone.out_norms.3.weight"


def test_paper_model_runs_swin_and_roberta_on_each_prompt(paper_model):
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        text = paper_model(images, {"kind": "text", "texts": ["the person in a red shirt", "the person on the left"]})
        point = paper_model(images, {"kind": "point", "points": torch.tensor([[[50.0, 60.0]], [[120.0, 100.0]]])})
    for out in (text, point):
        last = out["layers"][-1]
        assert last["keypoints"].shape == (2, 20, KPTS, 2) and len(out["layers"]) == LAYERS
        assert out["masks"].shape == (2, 20, 224, 224) and torch.isfinite(out["masks"]).all()
    assert paper_model.backbone.num_channels == list(SWIN_DIMS)
    assert type(paper_model.backbone.body).__name__ == "SwinTransformer"


def test_a_wrong_shape_is_one_line(roberta_dir):
    from visionlens_refer.uniphd.config import UniPHDConfig
    from visionlens_refer.uniphd.model import UniPHD
    from visionlens_refer.uniphd.official import load_official

    small = UniPHD(UniPHDConfig.paper(f"hf:{roberta_dir}", image_size=64, d_model=64, ffn=128, encoder_layers=1,
                                      decoder_layers=1, heads=4))
    state = {"transformer.level_embed": torch.zeros(LEVELS, D)}
    with pytest.raises(InputError, match=r"transformer\.level_embed has shape \(4, 256\).*UniPHDConfig\.paper"):
        load_official(small, state)


def test_cli_convert_writes_weights_that_eval_loads(tmp_path, roberta_dir, capsys):
    pytest.importorskip("pycocotools")
    state = official_state(roberta_dir, extra={"some_new_head.weight": torch.zeros(3)})
    checkpoint = tmp_path / "uniphd_official.pth"
    torch.save({"model": state, "epoch": 19, "args": argparse.Namespace(lr=1e-4, backbone="swin_T_224_1k")}, checkpoint)
    out = tmp_path / "converted.pt"
    args = ["pose", "convert", "--checkpoint", str(checkpoint), "--text-encoder", f"hf:{roberta_dir}", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "unmapped official keys (1): some_new_head.weight" in printed.splitlines()[0]
    assert main(args) == 2
    one_error_line(capsys.readouterr().err, "already exists")
    data = tmp_path / "synth"
    assert main(["pose", "synth", "--n", "2", "--size", "64", "--out", str(data)]) == 0
    capsys.readouterr()
    assert main(["pose", "eval", "--weights", str(out), "--data", str(data / "annotations.json"), "--images",
                 str(data / "images"), "--prompt", "point", "--quiet", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows[0]["samples"] == 2 and 0 <= rows[0]["mIoU"] <= 1


def test_paper_preset_needs_a_text_encoder_and_a_size_multiple_of_32(tmp_path, capsys, roberta_dir):
    assert main(["pose", "train", "--preset", "paper", "--synthetic", "2", "--size", "64", "--out",
                 str(tmp_path / "a.pt"), "--quiet"]) == 2
    one_error_line(capsys.readouterr().err, "--text-encoder hf:DIR")
    assert main(["pose", "train", "--preset", "paper", "--text-encoder", f"hf:{roberta_dir}", "--synthetic", "2",
                 "--size", "68", "--out", str(tmp_path / "b.pt"), "--quiet"]) == 2
    one_error_line(capsys.readouterr().err, "multiple of 32")
