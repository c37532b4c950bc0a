"""LGD on real data and real weights (issue 31, item 4): SAM's filter flags, the per-image region
cache (memory and ``--cache DIR``), region features in bounded batches, and the describer that
perceives from pixels. SAM and CLIP are tiny random-initialised models saved to ``tmp_path``."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from helpers import one_error_line, strict_json

from visionlens.cli import main
from visionlens.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")
transformers = pytest.importorskip("transformers")

WORDS = "a photo of the man dog on left right red brown with".split()


@pytest.fixture(autouse=True)
def _no_weights_from_the_environment(monkeypatch):
    for name in ("VISIONLENS_CLIP", "VISIONLENS_SAM"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory) -> str:
    """A random-initialised tiny SAM (64 px input) saved with save_pretrained; its folder."""
    from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

    folder = tmp_path_factory.mktemp("tiny-sam") / "sam"
    vision = SamVisionConfig(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                             image_size=64, patch_size=16, mlp_dim=64, num_pos_feats=8, global_attn_indexes=[1],
                             window_size=2)
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=16, image_embedding_size=4,
                                    mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, mlp_dim=32,
                                   iou_head_hidden_dim=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        SamModel(SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    """A random-initialised tiny CLIP with a word-level tokenizer; its folder."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPConfig, CLIPModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-clip") / "clip"
    vocab = ["<pad>", "<s>", "</s>", "<unk>"] + WORDS
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        cfg = CLIPConfig(text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=32,
                                          eos_token_id=2, bos_token_id=1, pad_token_id=0),
                         vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                            num_attention_heads=2, image_size=32, patch_size=8), projection_dim=16)
        CLIPModel(cfg).save_pretrained(folder)
    return str(folder)


