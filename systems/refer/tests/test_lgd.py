"""LGD referring segmentation: masks/metrics against pycocotools, the RefCOCO loader on a
generated fixture, score fusion, the describer cache, every real-weights backend on tiny
random-initialised transformers models saved to and loaded from a temporary folder, the
synthetic benchmark (full pipeline beats S_van alone) and the CLI."""

from __future__ import annotations

import http.server
import json
import pickle
import threading

import numpy as np
import pytest
import torch

from visionlens.errors import AssetError, InputError, VisionlensError
from visionlens_refer.masks import mask_iou, polygons_to_mask, rle_decode, rle_encode
from visionlens_refer.lgd.metrics import ReferMetrics
from visionlens_refer.lgd.scores import LGDConfig, fuse, select
from visionlens.cli import main

mu = pytest.importorskip("pycocotools.mask", reason="pycocotools is the mask oracle (pip install pycocotools)")


pytestmark = pytest.mark.usefixtures("one_thread")


def one_error_line(capsys) -> str:
    """The captured stderr, checked to be exactly one ``error:`` line without a traceback."""
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(autouse=True)
def _no_clip_from_the_environment(monkeypatch):
    """Every test sees no $VISIONLENS_CLIP from the environment (globals: the repository's conftest.py)."""
    monkeypatch.delenv("VISIONLENS_CLIP", raising=False)


# --- masks and metrics ------------------------------------------------------------------------


def _coco_rle(m):
    return mu.encode(np.asfortranarray(m.astype(np.uint8)))


def test_rle_round_trip_matches_pycocotools():
    rng = np.random.default_rng(0)
    for _ in range(100):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        m = rng.random((h, w)) < rng.random()
        ref = _coco_rle(m)
        assert rle_encode(m)["counts"] == ref["counts"].decode()
        assert (rle_decode({"size": ref["size"], "counts": ref["counts"].decode()}) == m).all()
        assert (rle_decode(rle_encode(m, compressed=False)) == m).all()


def test_polygons_are_rasterised_like_pycocotools():
    rng = np.random.default_rng(1)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(5, 50, 2))
        polys = []
        for _ in range(int(rng.integers(1, 3))):
            n = int(rng.integers(3, 9))
            polys.append(np.stack([rng.random(n) * (w + 4) - 2, rng.random(n) * (h + 4) - 2], 1).ravel().round(2).tolist())
        ref = mu.decode(mu.merge(mu.frPyObjects(polys, h, w))).astype(bool)
        assert (polygons_to_mask(polys, h, w) == ref).all()


def test_mask_iou_agrees_with_pycocotools():
    rng = np.random.default_rng(2)
    for _ in range(50):
        p, g = rng.random((2, 20, 17)) < rng.random(2)[:, None, None]
        ref = mu.iou([_coco_rle(p)], [_coco_rle(g)], [0])
        ours = mask_iou(p, g)[0]
        if (p | g).any():
            assert ours == pytest.approx(float(ref[0, 0]), abs=1e-12)


def test_oiou_miou_precision_on_hand_made_masks():
    z = np.zeros((4, 4), bool)
    gt1, p1 = z.copy(), z.copy()
    gt1[0, :4] = True  # 4 px
    p1[0, :2] = True  # 2 px inside: I=2, U=4, IoU 0.5
    gt2, p2 = z.copy(), z.copy()
    gt2[3, :2] = True
    p2[2, 3] = True  # disjoint: I=0, U=3
    gt3, p3 = z.copy(), z.copy()
    gt3[1:3, 1:3] = True
    p3[1:3, 1:3] = True
    p3[1, 3] = True  # I=4, U=5, IoU 0.8
    m = ReferMetrics()
    for p, g in ((p1, gt1), (p2, gt2), (p3, gt3), (z, z)):  # last: empty union -> IoU 0
        m.add(p, g)
    s = m.summary()
    assert s["oIoU"] == pytest.approx(6 / 12)
    assert s["mIoU"] == pytest.approx((0.5 + 0 + 0.8 + 0) / 4)
    assert s["Pr@0.5"] == pytest.approx(1 / 4)  # strictly greater than 0.5: only 0.8
    assert s["Pr@0.7"] == pytest.approx(1 / 4) and s["Pr@0.8"] == 0.0
    assert ReferMetrics(empty=1.0).add(z, z) == 1.0
    with pytest.raises(InputError):
        mask_iou(np.zeros((2, 2)), np.zeros((3, 3)))


# --- RefCOCO loader ---------------------------------------------------------------------------


def _refer_fixture(root, rng):
    h, w = 30, 40
    poly = [[5.0, 5.0, 20.0, 6.0, 18.0, 22.0, 6.0, 18.0]]
    rle_mask = np.zeros((h, w), bool)
    rle_mask[10:25, 22:38] = True
    rle = _coco_rle(rle_mask)
    inst = {
        "images": [{"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": h, "width": w},
                   {"id": 2, "file_name": "COCO_train2014_000000000002.jpg", "height": h, "width": w}],
        "annotations": [
            {"id": 10, "image_id": 1, "segmentation": poly, "iscrowd": 0, "category_id": 1, "area": 0, "bbox": [0, 0, 1, 1]},
            {"id": 11, "image_id": 1, "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}, "iscrowd": 0,
             "category_id": 2, "area": 0, "bbox": [0, 0, 1, 1]},
            {"id": 20, "image_id": 2, "segmentation": poly, "iscrowd": 0, "category_id": 1, "area": 0, "bbox": [0, 0, 1, 1]}],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"}],
    }
    sent = lambda i, t: {"tokens": t.split(), "raw": t, "sent_id": i, "sent": t}  # noqa: E731
    refs = [
        {"ref_id": 0, "ann_id": 10, "image_id": 1, "split": "testA", "category_id": 1, "file_name": "COCO_train2014_000000000001_10.jpg",
         "sent_ids": [0, 1], "sentences": [sent(0, "man on the left"), sent(1, "left guy")]},
        {"ref_id": 1, "ann_id": 11, "image_id": 1, "split": "val", "category_id": 2, "file_name": "COCO_train2014_000000000001_11.jpg",
         "sent_ids": [2], "sentences": [sent(2, "brown dog")]},
        {"ref_id": 2, "ann_id": 20, "image_id": 2, "split": "train", "category_id": 1, "file_name": "COCO_train2014_000000000002_20.jpg",
         "sent_ids": [3], "sentences": [sent(3, "person")]},
    ]
    (root / "refcoco").mkdir()
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    (root / "refcoco" / "instances.json").write_text(json.dumps(inst))
    return poly, rle_mask


class _Boom:
    def __reduce__(self):
        return (print, ("executed",))


def test_refcoco_loader_on_generated_fixture(tmp_path):
    from visionlens_refer.lgd.refcoco import ReferDataset, safe_load_pickle

    poly, rle_mask = _refer_fixture(tmp_path, np.random.default_rng(0))
    ds = ReferDataset(tmp_path, "refcoco")
    assert ds.splits() == ["testA", "train", "val"]
    test_a = list(ds.items("testA"))
    assert [i.sentence for i in test_a] == ["man on the left", "left guy"] and {i.ann_id for i in test_a} == {10}
    assert [i.sentence for i in ds.items("val")] == ["brown dog"] and len(list(ds.items())) == 4
    ref_poly = mu.decode(mu.merge(mu.frPyObjects(poly, 30, 40))).astype(bool)
    assert (ds.mask(10) == ref_poly).all() and (ds.mask(11) == rle_mask).all()
    assert ds.image_masks(1).shape == (2, 30, 40)
    assert ds.image_path(test_a[0], "/coco").name == "COCO_train2014_000000000001.jpg"
    evil = tmp_path / "evil.p"
    evil.write_bytes(pickle.dumps([_Boom()]))
    with pytest.raises(InputError, match="refusing to unpickle"):
        safe_load_pickle(evil)
    with pytest.raises(InputError, match="refs\\(umd\\).p"):
        ReferDataset(tmp_path, "refcocog")


def _coco_images(root) -> str:
    from PIL import Image

    coco = root / "coco"
    coco.mkdir()
    for i in (1, 2):  # PNG bytes under the COCO .jpg names (PIL reads by content)
        Image.fromarray((np.random.default_rng(i).random((30, 40, 3)) * 255).astype(np.uint8)).save(
            coco / f"COCO_train2014_00000000000{i}.jpg", format="PNG")
    return str(coco)


def test_refcoco_evaluation_cli_with_oracle_proposals(tmp_path, tiny_clip):
    from visionlens.cli import main
    from visionlens_refer.lgd.refcoco import ReferDataset

    _refer_fixture(tmp_path, np.random.default_rng(0))
    coco = _coco_images(tmp_path)
    out = tmp_path / "eval"
    assert main(["refer", "--refcoco", str(tmp_path), "--split", "testA", "--coco-dir", coco, "--proposer", "gt",
                 "--clip", tiny_clip, "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "refcoco_eval.json").read_text())
    ds = ReferDataset(tmp_path, "refcoco")
    inst = ds.image_masks(1)
    order = sorted(range(len(inst)), key=lambda i: -int(inst[i].sum()))
    metrics = ReferMetrics()
    for row in result["samples"]:  # the chosen oracle mask, scored independently
        metrics.add(inst[order[row["chosen"]]], ds.mask(row["ann_id"]))
    assert result["summary"] == pytest.approx(metrics.summary()) and result["summary"]["n"] == 2
    assert main(["refer", "--refcoco", str(tmp_path), "--split", "nope", "--coco-dir", coco, "--clip", tiny_clip,
                 "--out", str(out)]) == 2


def test_refcoco_without_clip_refuses_instead_of_scoring_with_the_toy_vlm(tmp_path, capsys):
    """The packaged toy VLM scores every COCO sentence 0 and picks proposal 0: refused, naming --clip."""
    _refer_fixture(tmp_path, np.random.default_rng(0))
    out = tmp_path / "eval"
    rc = main(["refer", "--refcoco", str(tmp_path), "--split", "testA", "--coco-dir", _coco_images(tmp_path),
                  "--proposer", "gt", "--out", str(out), "--quiet"])
    assert rc == 2 and "--clip" in one_error_line(capsys) and not out.exists()


def _write_refs(root, refs) -> None:
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))