def _photo(path, seed: int, size=(40, 30)) -> str:
    """Two flat rectangles on a noisy background (colour segments find them; SAM gets texture)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rgb = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    rgb[4:20, 4:18] = rng.integers(0, 256, 3)
    rgb[8:26, 20:36] = rng.integers(0, 256, 3)
    Image.fromarray(rgb).save(path, format="PNG")
    return str(path)


# --- SAM's proposal filters ----------------------------------------------------------------------


def test_default_filters_keep_masks_of_a_random_init_sam(tiny_sam):
    """A random-init SAM predicts IoUs near 0 and logits far below the stability offset: the
    defaults keep masks; max_masks bounds them; too strict filters name the flags to lower."""
    from visionlens_refer.lgd.sam import SamProposer

    image = torch.rand(3, 50, 70)
    masks = SamProposer(tiny_sam).propose(image)
    assert masks.dtype == torch.bool and masks.shape[1:] == (50, 70) and 1 <= len(masks) <= 64
    assert (masks.flatten(1).sum(1) >= 1).all()
    assert len(SamProposer(tiny_sam, max_masks=2, nms_thresh=1.0).propose(image)) == 2
    with pytest.raises(InputError, match="--sam-pred-iou 0.99.*--sam-stability.*--sam-min-area.*lower them"):
        SamProposer(tiny_sam, pred_iou_thresh=0.99, points_per_side=2).propose(image)
    with pytest.raises(InputError, match="max_masks"):
        SamProposer(tiny_sam, max_masks=0)


def test_sam_flags_on_the_command_line(tmp_path, tiny_sam, tiny_clip, capsys):
    photo = _photo(tmp_path / "photo.png", 0)
    common = ["refer", photo, "the dog on the left", "--proposer", "sam", "--sam", tiny_sam, "--clip", tiny_clip,
              "--sam-points-per-side", "4", "--quiet"]
    assert main(common + ["--sam-max-masks", "3", "--out", str(tmp_path / "ok")]) == 0
    report = strict_json((tmp_path / "ok" / "scores.json").read_text())
    assert 1 <= report["proposals"] <= 3
    capsys.readouterr()
    assert main(common + ["--sam-pred-iou", "5", "--out", str(tmp_path / "strict")]) == 2
    one_error_line(capsys.readouterr().err, "no mask passed", "--sam-pred-iou 5", "--sam-stability", "--sam-min-area")
    assert not (tmp_path / "strict").exists()
    assert main(common + ["--sam-min-area", "-1", "--out", str(tmp_path / "bad")]) == 2
    one_error_line(capsys.readouterr().err, "--sam-min-area")


# --- region features in batches ------------------------------------------------------------------


class _Spy:
    """Wraps a callable; records ``size(args, kwargs)`` of every call (``args[0]`` is unused)."""

    def __init__(self, fn, size):
        self.fn, self.size, self.sizes = fn, size, []

    def __call__(self, *args, **kwargs):
        self.sizes.append(self.size((None, *args), kwargs))
        return self.fn(*args, **kwargs)


def test_the_region_encoder_never_receives_more_than_one_batch(tiny_clip, tiny_sam):
    from visionlens_refer.lgd.clip_hf import HFClipEncoder
    from visionlens_refer.lgd.pipeline import LGD
    from visionlens_refer.lgd.sam import SamProposer
    from visionlens_refer.lgd.scores import LGDConfig

    sam = SamProposer(tiny_sam, points_per_side=8, points_per_batch=5, nms_thresh=1.0, min_area=1)
    decoder = _Spy(sam.model.forward, lambda args, kw: kw["input_points"].shape[1] if "input_points" in kw else 0)
    sam.model.forward = decoder
    image = torch.rand(3, 40, 48)
    masks = sam.propose(image)
    assert max(decoder.sizes) == 5 and sum(decoder.sizes) == 64  # 8 x 8 prompts, 5 at a time
    assert len(masks) > 7
    enc = HFClipEncoder(tiny_clip)
    spy = _Spy(enc.encode_regions, lambda args, kw: len(args[2]))
    enc.encode_regions = spy
    config = LGDConfig(use_att=False, use_sur=False)
    batched = LGD(enc, None, config, region_batch=3).segment(image, "the red dog", masks)
    assert max(spy.sizes) <= 3 and sum(spy.sizes) == len(masks)
    whole = LGD(enc, None, config, region_batch=10_000).segment(image, "the red dog", masks)
    assert spy.sizes[-1] == len(masks)
    assert np.allclose(batched.total, whole.total, atol=1e-4)  # batching does not change the scores


# --- the per-image cache on a RefCOCO-format set -------------------------------------------------


def _refcoco(root, sentences_per_image=(3, 2)) -> str:
    """A RefCOCO-format set: two 30x40 images, one instance each plus a shared box, and
    several sentences per image, the images interleaved in the refs; returns the image folder."""
    h, w = 30, 40
    images, anns, refs = [], [], []
    for image_id in (1, 2):
        images.append({"id": image_id, "file_name": f"COCO_train2014_{image_id:012d}.jpg", "height": h, "width": w})
        for k, box in enumerate(([4, 4, 18, 20], [20, 8, 36, 26])):
            x0, y0, x1, y1 = box
            anns.append({"id": 10 * image_id + k, "image_id": image_id, "iscrowd": 0, "category_id": 1, "area": 0,
                         "bbox": [x0, y0, x1 - x0, y1 - y0],
                         "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]]})
    sent_id = 0
    for round_ in range(max(sentences_per_image)):
        for image_id, count in zip((1, 2), sentences_per_image):
            if round_ < count:
                text = ("the man on the left", "the red dog", "the brown dog on the right")[round_]
                refs.append({"ref_id": sent_id, "ann_id": 10 * image_id + round_ % 2, "image_id": image_id,
                             "split": "val", "category_id": 1, "sentences": [{"sent": text, "sent_id": sent_id}]})
                sent_id += 1
    (root / "refcoco").mkdir()
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    (root / "refcoco" / "instances.json").write_text(json.dumps({"images": images, "annotations": anns}))
    coco = root / "coco"
    coco.mkdir()
    for image_id in (1, 2):
        _photo(coco / f"COCO_train2014_{image_id:012d}.jpg", image_id)
    return str(coco)


def _counted_models(tiny_sam, tiny_clip, batch_points=64):
    """A SAM proposer and a CLIP encoder whose image sides count their calls."""
    from visionlens_refer.lgd.clip_hf import HFClipEncoder
    from visionlens_refer.lgd.sam import SamProposer

    sam = SamProposer(tiny_sam, points_per_side=4, points_per_batch=batch_points)
    sam.model.get_image_embeddings = sam_spy = _Spy(sam.model.get_image_embeddings, lambda args, kw: 1)
    enc = HFClipEncoder(tiny_clip)
    enc.encode_regions = clip_spy = _Spy(enc.encode_regions, lambda args, kw: len(args[2]))
    return sam, enc, sam_spy, clip_spy


def test_refcoco_computes_each_image_once_in_memory_and_on_disk(tmp_path, tiny_sam, tiny_clip):
    from visionlens_refer.lgd.pipeline import LGD
    from visionlens_refer.lgd.refcoco import ReferDataset
    from visionlens_refer.lgd.refcoco_eval import evaluate_refcoco
    from visionlens_refer.lgd.scores import LGDConfig

    coco = _refcoco(tmp_path)
    dataset = ReferDataset(tmp_path, "refcoco")
    config = LGDConfig(use_att=False, use_sur=False)
    sam, enc, sam_spy, clip_spy = _counted_models(tiny_sam, tiny_clip)
    run = lambda cache, **kw: evaluate_refcoco(dataset, "val", coco, LGD(enc, None, config, region_batch=4), sam,  # noqa: E731
                                               cache_dir=cache, **kw)
    plain = run(None)
    assert plain["summary"]["n"] == 5 and len(sam_spy.sizes) == 2  # five sentences, two images: SAM twice
    assert plain["region_cache"] == {"memory": 3, "disk": 0, "computed": 2}
    assert max(clip_spy.sizes) <= 4  # region features in batches of --region-batch
    assert [r["sent_id"] for r in plain["samples"]] == [0, 1, 2, 3, 4]  # the split's order is kept

    cache = tmp_path / "cache"
    first = run(cache)
    files = sorted(cache.glob("regions-*.pt"))
    assert len(files) == 2 and len(sam_spy.sizes) == 4
    clip_calls = len(clip_spy.sizes)
    again = run(cache)  # a new run: everything from disk, no image encoder call
    assert again["region_cache"] == {"memory": 3, "disk": 2, "computed": 0}
    assert len(sam_spy.sizes) == 4 and len(clip_spy.sizes) == clip_calls
    for a, b in zip(first["samples"], again["samples"]):
        assert a["chosen"] == b["chosen"] and a["iou"] == pytest.approx(b["iou"], abs=1e-6)

    files[0].write_bytes(b"PK\x03\x04 not a torch file")
    notes = []
    healed = run(cache, on_warning=notes.append)
    assert healed["region_cache"] == {"memory": 3, "disk": 1, "computed": 1} and len(sam_spy.sizes) == 5
    assert len(notes) == 1 and "\n" not in notes[0] and "recomputing" in notes[0] and files[0].name in notes[0]
    assert [r["chosen"] for r in healed["samples"]] == [r["chosen"] for r in first["samples"]]


def test_cache_key_follows_the_filters_the_model_and_the_pixels(tmp_path, tiny_sam, tiny_clip):
    from visionlens_refer.lgd.clip_hf import HFClipEncoder
    from visionlens_refer.lgd.regions import RegionCache
    from visionlens_refer.lgd.sam import SamProposer

    enc = HFClipEncoder(tiny_clip)
    image = torch.rand(3, 30, 40)
    for proposer in (SamProposer(tiny_sam, points_per_side=4), SamProposer(tiny_sam, points_per_side=4, min_area=5),
                     SamProposer(tiny_sam, points_per_side=3)):
        RegionCache(proposer, enc, tmp_path).regions(image)
    RegionCache(SamProposer(tiny_sam, points_per_side=4), HFClipEncoder(tiny_clip, masked_blocks=1), tmp_path).regions(image)
    other = image.clone()
    other[0, 0, 0] = 1 - other[0, 0, 0]
    RegionCache(SamProposer(tiny_sam, points_per_side=4), enc, tmp_path).regions(other)
    assert len(list(tmp_path.glob("regions-*.pt"))) == 5
    again = RegionCache(SamProposer(tiny_sam, points_per_side=4), enc, tmp_path)
    again.regions(image)
    assert again.stats == {"memory": 0, "disk": 1, "computed": 0}


def test_cli_cache_folder_reuses_regions_across_runs(tmp_path, tiny_sam, tiny_clip, capsys):
    coco = _refcoco(tmp_path)
    cache = tmp_path / "cache"
    args = ["refer", "--refcoco", str(tmp_path), "--split", "val", "--coco-dir", coco, "--clip", tiny_clip,
            "--proposer", "sam", "--sam", tiny_sam, "--sam-points-per-side", "4", "--cache", str(cache), "--quiet"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    a = strict_json((tmp_path / "a" / "refcoco_eval.json").read_text())
    b = strict_json((tmp_path / "b" / "refcoco_eval.json").read_text())
    assert a["region_cache"]["computed"] == 2 and b["region_cache"] == {"memory": 3, "disk": 2, "computed": 0}
    assert [r["chosen"] for r in a["samples"]] == [r["chosen"] for r in b["samples"]]
    assert len(list(cache.glob("regions-*.pt"))) == 2 and not (cache / "descriptions.jsonl").exists()
    capsys.readouterr()
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("mine")
    assert main(args[:-3] + ["--cache", str(blocker), "--out", str(tmp_path / "c")]) == 2
    one_error_line(capsys.readouterr().err, "--cache")
    assert blocker.read_text() == "mine"


def test_corrupt_cache_file_is_one_warning_line_in_the_cli(tmp_path, tiny_clip, capsys):
    photo = _photo(tmp_path / "photo.png", 3)
    cache = tmp_path / "cache"
    args = ["refer", photo, "the red dog", "--clip", tiny_clip, "--cache", str(cache), "--quiet"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    (file,) = cache.glob("regions-*.pt")
    file.write_bytes(b"\x80 damaged")
    capsys.readouterr()
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: region cache") and "recomputing" in warnings[0]
    a = strict_json((tmp_path / "a" / "scores.json").read_text())
    b = strict_json((tmp_path / "b" / "scores.json").read_text())
    assert a["index"] == b["index"] and np.allclose(a["total"], b["total"], atol=1e-4)


# --- the describer that perceives from pixels ----------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_test_samples():
    from visionlens_refer.lgd.synthetic import benchmark

    return benchmark("test", 40, seed=0)


def test_region_score_describer_names_regions_from_pixels(synthetic_test_samples):
    """Without the scene graph, the toy VLM names most ground-truth regions right, and a region
    whose pixels are painted over is no longer named as before."""
    from visionlens_refer.lgd.perception import RegionScoreDescriber
    from visionlens_refer.lgd.proposals import GTProposer
    from visionlens_refer.lgd.regions import Regions, encode_regions_batched
    from visionlens_refer.lgd.toy_vlm import load_toy_vlm

    enc = load_toy_vlm()
    describer = RegionScoreDescriber(enc)
    right = total = 0
    for s in synthetic_test_samples[:15]:
        masks = GTProposer().propose(s.image, s)
        perceived, _ = describer.perceive(Regions(masks, *encode_regions_batched(enc, s.image, masks, 8)))
        truth = sorted(s.entities, key=lambda e: -int(e.mask.sum()))
        right += sum(p.name == t.name for p, t in zip(perceived, truth))
        total += len(truth)
    assert right / total > 0.8  # measured 0.97 on 60 test scenes
    s = synthetic_test_samples[0]
    masks = GTProposer().propose(s.image, s)
    grey = s.image.clone()
    grey[:, masks[0]] = 0.5
    named = [describer.perceive(Regions(masks, *encode_regions_batched(enc, img, masks, 8)))[0][0].name
             for img in (s.image, grey)]
    assert named[0] != named[1]
    with pytest.raises(InputError, match="proposals"):
        describer.describe(s.image, s.expression, "attribute")


def test_pixel_describer_improves_on_the_expression_alone(synthetic_test_samples):
    """Scored without the scene graph (the samples carry only their masks and pixels), the full
    pipeline with the pixel-perceiving describer beats the expression score alone."""
    from types import SimpleNamespace

    from visionlens_refer.lgd.benchmark import collect, evaluate
    from visionlens_refer.lgd.perception import RegionScoreDescriber
    from visionlens_refer.lgd.pipeline import LGD
    from visionlens_refer.lgd.proposals import GTProposer
    from visionlens_refer.lgd.scores import LGDConfig
    from visionlens_refer.lgd.toy_vlm import load_toy_vlm

    blind = [SimpleNamespace(image=s.image, expression=s.expression, kind=s.kind, image_id=s.image_id, mask=s.mask,
                             entities=None, candidates=np.stack([e.mask for e in s.entities]))
             for s in synthetic_test_samples]
    enc = load_toy_vlm()
    rows = collect(blind, LGD(enc, RegionScoreDescriber(enc)), GTProposer())
    vanilla = evaluate(rows, LGDConfig.ablation("vanilla"))["mIoU"]
    full = evaluate(rows, LGDConfig.ablation("all", alpha=1.0, beta=1.0))["mIoU"]
    assert full > vanilla + 0.15, (vanilla, full)


def test_cli_describer_choice(tmp_path, capsys):
    out = tmp_path / "pix"
    assert main(["refer", "synthetic:test:2", "--out", str(out), "--quiet"]) == 0
    assert main(["refer", "synthetic:test:2", "--describer", "oracle", "--out", str(tmp_path / "oracle"), "--quiet"]) == 0
    for folder in (out, tmp_path / "oracle"):
        assert strict_json((folder / "scores.json").read_text())["descriptions"]["att"].startswith("A photo of")
    capsys.readouterr()
    assert main(["refer", "synthetic:test:2", "--describer-error", "0.5", "--out", str(tmp_path / "x")]) == 2
    one_error_line(capsys.readouterr().err, "--describer oracle")