@pytest.mark.parametrize("damage,named", [
    ("no annotations", "'annotations'"), ("no sentences", "'sentences'"), ("unknown ann_id", "ann_id 99"),
    ("image without height", "'height'"), ("not json", "not valid JSON"), ("rle size", "RLE size"),
    ("sentence without text", "'sent' or 'raw'"),
])
def test_refcoco_bad_files_are_one_line_before_any_work(tmp_path, capsys, damage, named):
    """Each damage names the file and the field or id, exit 2, before the CLIP folder is even read."""
    _refer_fixture(tmp_path, np.random.default_rng(0))
    folder = tmp_path / "refcoco"
    inst = json.loads((folder / "instances.json").read_text())
    refs = pickle.loads((folder / "refs(unc).p").read_bytes())
    if damage == "no annotations":
        del inst["annotations"]
    elif damage == "image without height":
        del inst["images"][1]["height"]
    elif damage == "rle size":
        inst["annotations"][1]["segmentation"]["size"] = [31, 40]
    elif damage == "no sentences":
        del refs[1]["sentences"]
    elif damage == "sentence without text":
        refs[0]["sentences"][1] = {"sent_id": 1}
    else:
        refs[2]["ann_id"] = 99
    (folder / "instances.json").write_text("{oops" if damage == "not json" else json.dumps(inst))
    _write_refs(tmp_path, refs)
    out = tmp_path / "eval"
    rc = main(["refer", "--refcoco", str(tmp_path), "--coco-dir", _coco_images(tmp_path), "--proposer", "gt",
                  "--clip", str(tmp_path / "no-clip-here"), "--out", str(out), "--quiet"])
    err = one_error_line(capsys)
    assert rc == 2 and named in err and not out.exists()
    expected = "refs(unc).p" if damage in ("no sentences", "unknown ann_id", "sentence without text") else "instances.json"
    assert expected in err


def test_refcoco_unreadable_image_is_skipped_on_one_line(tmp_path, capsys, tiny_clip):
    """A corrupt photo inside a run: reported on one line, skipped, the others scored, exit 1."""
    _refer_fixture(tmp_path, np.random.default_rng(0))
    refs = pickle.loads((tmp_path / "refcoco" / "refs(unc).p").read_bytes())
    refs[2]["split"] = "testA"  # image 2's sentence joins the two on image 1
    _write_refs(tmp_path, refs)
    coco = _coco_images(tmp_path)
    (tmp_path / "coco" / "COCO_train2014_000000000002.jpg").write_bytes(b"not an image at all")
    out = tmp_path / "eval"
    rc = main(["refer", "--refcoco", str(tmp_path), "--split", "testA", "--coco-dir", coco, "--proposer", "gt",
                  "--clip", tiny_clip, "--out", str(out), "--quiet"])
    err = one_error_line(capsys)
    assert rc == 1 and "sentence 3" in err and "COCO_train2014_000000000002.jpg" in err
    result = json.loads((out / "refcoco_eval.json").read_text())
    assert result["summary"]["n"] == 2 and [s["sent_id"] for s in result["skipped"]] == [3]
    (tmp_path / "coco" / "COCO_train2014_000000000002.jpg").unlink()  # a missing one: refused before any work
    assert main(["refer", "--refcoco", str(tmp_path), "--split", "testA", "--coco-dir", coco, "--proposer", "gt",
                    "--clip", tiny_clip, "--out", str(tmp_path / "e2"), "--quiet"]) == 2
    assert "no such image" in one_error_line(capsys) and not (tmp_path / "e2").exists()


class _PersistentRefs(pickle.Pickler):
    def persistent_id(self, obj):
        return "external" if obj == "ref-by-id" else None


def test_refs_pickle_with_a_persistent_id_is_one_line(tmp_path):
    import io

    from visionlens_refer.lgd.refcoco import safe_load_pickle

    buffer = io.BytesIO()
    _PersistentRefs(buffer, protocol=2).dump([{"split": "ref-by-id"}])
    path = tmp_path / "refs(unc).p"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(InputError, match="persistent") as err:
        safe_load_pickle(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)
    path.write_bytes(buffer.getvalue()[:-3])  # truncated
    with pytest.raises(InputError) as err:
        safe_load_pickle(path)
    assert "\n" not in str(err.value)


# --- scores -----------------------------------------------------------------------------------


def test_fusion_vanilla_monotonic_and_ties():
    van = torch.tensor([0.3, 0.5, 0.2])
    att = torch.tensor([0.9, 0.1, 0.0])
    sur = torch.tensor([0.0, 0.0, 1.0])
    scores = {"van": van, "att": att, "sur": sur}
    assert select(fuse(scores, LGDConfig(alpha=0, beta=0))) == int(van.argmax())
    assert select(fuse(scores, LGDConfig.ablation("vanilla", alpha=5, beta=5))) == 1
    margins = [float(fuse(scores, LGDConfig(alpha=a, beta=0))[0] - fuse(scores, LGDConfig(alpha=a, beta=0))[1])
               for a in (0, 0.25, 0.5, 1, 2)]
    assert all(b > a for a, b in zip(margins, margins[1:]))  # S_att favours mask 0
    assert select(fuse(scores, LGDConfig(alpha=1, beta=0))) == 0
    assert select(fuse(scores, LGDConfig.ablation("+surrounding", beta=1))) == 2
    assert select(torch.tensor([0.1, 0.7, 0.7])) == 1


# --- synthetic benchmark, toy VLM, describers, cache ------------------------------------------


@pytest.fixture(scope="module")
def synthetic_samples():
    from visionlens_refer.lgd.synthetic import benchmark

    return benchmark("test", 60, seed=0, chunk=64)


def test_synthetic_samples_are_consistent(synthetic_samples):
    from visionlens_refer.lgd.describers import resolve

    kinds = {s.kind for s in synthetic_samples}
    assert kinds == {"category", "attribute", "spatial", "relation"}
    for s in synthetic_samples:
        assert s.entities[s.referent].kind == "object" and s.mask.any()
        assert s.image.shape == (3, 96, 96)
        assert resolve(s.expression, s.entities) == s.referent  # the rule describer reads the same scene graph
        objects = [e.mask for e in s.entities if e.kind != "part"]
        assert not np.any(np.sum(objects, axis=0) > 1)  # objects and distractors never overlap


def test_full_pipeline_beats_vanilla_on_synthetic(synthetic_samples):
    from visionlens_refer.lgd.benchmark import collect, evaluate
    from visionlens_refer.lgd.describers import SceneDescriber
    from visionlens_refer.lgd.pipeline import LGD
    from visionlens_refer.lgd.proposals import GTProposer
    from visionlens_refer.lgd.toy_vlm import load_toy_vlm

    rows = collect(synthetic_samples, LGD(load_toy_vlm(), SceneDescriber()), GTProposer())
    van = evaluate(rows, LGDConfig.ablation("vanilla"))
    full = evaluate(rows, LGDConfig.ablation("all", alpha=1.0, beta=1.0))
    assert full["mIoU"] > van["mIoU"] + 0.15 and full["oIoU"] > van["oIoU"] + 0.15
    noisy = collect(synthetic_samples, LGD(load_toy_vlm(), SceneDescriber(error_rate=1.0)), GTProposer())
    assert evaluate(noisy, LGDConfig.ablation("all", alpha=1.0, beta=1.0))["mIoU"] < full["mIoU"]  # descriptions matter


def test_cache_round_trip(tmp_path, synthetic_samples):
    from visionlens_refer.lgd.describers import CachedDescriber, SceneDescriber

    s = synthetic_samples[0]
    path = tmp_path / "desc.jsonl"
    inner = SceneDescriber()
    cache = CachedDescriber(path, inner)
    texts = {k: cache.describe(s.image, s.expression, k, image_id=s.image_id, scene=s.entities) for k in ("attribute", "surrounding")}
    assert texts["attribute"].startswith("A photo of") and "surrounded by" in texts["surrounding"]
    assert cache.misses == 2 and len(path.read_text().splitlines()) == 2
    again = CachedDescriber(path, model=inner.name, cache_only=True)
    assert {k: again.describe(s.image, s.expression, k, image_id=s.image_id) for k in texts} == texts
    assert again.hits == 2
    with pytest.raises(VisionlensError, match="no cached"):
        again.describe(s.image, "another expression", "attribute", image_id=s.image_id)
    other_version = CachedDescriber(path, model=inner.name, prompt_version="v-other", cache_only=True)
    with pytest.raises(VisionlensError, match="no cached"):
        other_version.describe(s.image, s.expression, "attribute", image_id=s.image_id)


def test_proposers_colour_and_file(tmp_path, synthetic_samples):
    from visionlens_refer.lgd.proposals import ClassicalProposer, FileProposer, GTProposer

    s = synthetic_samples[1]
    masks = ClassicalProposer("colour").propose(s.image)
    assert masks.dtype == torch.bool and masks.shape[1:] == (96, 96) and len(masks) > 3
    best = max(mask_iou(m.numpy(), s.entities[s.referent + 1].mask)[0] for m in masks)  # a part is one colour
    assert best > 0.5
    gt = GTProposer().propose(s.image, s)
    areas = gt.flatten(1).sum(1)
    assert (areas[:-1] >= areas[1:]).all()
    np.save(tmp_path / "p.npy", gt.numpy())
    assert torch.equal(FileProposer(tmp_path / "p.npy").propose(s.image), gt)
    (tmp_path / "p.json").write_text(json.dumps({s.image_id: [rle_encode(m) for m in gt.numpy()]}))
    assert torch.equal(FileProposer(tmp_path / "p.json").propose(s.image, s), gt)
    with pytest.raises(InputError, match="do not match"):
        FileProposer(tmp_path / "p.npy").propose(torch.zeros(3, 10, 10))


@pytest.mark.parametrize("name, content, message", [
    ("garbage.npy", b"garbage" * 100, "cannot be read as proposals (not a numeric array)"),
    ("broken.json", b"{bad json", "cannot be read as proposals (Expecting property name"),
    ("ints.json", b"[1, 2, 3]", "not a COCO RLE dict"),
])
def test_a_corrupt_proposal_file_is_one_line_naming_it(tmp_path, synthetic_samples, name, content, message):
    """A corrupt .npy or malformed .json ended in "internal error (ValueError ...)"."""
    from visionlens_refer.lgd.proposals import FileProposer

    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError) as info:
        FileProposer(tmp_path / name).propose(synthetic_samples[0].image)
    assert str(info.value).startswith(str(tmp_path / name)) and message in str(info.value)


def test_proposal_masks_with_nan_are_refused(tmp_path, synthetic_samples):
    from visionlens_refer.lgd.proposals import FileProposer

    image = synthetic_samples[0].image
    np.save(tmp_path / "nan.npy", np.full((2, *image.shape[1:]), np.nan))
    with pytest.raises(InputError, match="masks hold NaN or infinite values"):
        FileProposer(tmp_path / "nan.npy").propose(image)


@pytest.mark.parametrize("method", ["felzenszwalb", "slic"])
def test_scikit_image_proposers(method, synthetic_samples):
    pytest.importorskip("skimage")
    from visionlens_refer.lgd.proposals import ClassicalProposer

    s = synthetic_samples[2]
    masks = ClassicalProposer(method, merge=False).propose(s.image)
    assert masks.dtype == torch.bool and masks.shape[1:] == (96, 96) and len(masks) > 3
    areas = masks.flatten(1).sum(1)
    assert (areas >= 12).all() and (areas[:-1] >= areas[1:]).all()


# --- real-weights backends on tiny random transformers models ---------------------------------


def _tiny_tokenizer(words):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = ["<pad>", "<s>", "</s>", "<unk>"] + words
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>"), vocab


WORDS = "a photo of the red blue square disc lantern with and surrounded by one next to left".split()


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    """A random-initialised tiny CLIP (and tokenizer) saved with save_pretrained; its folder."""
    pytest.importorskip("transformers")
    from transformers import CLIPConfig, CLIPModel

    folder = tmp_path_factory.mktemp("tiny-clip") / "clip"
    tok, vocab = _tiny_tokenizer(WORDS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        cfg = CLIPConfig(text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=32,
                                          eos_token_id=2, bos_token_id=1, pad_token_id=0),
                         vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                            num_attention_heads=2, image_size=32, patch_size=8), projection_dim=16)
        CLIPModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_hf_clip_encoder_from_local_folder(tmp_path, tiny_clip):
    from visionlens_refer.lgd.clip_hf import HFClipEncoder

    with pytest.raises(AssetError, match="config.json"):
        HFClipEncoder(tmp_path / "missing")
    enc = HFClipEncoder(tiny_clip, masked_blocks=2)
    image = torch.rand(3, 40, 48)
    full = torch.ones(1, 40, 48, dtype=torch.bool)
    half = torch.zeros(1, 40, 48, dtype=torch.bool)
    half[:, :, :24] = True
    g, l = enc.encode_regions(image, torch.cat([full, half]))
    x = torch.nn.functional.interpolate(image[None], size=(32, 32), mode="bicubic", align_corners=False).clamp(0, 1)
    with torch.no_grad():
        ref = enc.model.get_image_features(pixel_values=enc._normalise(x))
    ref = torch.nn.functional.normalize(getattr(ref, "pooler_output", ref), dim=-1)
    assert torch.allclose(g[0], ref[0], atol=1e-5)  # all-ones mask == plain image features
    assert not torch.allclose(g[1], ref[0], atol=1e-3)  # the mask changes the global feature
    t = enc.encode_text(["a photo of a red disc", "the lantern on the left"])
    assert t.shape == (2, 16) and torch.allclose(t.norm(dim=-1), torch.ones(2))
    from visionlens_refer.lgd.pipeline import LGD

    res = LGD(enc, None, LGDConfig(use_att=False, use_sur=False)).segment(image, "the red disc", torch.cat([full, half]))
    assert res.index in (0, 1) and len(res.total) == 2


def _tiny_vit_folder(folder, with_tokenizer: bool) -> str:
    """A tiny random ViT classifier saved with save_pretrained (model_type 'vit', not a CLIP)."""
    from transformers import ViTConfig, ViTForImageClassification

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        cfg = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                        image_size=32, patch_size=8, num_labels=3)
        ViTForImageClassification(cfg).save_pretrained(folder)
    if with_tokenizer:
        _tiny_tokenizer(WORDS)[0].save_pretrained(folder)
    return str(folder)


def _two_squares(path) -> None:
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (48, 40), (240, 240, 240))
    draw = ImageDraw.Draw(im)
    draw.rectangle([4, 8, 18, 22], fill=(220, 20, 20))
    draw.rectangle([28, 10, 42, 24], fill=(20, 20, 220))
    im.save(path)


@pytest.mark.parametrize("with_tokenizer", [True, False])
def test_refer_clip_folder_of_another_model_is_refused_before_loading(tmp_path, capsys, with_tokenizer):
    """A ViT folder given as --clip used to load as a randomly initialised CLIP (exit 0, and
    transformers' 78-line load report); now one line naming its model_type, exit 2, nothing written."""
    pytest.importorskip("transformers")
    vit = _tiny_vit_folder(tmp_path / "vit", with_tokenizer)
    _two_squares(tmp_path / "im.png")
    out = tmp_path / "out"
    capsys.readouterr()  # save_pretrained's own progress bar
    assert main(["refer", str(tmp_path / "im.png"), "the red square", "--clip", vit, "--out", str(out)]) == 2
    err = one_error_line(capsys)
    assert "not a CLIP model (config.json model_type 'vit'" in err, err
    assert not out.exists() or not any(out.iterdir())
    from visionlens_refer.lgd.clip_hf import HFClipEncoder

    with pytest.raises(InputError, match="not a CLIP model"):
        HFClipEncoder(vit)


def test_refer_with_a_clip_prints_no_transformers_load_report(tmp_path, capfd, tiny_clip):
    """A genuine CLIP folder whose weights lack a tensor: one ``warning:`` line, not the load report."""
    import shutil

    from safetensors.torch import load_file, save_file

    clip = tmp_path / "clip"
    shutil.copytree(tiny_clip, clip)
    weights = load_file(str(clip / "model.safetensors"))
    dropped = sorted(k for k in weights if k.endswith("visual_projection.weight"))
    assert dropped
    save_file({k: v for k, v in weights.items() if k not in dropped}, str(clip / "model.safetensors"),
              metadata={"format": "pt"})
    _two_squares(tmp_path / "im.png")
    capfd.readouterr()
    assert main(["refer", str(tmp_path / "im.png"), "the red square", "--clip", str(clip),
                 "--out", str(tmp_path / "out")]) == 0
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err and "[transformers]" not in err, err
    assert err.count("\n") == 1 and err.startswith("warning:") and "lack 1 tensor" in err, err


def test_sam_proposer_from_local_folder(tmp_path):
    pytest.importorskip("transformers")
    from transformers import SamConfig, SamMaskDecoderConfig, SamModel, SamPromptEncoderConfig, SamVisionConfig

    from visionlens_refer.lgd.sam import SamProposer

    with pytest.raises(AssetError, match="SAM weights not found"):
        SamProposer(tmp_path / "missing")
    torch.manual_seed(0)
    vc = SamVisionConfig(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2, image_size=64,
                         patch_size=16, mlp_dim=64, num_pos_feats=8, global_attn_indexes=[1], window_size=2)
    cfg = SamConfig(vision_config=vc, prompt_encoder_config=SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=16,
                                                                                    image_embedding_size=4, mask_input_channels=4),
                    mask_decoder_config=SamMaskDecoderConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                                             mlp_dim=32, iou_head_hidden_dim=16))
    SamModel(cfg).save_pretrained(tmp_path / "sam")
    sam = SamProposer(tmp_path / "sam", points_per_side=4, points_per_batch=8, pred_iou_thresh=-1e9,
                      stability_thresh=0.0, nms_thresh=0.99, min_area=1)
    masks = sam.propose(torch.rand(3, 50, 70))
    assert masks.dtype == torch.bool and masks.shape[1:] == (50, 70) and 1 <= len(masks) <= 48
    strict = SamProposer(tmp_path / "sam", points_per_side=2, pred_iou_thresh=1e9)
    with pytest.raises(InputError, match="no mask passed"):
        strict.propose(torch.rand(3, 20, 20))


def test_hf_local_describer_from_local_folder(tmp_path):
    pytest.importorskip("transformers")
    from transformers import GPT2Config, GPT2LMHeadModel

    from visionlens_refer.lgd.mllm import HFLocalDescriber

    with pytest.raises(AssetError, match="MLLM weights not found"):
        HFLocalDescriber(tmp_path / "missing")
    tok, vocab = _tiny_tokenizer(WORDS + ["look", "at", "image", "exactly", "object"])
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_embd=32, n_layer=2, n_head=2, n_positions=512,
                                       bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False))
    with torch.no_grad():  # make the random model always answer "lantern"
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(torch.linspace(-1, 1, 32))
        model.lm_head.weight.zero_()
        model.lm_head.weight[vocab.index("lantern")] = torch.linspace(-1, 1, 32)
    model.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    d = HFLocalDescriber(tmp_path / "lm", max_new_tokens=3)
    assert d.describe(torch.rand(3, 8, 8), "the red disc", "attribute") == "A photo of lantern lantern lantern"


def test_loopback_describer_talks_openai_chat():
    from visionlens_refer.lgd.mllm import LoopbackDescriber

    seen = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            seen["path"] = self.path
            seen["body"] = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            reply = json.dumps({"choices": [{"message": {"content": "  A man in a white shirt. He is tall."}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *a):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        d = LoopbackDescriber(f"http://127.0.0.1:{server.server_port}", "tiny")
        assert d.describe(torch.rand(3, 8, 8), "guy in white", "attribute") == "A photo of a man in a white shirt"
    finally:
        server.shutdown()
        server.server_close()
    assert seen["path"] == "/v1/chat/completions" and seen["body"]["model"] == "tiny"
    content = seen["body"]["messages"][0]["content"]
    assert "guy in white" in content[0]["text"] and content[1]["image_url"]["url"].startswith("data:image/png;base64,")
    with pytest.raises(InputError, match="127.0.0.1"):
        LoopbackDescriber("http://example.com:8080", "x")
    with pytest.raises(VisionlensError, match="unreachable"):
        LoopbackDescriber(f"http://127.0.0.1:{server.server_port}", "x", timeout=2).describe(torch.rand(3, 4, 4), "x", "attribute")


# --- toy VLM weights ------------------------------------------------------------------------------


def _toy_state():
    from visionlens_refer.lgd.toy_vlm import WEIGHTS

    return torch.load(WEIGHTS, weights_only=True)


class _Code:
    def __reduce__(self):
        return (print, ("executed",))


@pytest.mark.parametrize("damage,named", [
    ("garbage", "toy VLM"), ("pickled code", "toy VLM"), ("missing", "toy VLM"),
    ("not a dict", "'dim' and 'state_dict'"), ("no dim", "'dim' and 'state_dict'"), ("bad dim", "'dim'"),
    ("missing weight", "'words.weight' is missing"), ("wrong shape", "'text_proj.weight' has shape (32, 31)"),
    ("nan weight", "'local.0.bias' contains NaN"), ("extra weight", "unexpected weight 'spare'"),
])
def test_load_toy_vlm_bad_file_is_one_input_error(tmp_path, damage, named):
    """Formerly raw UnpicklingError / KeyError / RuntimeError: now one line naming the file and the first problem."""
    from visionlens_refer.lgd.toy_vlm import load_toy_vlm

    path = tmp_path / "toy.pt"
    state = _toy_state()
    weights = state["state_dict"]
    if damage == "garbage":
        path.write_bytes(b"\x00 not a checkpoint")
    elif damage == "pickled code":
        torch.save({"dim": 32, "state_dict": _Code()}, path)
    elif damage != "missing":
        if damage == "not a dict":
            state = [1, 2]
        elif damage == "no dim":
            del state["dim"]
        elif damage == "bad dim":
            state["dim"] = -3
        elif damage == "missing weight":
            del weights["words.weight"]
        elif damage == "wrong shape":
            weights["text_proj.weight"] = weights["text_proj.weight"][:, :31]
        elif damage == "nan weight":
            weights["local.0.bias"][2] = float("nan")
        else:
            weights["spare"] = torch.zeros(1)
        torch.save(state, path)
    with pytest.raises(InputError) as err:
        load_toy_vlm(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and named in message, message
    assert isinstance(load_toy_vlm().model, torch.nn.Module)  # the packaged weights still pass every check


# --- CLI ----------------------------------------------------------------------------------------


def test_cli_refer_synthetic_scene_and_errors(tmp_path, capsys):
    from visionlens.cli import main

    out = tmp_path / "out"
    assert main(["refer", "synthetic:test:2", "--out", str(out), "--alpha", "1", "--beta", "1"]) == 0
    report = json.loads((out / "scores.json").read_text())
    assert {"van", "att", "sur"} <= set(report["scores"]) and len(report["total"]) == report["proposals"]
    assert report["index"] == int(np.argmax(report["total"]))
    assert (out / "overlay.png").is_file() and (out / "mask.png").is_file()
    assert main(["refer", "synthetic:test:2", "--clip", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")]) == 2
    assert "config.json" in capsys.readouterr().err and not (tmp_path / "o2").exists()


def test_cli_synthetic_index_is_bounded(tmp_path, capsys):
    """synthetic:test:999999 used to render a million scenes (hours); now an immediate, clear refusal."""
    import time

    from visionlens_refer.lgd.cli import MAX_SYNTHETIC_INDEX

    for spec in ("synthetic:test:999999", f"synthetic:test:{MAX_SYNTHETIC_INDEX + 1}", "synthetic:test:-1",
                 "synthetic:nope:3", "synthetic:test", "synthetic:test:3:4"):
        start = time.perf_counter()
        assert main(["refer", spec, "--out", str(tmp_path / "o")]) == 2
        assert time.perf_counter() - start < 2, spec
        assert "synthetic" in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("flag,value", [
    ("--alpha", "nan"), ("--alpha", "-1"), ("--beta", "inf"), ("--mix", "1.5"), ("--mix", "nan"),
    ("--describer-error", "2"), ("--limit", "0"), ("--n-val", "0"), ("--n-test", "-5"), ("--seed", "-1"),
    ("--seed", "0.5"),
])
def test_cli_refer_refuses_bad_numbers(tmp_path, capsys, flag, value):
    rc = main(["refer", "synthetic:test:2", "--out", str(tmp_path / "o"), f"{flag}={value}"])
    assert rc == 2 and flag in one_error_line(capsys) and not (tmp_path / "o").exists()


def test_config_and_photo_without_known_words_are_refused(tmp_path, capsys):
    from PIL import Image

    for bad in ({"alpha": float("nan")}, {"beta": -1.0}, {"mix": 2.0}, {"logit_scale": 0.0}):
        with pytest.raises(InputError, match=next(iter(bad))):
            LGDConfig(**bad)
    photo = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (90, 120, 30)).save(photo)
    rc = main(["refer", str(photo), "the dog on a sofa", "--out", str(tmp_path / "o")])
    assert rc == 2 and "--clip" in one_error_line(capsys) and not (tmp_path / "o").exists()


def test_cli_refer_keeps_a_users_file_in_out_and_rewrites_its_own(tmp_path, capsys):
    """A mask.png (or ablation.md) of the user's in --out used to be replaced without a word: now
    one line, exit 2, before any work; a re-run into the folder an earlier refer wrote rewrites it."""
    mine = tmp_path / "mine"
    mine.mkdir()
    for name, argv in (("mask.png", ["synthetic:test:1"]), ("ablation.md", ["--benchmark", "--n-val", "1",
                                                                           "--n-test", "1", "--quiet"])):
        (mine / name).write_bytes(b"mine")
        assert main(["refer", *argv, "--out", str(mine)]) == 2
        assert str(mine / name) in one_error_line(capsys)
        assert (mine / name).read_bytes() == b"mine" and sorted(mine.iterdir()) == [mine / name]
        (mine / name).unlink()
    own = tmp_path / "own"
    for _ in range(2):
        assert main(["refer", "synthetic:test:1", "--out", str(own)]) == 0
    assert (own / "mask.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_refer_refuses_an_unknown_device_and_an_empty_expression(tmp_path, capsys):
    """--device tpu used to be ignored (exit 0), and an empty expression was replaced by the scene's own."""
    for argv, named in ((["synthetic:test:5", "--device", "tpu"], "tpu"),
                        (["synthetic:test:5", ""], "expression is empty"),
                        (["synthetic:test:5", "  "], "expression is empty"),
                        ([str(tmp_path / "im.png"), ""], "expression is empty")):
        assert main(["refer", *argv, "--out", str(tmp_path / "o")]) == 2
        assert named in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_cli_refer_refuses_an_image_that_is_one_of_its_outputs(tmp_path, capsys):
    """`refer out/overlay.png "..." --out out` used to overwrite its own input image."""
    own = tmp_path / "own"
    assert main(["refer", "synthetic:test:1", "--out", str(own)]) == 0
    before = (own / "overlay.png").read_bytes()
    capsys.readouterr()
    assert main(["refer", str(own / "overlay.png"), "the red circle", "--out", str(own)]) == 2
    line = one_error_line(capsys)
    assert "IMAGE" in line and str(own / "overlay.png") in line
    assert (own / "overlay.png").read_bytes() == before


def test_scores_json_is_strict_and_threads_are_restored(tmp_path):
    from visionlens.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(3)  # the command runs on at most 2, then gives the caller's setting back
    try:
        assert main(["refer", "synthetic:test:1", "--out", str(tmp_path / "o")]) == 0
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)
    text = (tmp_path / "o" / "scores.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))


# --- flags of another mode -------------------------------------------------------------------------

@pytest.mark.parametrize("argv,named", [
    (["--benchmark", "--refcoco", "ROOT"], ["--benchmark", "--refcoco"]),
    (["--benchmark", "photo.png"], ["IMAGE", "photo.png", "--benchmark"]),
    (["--benchmark", "--alpha", "1"], ["--alpha", "--benchmark"]),
    (["--benchmark", "--no-att"], ["--no-att", "--benchmark"]),
    (["--benchmark", "--limit", "3"], ["--limit", "--benchmark"]),
    (["--benchmark", "--cache", "CACHE", "--cache-only"], ["--cache", "--benchmark"]),
    (["--benchmark", "--clip", "CLIP"], ["--clip", "--benchmark"]),
    (["--refcoco", "ROOT", "synthetic:test:5"], ["IMAGE", "synthetic:test:5", "--refcoco"]),
    (["--refcoco", "ROOT", "--n-val", "3"], ["--n-val", "--refcoco"]),
    (["--refcoco", "ROOT", "--describer", "oracle"], ["--describer", "--refcoco"]),
    (["synthetic:test:5", "--limit", "3"], ["--limit", "synthetic"]),
    (["synthetic:test:5", "--n-val", "3"], ["--n-val", "synthetic"]),
    (["synthetic:test:5", "--split", "testA"], ["--split", "synthetic"]),
    (["synthetic:test:5", "--coco-dir", "COCO"], ["--coco-dir", "synthetic"]),
    (["synthetic:test:5", "--sam-pred-iou", "0.9"], ["--sam-pred-iou", "--proposer sam"]),
    (["synthetic:test:5", "--sam", "SAM"], ["--sam", "--proposer sam"]),
    (["synthetic:test:5", "--proposals", "p.npy"], ["--proposals", "--proposer file"]),
    (["photo.png", "the cat", "--describer", "oracle"], ["--describer", "IMAGE file"]),
    (["photo.png", "the cat", "--proposer", "colour", "--sam-min-area", "5"], ["--sam-min-area", "--proposer colour"]),
])
def test_flags_of_another_mode_are_refused_before_any_work(tmp_path, capsys, argv, named):
    """Each used to be ignored without a word (exit 0)."""
    import time

    out = tmp_path / "o"
    start = time.perf_counter()
    assert main(["refer", *argv, "--out", str(out)]) == 2
    assert time.perf_counter() - start < 2
    line = one_error_line(capsys)
    assert all(name in line for name in named), line
    assert not out.exists()


def test_the_flags_of_the_chosen_proposer_are_accepted(tmp_path):
    """--sam-* with --proposer sam, --proposals with --proposer file: the mode check lets them through
    (what follows is that proposer's own checking)."""
    from visionlens_refer.lgd.cli import _check_mode

    parser = __import__("visionlens.cli", fromlist=["build_parser"]).build_parser()
    args = parser.parse_args(["refer", "photo.png", "x", "--proposer", "sam", "--sam-pred-iou", "0.9"])
    assert _check_mode(args) == "image" and args.sam_pred_iou == 0.9 and args.sam_min_area == 64
    assert args.alpha == 0.5 and args.split == "val" and args.n_val == 200
    args = parser.parse_args(["refer", "--benchmark", "--proposer", "file", "--proposals", "p.npy", "--n-val", "3"])
    assert _check_mode(args) == "benchmark" and args.n_val == 3


def test_a_plain_image_without_proposals_says_what_to_try(tmp_path, capsys):
    from PIL import Image

    from visionlens_refer.lgd.proposals import ClassicalProposer

    with pytest.raises(InputError) as err:
        ClassicalProposer("colour").propose(torch.full((3, 24, 24), 0.5))
    message = str(err.value)
    assert "no proposals" in message and "--proposer felzenszwalb" in message and "--proposer file" in message
    photo = tmp_path / "plain.png"
    Image.new("RGB", (32, 32), (120, 120, 120)).save(photo)
    assert main(["refer", str(photo), "the red square", "--out", str(tmp_path / "o")]) == 2
    assert "try --proposer" in one_error_line(capsys)


def test_benchmark_sizes_are_bounded_and_rendering_shows_progress(tmp_path, capsys):
    """--n-test holds every rendered scene in memory: above the bound it is one line before any
    work; the scenes are counted on a progress bar as they are rendered."""
    from visionlens_refer.lgd.cli import MAX_SAMPLES
    from visionlens_refer.lgd.synthetic import benchmark

    assert main(["refer", "--benchmark", "--n-test", str(MAX_SAMPLES + 1), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"must be at most {MAX_SAMPLES}" in err and not (tmp_path / "o").exists()

    class Bar:
        done = 0

        def update(self, n=1):
            self.done += n

    bar = Bar()
    assert len(benchmark("val", 5, seed=0, bar=bar)) == 5 and bar.done == 5
