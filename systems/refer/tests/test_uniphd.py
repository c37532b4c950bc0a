"""UniPHD (referring human pose and mask): COCO-exact metrics against pycocotools, the RefHuman-format
loader, generator invariants, module behaviour, the matcher, a CI-sized training run and the CLI."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import torch

from visionlens.cli import main
from helpers import one_error_line
from visionlens.errors import InputError
from visionlens_refer.masks import rle_decode, rle_encode
from visionlens_refer.uniphd.config import UniPHDConfig
from visionlens_refer.uniphd.data import FLIP_PAIRS, flip_sample, load_refhuman, synthetic_refhuman, write_refhuman
from visionlens_refer.uniphd.inference import PACKAGED_WEIGHTS, fit_sample
from visionlens_refer.uniphd.metrics import coco_ap, oks, pckh, referring_iou


@pytest.fixture(scope="module")
def samples():
    return synthetic_refhuman(30, seed=3)


def _gt_pred_set(samples, seed=1):
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for s in samples:
        gts.append({"image_id": s.image_id, "id": s.ann_id, "keypoints": s.keypoints.reshape(-1).tolist(), "category_id": 1,
                    "num_keypoints": int((s.keypoints[:, 2] > 0).sum()), "area": s.area, "bbox": list(s.bbox),
                    "iscrowd": 0, "mask": s.mask})
        for _ in range(rng.integers(0, 4)):
            kp = s.keypoints.copy()
            kp[:, :2] += rng.normal(0, rng.uniform(0.3, 4), size=(17, 2))
            kp[:, 2] = 1
            mask = np.roll(s.mask, rng.integers(-3, 4), axis=1) if rng.random() > 0.2 else samples[rng.integers(len(samples))].mask
            preds.append({"image_id": s.image_id, "category_id": 1, "keypoints": kp.reshape(-1).tolist(),
                          "score": float(rng.random()), "mask": mask})
    gts[3]["iscrowd"] = 1
    gts[5]["num_keypoints"] = 0
    return gts, preds


def _cocoeval(gts, preds, kind, size=96):
    pytest.importorskip("pycocotools")
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    anns = []
    for g in gts:
        a = {k: v for k, v in g.items() if k != "mask"}
        a["segmentation"] = rle_encode(g["mask"], compressed=False)
        anns.append(a)
    coco = COCO()
    coco.dataset = {"images": [{"id": g["image_id"], "height": size, "width": size} for g in gts], "annotations": anns,
                    "categories": [{"id": 1, "name": "person"}]}
    res = []
    for p in preds:
        r = {k: v for k, v in p.items() if k != "mask"}
        if kind == "segm":
            del r["keypoints"]
            rle = mask_utils.encode(np.asfortranarray(p["mask"].astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            r["segmentation"] = rle
        res.append(r)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(res), kind)
        if kind == "keypoints":
            ev.params.maxDets = [20]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


# --- metrics against pycocotools --------------------------------------------------------------

def test_oks_equals_cocoeval_computeoks(samples):
    gts, preds = _gt_pred_set(samples)
    ev = _cocoeval(gts, preds, "keypoints")
    checked = 0
    for g in gts:
        dts = sorted([p for p in preds if p["image_id"] == g["image_id"]], key=lambda p: -p["score"])
        if not dts:
            continue
        ref = np.asarray(ev.computeOks(g["image_id"], 1))[:, 0]
        ours = oks(np.array([d["keypoints"] for d in dts]).reshape(len(dts), 17, 3), g)
        assert np.array_equal(ref, ours)
        checked += 1
    assert checked > 10
    # a GT with no labelled keypoint uses the enlarged-box distance
    g = dict(gts[0], keypoints=[0.0] * 51)
    far = np.full((1, 17, 3), 500.0)
    assert oks(far, g)[0] < 1e-3 and oks(np.zeros((1, 17, 3)) + [g["bbox"][0] + 1, g["bbox"][1] + 1, 1], g)[0] == 1.0


@pytest.mark.parametrize("kind", ["keypoints", "segm"])
def test_ap_equals_pycocotools(samples, kind):
    gts, preds = _gt_pred_set(samples, seed=2)
    ev = _cocoeval(gts, preds, kind)
    ours = coco_ap(gts, preds, kind)["stats"]
    assert ours.shape == ev.stats.shape
    assert np.array_equal(ours, ev.stats)
    assert 0 < ours[0] < 1


def test_ap_perfect_predictions_is_one(samples):
    gts, _ = _gt_pred_set(samples)
    gts = [g for g in gts if not g["iscrowd"] and g["num_keypoints"]]
    preds = [{"image_id": g["image_id"], "score": 1.0, "keypoints": g["keypoints"], "mask": g["mask"]} for g in gts]
    assert coco_ap(gts, preds, "keypoints")["AP"] == 1.0
    assert coco_ap(gts, preds, "segm")["AP"] == 1.0


def test_pckh_and_referring_iou(samples):
    kps = [s.keypoints for s in samples]
    assert pckh(kps, kps) == 1.0
    moved = [k.copy() for k in kps]
    for k in moved:
        k[:, 0] += 100
    assert pckh(moved, kps) == 0.0
    masks = [s.mask for s in samples]
    r = referring_iou(masks, masks)
    assert r["oIoU"] == 1.0 and abs(r["mIoU"] - 1.0) < 1e-12
    assert referring_iou([np.zeros((4, 4), bool)], [np.zeros((4, 4), bool)])["mIoU"] == 1.0  # RefHuman's (I+e)/(U+e)


# --- data ---------------------------------------------------------------------------------------

def test_loader_round_trip(tmp_path, samples):
    ann = write_refhuman(samples[:12], tmp_path / "RefHuman_val.json", tmp_path / "images")
    loaded = load_refhuman(ann, tmp_path / "images")
    assert len(loaded) == 12
    lazy = load_refhuman(ann, tmp_path / "images", lazy=True)
    assert lazy[0].image is None and np.array_equal(fit_sample(lazy[0], 96).image, samples[0].image)
    for a, b in zip(samples[:12], loaded):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
        assert np.array_equal(a.keypoints, b.keypoints) and np.array_equal(a.scribbles, b.scribbles)
        assert (a.caption, a.image_id, a.ann_id, a.area, a.bbox) == (b.caption, b.image_id, b.ann_id, b.area, b.bbox)
    data = json.loads(ann.read_text())
    assert len(data["images"]) == 12 and all("caption" in im for im in data["images"])
    assert all(len(a["scribble"]) == 120 and len(a["keypoints"]) == 51 for a in data["annotations"])


def test_loader_polygons_crowd_and_bad_input(tmp_path, samples):
    s = samples[0]
    write_refhuman([s], tmp_path / "a.json", tmp_path / "im")
    data = json.loads((tmp_path / "a.json").read_text())
    data["annotations"][0]["segmentation"] = [[10, 10, 40, 10, 40, 50, 10, 50]]
    crowd = dict(data["annotations"][0], id=99, iscrowd=1)
    data["annotations"].append(crowd)
    (tmp_path / "b.json").write_text(json.dumps(data))
    loaded = load_refhuman(tmp_path / "b.json", tmp_path / "im")
    assert len(loaded) == 1  # the crowd annotation is dropped, as in the official loader
    m = loaded[0].mask
    assert m[20, 20] and not m[5, 5] and abs(int(m.sum()) - 30 * 40) <= 80
    with pytest.raises(InputError):
        load_refhuman(tmp_path / "missing.json", tmp_path / "im")
    with pytest.raises(InputError):
        load_refhuman(tmp_path / "b.json", tmp_path / "nowhere")
    data["annotations"][0]["scribble"] = [1.0, 2.0]
    (tmp_path / "c.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match="scribble"):
        load_refhuman(tmp_path / "c.json", tmp_path / "im")
    (tmp_path / "d.json").write_text("{not json")
    with pytest.raises(InputError):
        load_refhuman(tmp_path / "d.json", tmp_path / "im")


def test_rle_matches_pycocotools(samples):
    mask_utils = pytest.importorskip("pycocotools.mask")
    for s in samples[:5]:
        rle = rle_encode(s.mask, compressed=False)
        decoded = mask_utils.decode(mask_utils.frPyObjects(rle, *rle["size"])).astype(bool)
        assert np.array_equal(decoded, s.mask) and np.array_equal(rle_decode(rle), s.mask)


def test_generator_invariants(samples):
    by_image = {}
    for s in samples:
        r = np.round(s.scribbles).astype(int)
        assert s.mask[r[..., 1], r[..., 0]].all()  # every scribble point inside its mask
        assert s.area == s.mask.sum() > 0
        by_image.setdefault(s.file_name, []).append(s)
        vis = s.keypoints[:, 2] == 2
        kp = np.round(s.keypoints[vis, :2]).astype(int)
        assert s.mask[kp[:, 1], kp[:, 0]].all()  # visible joints lie on the person's visible pixels
    for group in by_image.values():
        captions = [s.caption for s in group]
        assert len(set(captions)) == len(captions)  # captions refer uniquely within a scene
        masks = np.stack([s.mask for s in group])
        assert masks.sum(0).max() <= 1  # visible masks do not overlap
    s = next(x for x in samples if "left" in x.caption or "right" in x.caption)
    f = flip_sample(s)
    assert ("left" in f.caption) == ("right" in s.caption)
    a, b = FLIP_PAIRS[2]  # shoulders swap and mirror
    assert np.allclose(f.keypoints[a, 0], 95 - s.keypoints[b, 0])
    ff = flip_sample(f)
    assert ff.caption == s.caption and np.allclose(ff.keypoints, s.keypoints) and np.array_equal(ff.mask, s.mask)
    assert np.allclose(ff.scribbles, s.scribbles) and np.array_equal(ff.image, s.image)


# --- modules ------------------------------------------------------------------------------------

def test_deformable_attention_matches_naive_bilinear():
    from visionlens_refer.uniphd.layers import MSDeformAttn

    torch.manual_seed(0)
    shapes = [(6, 5), (3, 3)]
    attn = MSDeformAttn(8, 2, 2, 3)
    with torch.no_grad():
        attn.sampling_offsets.weight.normal_(0, 0.5)
        attn.attention_weights.weight.normal_(0, 0.5)
    q, ref = torch.randn(2, 4, 8), torch.rand(2, 4, 2)
    value = torch.randn(2, 30 + 9, 8)
    with torch.no_grad():
        got, expected = attn(q, ref, value, shapes), _naive_deformable(attn, q, ref, value, shapes)
    assert torch.allclose(got, expected, atol=1e-5)


def _naive_deformable(attn, q, ref, value, shapes):
    """MSDeformAttn by explicit bilinear sampling, point by point."""
    v = attn.value_proj(value).view(2, 39, 2, 4)
    off = attn.sampling_offsets(q).view(2, 4, 2, 2, 3, 2)
    w = attn.attention_weights(q).view(2, 4, 2, 6).softmax(-1).view(2, 4, 2, 2, 3)
    out = torch.zeros(2, 4, 2, 4)
    starts = [0, 30]
    for b in range(2):
        for i in range(4):
            for h in range(2):
                for lv, (H, W) in enumerate(shapes):
                    for p in range(3):
                        x = (ref[b, i, 0] + off[b, i, h, lv, p, 0] / W) * W - 0.5
                        y = (ref[b, i, 1] + off[b, i, h, lv, p, 1] / H) * H - 0.5
                        x0, y0 = int(np.floor(float(x))), int(np.floor(float(y)))
                        val = torch.zeros(4)
                        for yy, xx, wt in ((y0, x0, (x0 + 1 - x) * (y0 + 1 - y)), (y0, x0 + 1, (x - x0) * (y0 + 1 - y)),
                                           (y0 + 1, x0, (x0 + 1 - x) * (y - y0)), (y0 + 1, x0 + 1, (x - x0) * (y - y0))):
                            if 0 <= xx < W and 0 <= yy < H:
                                val = val + wt * v[b, starts[lv] + yy * W + xx, h]
                        out[b, i, h] += w[b, i, h, lv, p] * val
    return attn.output_proj(out.reshape(2, 4, 8))


def test_phd_layer_bias_and_across_instance_mixing():
    from visionlens_refer.uniphd.transformer import PHDLayer

    torch.manual_seed(0)
    layer = PHDLayer(16, 2, 32, 1, 2, 0.0).eval()
    assert layer.adjacent_matrix.shape == (2, 18, 18)
    tokens, pos = torch.randn(1, 3, 18, 16), torch.randn(1, 3, 18, 16)
    refs, memory = torch.rand(1, 3, 18, 2), torch.randn(1, 16, 16)
    base = layer(tokens, pos, refs, memory, [(4, 4)])
    with torch.no_grad():
        layer.adjacent_matrix[:, 0, 5] = 5.0
    assert not torch.allclose(base, layer(tokens, pos, refs, memory, [(4, 4)]))  # the bias is added
    # the across-instance attention mixes groups only within a token slot
    x = torch.randn(2, 3, 18, 16)
    p = torch.zeros_like(x)
    g, q = 18, 3
    flat = x.transpose(1, 2).reshape(2 * g, q, 16)
    out = layer.across_attn(flat, flat, flat, need_weights=False)[0]
    x2 = x.clone()
    x2[:, :, 7] += 1.0  # change slot 7 only
    flat2 = x2.transpose(1, 2).reshape(2 * g, q, 16)
    out2 = layer.across_attn(flat2, flat2, flat2, need_weights=False)[0]
    changed = (out2 - out).abs().view(2, g, q, 16).sum((0, 2, 3)) > 0
    assert changed[7] and changed.sum() == 1
    del p


def test_mask_head_batch_equals_loop_and_full_resolution():
    from visionlens_refer.uniphd.mask_head import MaskHead

    torch.manual_seed(0)
    head = MaskHead(8, 4, 6).eval()
    maps = [torch.randn(3, 8, 6, 6), torch.randn(3, 8, 3, 3)]
    inst, centres = torch.randn(3, 2, 8), torch.rand(3, 2, 2)
    f4, f8 = torch.randn(3, 4, 12, 12), torch.randn(3, 6, 6, 6)
    batch = head(maps, inst, centres, f4, f8)
    assert batch.shape == (3, 2, 48, 48)  # pixel_shuffle(4) of the stride-4 map = input size
    loop = torch.cat([head([m[i:i + 1] for m in maps], inst[i:i + 1], centres[i:i + 1], f4[i:i + 1], f8[i:i + 1]) for i in range(3)])
    assert torch.allclose(batch, loop, atol=1e-5)


def test_matcher_picks_lowest_cost_and_follows_permutation():
    from visionlens_refer.uniphd.matcher import match, match_cost

    torch.manual_seed(0)
    b, q = 4, 6
    out = {"logits": torch.randn(b, q), "keypoints": torch.rand(b, q, 17, 2), "boxes": torch.rand(b, q, 4) * 0.5 + 0.25}
    target = {"keypoints": torch.rand(b, 17, 2), "visible": (torch.rand(b, 17) > 0.2).float(), "area": torch.rand(b) * 0.1 + 0.05,
              "boxes": torch.rand(b, 4) * 0.5 + 0.25}
    w = UniPHDConfig().cost_weights
    # make query 2 of sample 0 the exact target: lowest cost
    out["keypoints"][0, 2] = target["keypoints"][0]
    out["boxes"][0, 2] = target["boxes"][0]
    out["logits"][0, 2] = 5.0
    idx = match(out, target, w)
    assert idx[0] == 2
    assert torch.equal(idx, match_cost(out, target, w).argmin(1))
    perm = torch.randperm(q)
    permuted = {k: v[:, perm] for k, v in out.items()}
    assert torch.equal(perm[match(permuted, target, w)], idx)


# --- model, training and CLI --------------------------------------------------------------------

def _tiny_config(vocab):
    return UniPHDConfig(image_size=64, backbone_widths=(8, 16, 24, 32), vocab=vocab, d_model=32, heads=2, ffn=64,
                        encoder_layers=1, decoder_layers=1, queries=3, points=2)


def _window_medians(history, key, width=10):
    values = np.array([h[key] for h in history])
    return np.array([np.median(values[i:i + width]) for i in range(0, len(values) - width + 1, width)])


def test_training_lowers_the_losses_and_learns_the_masks(tmp_path):
    """CI-sized run: a tiny UniPHD on 4 synthetic samples (point prompts, no flip), checkpointed and
    resumed after one step. With one-to-one matching the keypoint loss of so small a run wanders, and
    where it goes depends on float rounding (so on the CPU's kernels): the checks are properties with
    margins, set from 24 runs (training seeds 0-11, ATen's default and AVX2 kernels):
    the mask loss falls (dice, last 10-step median / first: 0.33-0.45, checked < 0.6), the total loss
    drops well below its start (best 10-step median / first: 0.28-0.81, checked < 0.9) and the prompted
    people's masks are found (oIoU 0.06-0.08 after one step -> 0.50-0.61, checked >= 0.4 and +0.3).
    No pose AP floor: it ranged 0.00-0.18 over those runs."""
    from visionlens_refer.uniphd.evaluate import evaluate_model
    from visionlens_refer.uniphd.text import build_vocab
    from visionlens_refer.uniphd.train import train

    torch.set_num_threads(1)  # the autouse fixture restores the caller's setting
    data = synthetic_refhuman(4, seed=5, size=64, people=(2, 2))
    ckpt = tmp_path / "ckpt.pt"
    cfg = _tiny_config(build_vocab(s.caption for s in data))
    kw = dict(batch_size=4, lr=1e-3, progress=False, checkpoint_every=50, flip=False, prompt_kinds=("point",))
    first = train(data, ckpt, steps=TRAIN_STEPS, config=cfg, time_limit=0.0, **kw)  # stops (and checkpoints) after 1 step
    assert first["steps"] == 1 and ckpt.is_file()
    resumed = train(data, ckpt, steps=TRAIN_STEPS, **kw)
    hist = resumed["history"]
    assert len(hist) == TRAIN_STEPS and hist[:1] == first["history"]  # resumed, not restarted
    assert np.isfinite([h["loss"] for h in hist]).all()
    dice, loss = _window_medians(hist, "dice"), _window_medians(hist, "loss")
    assert dice[-1] < 0.6 * dice[0], dice
    assert loss[1:].min() < 0.9 * loss[0], loss
    before, after = evaluate_model(first["model"], data, "point"), evaluate_model(resumed["model"], data, "point")
    assert after["oIoU"] >= 0.4 and after["oIoU"] > before["oIoU"] + 0.3, (before, after)
    scores = [after[k] for k in ("pose_AP", "pose_AP50", "mask_AP", "PCKh@0.5", "oIoU", "mIoU")]
    assert all(0 <= v <= 1 for v in scores), after


TRAIN_STEPS = 80


def test_model_bad_prompts():
    from visionlens_refer.uniphd.model import UniPHD

    model = UniPHD(_tiny_config(("<pad>", "<unk>", "<cls>", "person"))).eval()
    x = torch.rand(2, 3, 64, 64)
    with pytest.raises(InputError):
        model(x, {"kind": "gesture"})
    with pytest.raises(InputError):
        model(x, {"kind": "text", "texts": ["the person"]})
    with pytest.raises(InputError):
        model(x, {"kind": "point", "points": torch.rand(2, 2)})
    with pytest.raises(InputError):
        model(torch.rand(2, 3, 32, 32), {"kind": "point", "points": torch.rand(2, 1, 2)})


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory):
    from PIL import Image

    s = synthetic_refhuman(1, seed=11)[0]
    path = tmp_path_factory.mktemp("pose") / "scene.png"
    Image.fromarray(s.image).save(path)
    return path, s


def test_cli_predict_point_and_text(tmp_path, scene_file):
    assert PACKAGED_WEIGHTS.is_file(), "packaged UniPHD weights missing"
    path, s = scene_file
    x, y = s.scribbles[0, 5]
    out, js = tmp_path / "o.png", tmp_path / "o.json"
    assert main(["pose", "predict", str(path), "--point", f"{x},{y}", "--out", str(out), "--json", str(js)]) == 0
    from PIL import Image

    assert Image.open(out).size[0] >= 96
    kp = np.array(json.loads(js.read_text())["keypoints"])
    assert kp.shape == (17, 3)
    assert main(["pose", "predict", str(path), "--text", s.caption, "--out", str(tmp_path / "t.png")]) == 0


def test_cli_eval_and_bad_input(tmp_path, scene_file, capsys):
    path, _ = scene_file
    js = tmp_path / "m.json"
    assert main(["pose", "eval", "--synthetic", "6", "--prompt", "point", "--quiet", "--json", str(js)]) == 0
    rows = json.loads(js.read_text())
    assert rows[0]["prompt"] == "point" and 0 <= rows[0]["pose_AP"] <= 1
    out = tmp_path / "bad.png"
    for args in (["--point", "1,2", "--text", "x"], [], ["--point", "500,2"], ["--point", "a,b"], ["--text", "  "]):
        assert main(["pose", "predict", str(path), "--out", str(out)] + args) == 2
        assert not out.exists()
    (tmp_path / "broken.png").write_text("not an image")
    assert main(["pose", "predict", str(tmp_path / "broken.png"), "--point", "1,1", "--out", str(out)]) == 2
    assert main(["pose", "eval", "--weights", str(tmp_path / "none.pt")]) == 2
    assert main(["pose", "eval", "--data", str(tmp_path / "none.json"), "--images", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and all(line.startswith("error: ") for line in err)


def test_cli_predict_and_eval_keep_an_existing_file_unless_forced(tmp_path, scene_file, capsys, monkeypatch):
    """`pose predict` (its default IMAGE_pose.png in the current folder, or --json FILE) and `pose eval
    --json FILE` used to replace the user's file without a word: one line, exit 2, unless --force."""
    path, s = scene_file
    x, y = s.scribbles[0, 5]
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "scene_pose.png"
    mine.write_bytes(b"mine")
    assert main(["pose", "predict", str(path), "--point", f"{x},{y}"]) == 2
    one_error_line(capsys.readouterr().err, "scene_pose.png", "--force")
    assert mine.read_bytes() == b"mine"
    assert main(["pose", "predict", str(path), "--point", f"{x},{y}", "--force"]) == 0
    assert mine.read_bytes()[:4] == b"\x89PNG"
    js = tmp_path / "mine.json"
    js.write_bytes(b"mine")
    capsys.readouterr()
    assert main(["pose", "predict", str(path), "--point", f"{x},{y}", "--out", "o.png", "--json", str(js)]) == 2
    one_error_line(capsys.readouterr().err, str(js), "--json")
    assert js.read_bytes() == b"mine" and not (tmp_path / "o.png").exists()
    assert main(["pose", "eval", "--synthetic", "2", "--prompt", "point", "--quiet", "--json", str(js)]) == 2
    one_error_line(capsys.readouterr().err, str(js), "--force")
    assert js.read_bytes() == b"mine"
    assert main(["pose", "eval", "--synthetic", "2", "--prompt", "point", "--quiet", "--json", str(js), "--force"]) == 0
    assert json.loads(js.read_text())[0]["prompt"] == "point"


def test_cli_outputs_that_are_an_input_are_refused_even_with_force(tmp_path, scene_file, capsys):
    """`pose predict IMG --out IMG --force`, `--json IMG` and `pose eval --weights w.pt --json w.pt
    --force` used to overwrite their own input: one line, exit 2, the input untouched."""
    path, s = scene_file
    x, y = s.scribbles[0, 5]
    image = tmp_path / "in.png"
    image.write_bytes(path.read_bytes())
    weights = tmp_path / "w.pt"
    weights.write_bytes(PACKAGED_WEIGHTS.read_bytes())
    for argv, flags in (
            (["predict", str(image), "--text", "x", "--out", str(image)], ("--out", "IMAGE")),
            (["predict", str(image), "--point", f"{x},{y}", "--out", str(tmp_path / "o.png"), "--json", str(image)],
             ("--json", "IMAGE")),
            (["predict", str(image), "--point", f"{x},{y}", "--weights", str(weights), "--out", str(weights)],
             ("--out", "--weights")),
            (["eval", "--synthetic", "2", "--weights", str(weights), "--json", str(weights)], ("--json", "--weights")),
            (["train", "--data", str(image), "--images", str(tmp_path), "--out", str(image)], ("--out", "--data"))):
        assert main(["pose", *argv, "--no-resume" if argv[0] == "train" else "--force"]) == 2
        one_error_line(capsys.readouterr().err, *flags)
    assert image.read_bytes() == path.read_bytes() and weights.read_bytes() == PACKAGED_WEIGHTS.read_bytes()
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("text", ["the giraffe in a tuxedo", "x"])
def test_cli_predict_refuses_a_text_of_unknown_words(tmp_path, scene_file, capsys, text):
    """A prompt the small vocabulary knows no word of used to be predicted from <unk> tokens silently."""
    path, _ = scene_file
    out = tmp_path / "o.png"
    assert main(["pose", "predict", str(path), "--text", text, "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, f"no word of {text!r} is known", "vocabulary: arm", "--point")
    assert not out.exists()


def test_cli_convert_names_what_a_text_encoder_folder_lacks(tmp_path, capsys):
    """`--text-encoder hf:emptydir` used to print a cut-off transformers message ("Couldn't
    instantiate the backend tokenizer from one of:")."""
    folder = tmp_path / "enc"
    folder.mkdir()
    argv = ["pose", "convert", "--checkpoint", str(tmp_path / "official.pth"), "--text-encoder", f"hf:{folder}",
            "--out", str(tmp_path / "w.pt")]
    assert main(argv) == 2
    one_error_line(capsys.readouterr().err, str(folder), "config.json")
    (folder / "config.json").write_text("{}")
    (folder / "vocab.json").write_text("{}")  # a BPE vocabulary without its merges.txt
    assert main(argv) == 2
    one_error_line(capsys.readouterr().err, str(folder), "tokenizer files", "merges.txt")
    assert not (tmp_path / "w.pt").exists()


def test_cli_synth_keeps_a_users_file_and_rewrites_its_own(tmp_path, capsys):
    own = tmp_path / "own"
    for _ in range(2):  # a re-run into the folder an earlier synth wrote rewrites it
        assert main(["pose", "synth", "--n", "2", "--size", "48", "--out", str(own)]) == 0
    mine = tmp_path / "mine" / "images" / "scene_000001.png"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"mine")
    capsys.readouterr()
    assert main(["pose", "synth", "--n", "2", "--size", "48", "--out", str(tmp_path / "mine")]) == 2
    one_error_line(capsys.readouterr().err, str(mine))
    assert mine.read_bytes() == b"mine" and list((tmp_path / "mine").rglob("*")) == [mine.parent, mine]
    coco = tmp_path / "coco" / "annotations.json"  # a user's own COCO file of the same name
    coco.parent.mkdir()
    coco.write_text(json.dumps({"info": {"description": "my set"}, "images": [], "annotations": [], "categories": []}))
    assert main(["pose", "synth", "--n", "2", "--size", "48", "--out", str(coco.parent)]) == 2
    one_error_line(capsys.readouterr().err, str(coco))
    assert json.loads(coco.read_text())["info"] == {"description": "my set"}


def test_cli_train_never_replaces_a_file_that_is_not_its_checkpoint(tmp_path, capsys, monkeypatch):
    """`pose train --out` resumes its own checkpoint (or with --no-resume replaces it); any other file,
    or a folder, is refused before any work (--no-resume used to replace a user's file)."""
    import visionlens_refer.uniphd.cli as pose_cli

    tiny = ["pose", "train", "--synthetic", "2", "--steps", "1", "--size", "64", "--quiet"]
    own = tmp_path / "c.pt"
    assert main([*tiny, "--out", str(own)]) == 0
    mine = tmp_path / "mine.pt"
    mine.write_bytes(b"mine")
    real_samples = pose_cli._samples
    monkeypatch.setattr(pose_cli, "_samples", lambda *a: pytest.fail("work started before --out was checked"))
    for extra in ([], ["--no-resume"]):
        assert main([*tiny, "--out", str(mine), *extra]) == 2
        one_error_line(capsys.readouterr().err, str(mine))
        assert mine.read_bytes() == b"mine"
    assert main([*tiny, "--out", str(tmp_path)]) == 2
    one_error_line(capsys.readouterr().err, str(tmp_path), "folder")
    monkeypatch.setattr(pose_cli, "_samples", real_samples)
    assert main([*tiny, "--out", str(own), "--no-resume"]) == 0


def test_transformers_text_encoder_from_local_dir(tmp_path):
    """A transformers encoder (tiny random RoBERTa + word-level tokenizer saved locally) drives the
    text prompt; a missing directory gives a one-line AssetError."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaModel

    from visionlens.errors import AssetError
    from visionlens_refer.uniphd.model import UniPHD
    from visionlens_refer.uniphd.text import HFTextEncoder

    words = ["<pad>", "<unk>", "<s>", "</s>", "the", "person", "in", "a", "red", "shirt"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>").save_pretrained(tmp_path)
    RobertaModel(RobertaConfig(vocab_size=len(words), hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=48, max_position_embeddings=40, pad_token_id=0)).save_pretrained(tmp_path)
    cfg = _tiny_config(())
    cfg.text_encoder = str(tmp_path)
    model = UniPHD(cfg).eval()
    out = model(torch.rand(2, 3, 64, 64), {"kind": "text", "texts": ["the person in a red shirt", "the person"]})
    assert out["masks"].shape == (2, 3, 64, 64)
    with pytest.raises(AssetError, match="not found"):
        HFTextEncoder(str(tmp_path / "missing"))


def test_packaged_model_follows_positional_prompts():
    """The packaged synthetic model picks the prompted person: on 40 fresh scenes its point-prompt
    oIoU / PCKh / pose AP clearly beat the random-point control (measured oIoU 0.78 vs 0.21, PCKh 0.89 vs
    0.32, pose AP 0.47 vs 0.16)."""
    from visionlens_refer.uniphd import load_uniphd
    from visionlens_refer.uniphd.evaluate import evaluate_model

    model = load_uniphd()
    val = synthetic_refhuman(40, seed=20000, size=model.config.image_size)
    real, control = evaluate_model(model, val, "point"), evaluate_model(model, val, "point", control=True)
    assert real["oIoU"] > control["oIoU"] + 0.3 and real["PCKh@0.5"] > control["PCKh@0.5"] + 0.3
    assert real["pose_AP"] > control["pose_AP"] + 0.15


def test_cli_synth_interrupted_leaves_nothing_and_a_rerun_completes(tmp_path, capsys, monkeypatch):
    """Ctrl-C while the images are written used to leave PNGs without annotations.json, which the
    re-run then refused as not its own; now the folder is as it was and the re-run writes the set."""
    import visionlens_refer.uniphd.data as data

    real, calls = data.sample_image, []

    def interrupted(sample):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(sample)

    monkeypatch.setattr(data, "sample_image", interrupted)
    out = tmp_path / "synth"
    assert main(["pose", "synth", "--n", "8", "--size", "32", "--quiet", "--out", str(out)]) == 130
    assert len(calls) == 3 and not out.exists()
    earlier = tmp_path / "earlier"  # an existing folder stays as it was, the hidden staging folder removed
    assert main(["pose", "synth", "--n", "3", "--size", "32", "--quiet", "--out", str(earlier)]) == 0
    before = sorted(p.relative_to(earlier) for p in earlier.rglob("*"))
    calls.clear()
    assert main(["pose", "synth", "--n", "8", "--size", "32", "--quiet", "--out", str(earlier)]) == 130
    assert sorted(p.relative_to(earlier) for p in earlier.rglob("*")) == before
    monkeypatch.setattr(data, "sample_image", real)
    capsys.readouterr()
    assert main(["pose", "synth", "--n", "8", "--size", "32", "--quiet", "--out", str(out)]) == 0
    ann = json.loads((out / "annotations.json").read_text())
    assert ann["info"]["description"].startswith("visionlens pose synth") and len(ann["annotations"]) == 8
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted({im["file_name"] for im in ann["images"]})
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_cli_synth_rerun_with_fewer_samples_removes_its_earlier_images(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["pose", "synth", "--n", "9", "--size", "32", "--quiet", "--out", str(out)]) == 0
    assert main(["pose", "synth", "--n", "2", "--size", "32", "--quiet", "--out", str(out)]) == 0
    ann = json.loads((out / "annotations.json").read_text())
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted({im["file_name"] for im in ann["images"]})


def test_cli_synth_takes_quiet_and_shows_progress_on_a_terminal(tmp_path, monkeypatch):
    """`pose synth` reports progress through the core Progress (no bar under --quiet)."""
    import visionlens.core.progress as progress

    made = []
    real = progress.Progress

    class Recording(real):
        def __init__(self, total, label="", stream=None, enabled=True, unit="img"):
            made.append((total, label, enabled))
            super().__init__(total, label, stream, enabled, unit)

    monkeypatch.setattr(progress, "Progress", Recording)
    assert main(["pose", "synth", "--n", "3", "--size", "32", "--out", str(tmp_path / "a")]) == 0
    assert made and all(total == 3 and "pose synth" in label and enabled for total, label, enabled in made)
    made.clear()
    assert main(["pose", "synth", "--n", "3", "--size", "32", "--quiet", "--out", str(tmp_path / "b")]) == 0
    assert made and not any(enabled for _, _, enabled in made)


def test_cli_train_rerun_after_the_last_step_trains_nothing(tmp_path, capsys):
    """A finished run re-run used to print "trained N steps" (the loop did not run, step + 1 came back)."""
    tiny = ["pose", "train", "--synthetic", "2", "--size", "32", "--batch-size", "2", "--quiet",
            "--out", str(tmp_path / "c.pt")]
    assert main([*tiny, "--steps", "2"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    before = (tmp_path / "c.pt").read_bytes()
    assert main([*tiny, "--steps", "2", "--json"]) == 0
    said = json.loads(capsys.readouterr().out)
    assert said["steps"] == 2 and said["trained_steps"] == 0
    assert main([*tiny, "--steps", "2"]) == 0
    assert "trained 0 steps" in (text := capsys.readouterr().out) and "already at 2 steps" in text
    assert (tmp_path / "c.pt").read_bytes() == before
    assert main([*tiny, "--steps", "3"]) == 0
    assert "trained 1 step (resumed at step 2, now at 3)" in capsys.readouterr().out


@pytest.mark.parametrize("changed,named", [
    (["--size", "48"], "--size 48"), (["--text-encoder", "hf:{tmp}/enc"], "--text-encoder"),
])
def test_cli_train_resume_with_changed_model_settings_is_refused(tmp_path, capsys, monkeypatch, changed, named):
    """`--size 48` (or another --text-encoder) on a checkpoint trained at --size 32 used to resume
    silently with the checkpoint's settings: one line naming the setting, exit 2, before any work."""
    import visionlens_refer.uniphd.cli as pose_cli

    ckpt = tmp_path / "c.pt"
    tiny = ["pose", "train", "--synthetic", "2", "--steps", "1", "--batch-size", "2", "--quiet", "--out", str(ckpt)]
    assert main([*tiny, "--size", "32"]) == 0
    before = ckpt.read_bytes()
    capsys.readouterr()
    monkeypatch.setattr(pose_cli, "_samples", lambda *a: pytest.fail("work started before the settings were checked"))
    argv = [*tiny, "--steps", "2", "--size", "32", *(c.replace("{tmp}", str(tmp_path)) for c in changed)]
    assert main(argv) == 2
    one_error_line(capsys.readouterr().err, str(ckpt), named, "--no-resume")
    assert ckpt.read_bytes() == before


def test_cli_synth_writes_a_refhuman_set_that_loads_back(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["pose", "synth", "--n", "3", "--size", "64", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    samples = load_refhuman(out / "annotations.json", out / "images")
    assert len(samples) == 3 and all(s.mask.shape == (64, 64) and s.mask.any() for s in samples)
    assert samples[0].caption in said and "pose predict" in said
    x, y = (int(v) for v in said.split("--point ")[1].split(")")[0].split(","))
    assert samples[0].mask[y, x]  # the suggested point lies on the referred person


# --- bad input: one line, exit 2, before any work; bad items skipped with exit 1 ---------------------

class _Evil:
    """Pickles as a call to ``open(..., "w")``: a weights_only load must refuse it, not run it."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_cli_refuses_unsafe_foreign_and_non_finite_weights(tmp_path, scene_file, capsys):
    path, s = scene_file
    x, y = s.scribbles[0, 5]
    evil = tmp_path / "evil.pth"
    torch.save({"config": {}, "model": {}, "hook": _Evil(tmp_path / "pwned")}, evil)
    assert main(["pose", "eval", "--weights", str(evil), "--synthetic", "2"]) == 2
    one_error_line(capsys.readouterr().err, "evil.pth")
    assert not (tmp_path / "pwned").exists()
    out = tmp_path / "o.png"
    assert main(["pose", "predict", str(path), "--point", f"{x},{y}", "--weights", str(path), "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, path.name)
    blob = torch.load(PACKAGED_WEIGHTS, weights_only=True)
    name = next(k for k, v in blob["model"].items() if v.is_floating_point())
    blob["model"][name] = blob["model"][name].clone().fill_(float("inf"))
    torch.save(blob, tmp_path / "inf.pt")
    assert main(["pose", "predict", str(path), "--point", f"{x},{y}", "--weights", str(tmp_path / "inf.pt"),
                       "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, "inf.pt", name)
    blob = torch.load(PACKAGED_WEIGHTS, weights_only=True)
    torch.save({"config": blob["config"], "model": blob["model"]}, tmp_path / "weights.pt")
    assert main(["pose", "train", "--out", str(tmp_path / "weights.pt"), "--synthetic", "2", "--steps", "1",
                       "--quiet"]) == 2  # weights without optimizer state cannot be resumed
    one_error_line(capsys.readouterr().err, "weights.pt", "--no-resume")
    assert not out.exists()


@pytest.mark.parametrize("argv,flag", [
    (["train", "--size", "1000000"], "--size"), (["train", "--size", "98"], "--size"), (["synth", "--size", "8"], "--size"),
    (["synth", "--size", "5000"], "--size"), (["train", "--steps", "0"], "--steps"), (["train", "--lr", "nan"], "--lr"),
    (["train", "--lr", "-1"], "--lr"), (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--threads", "0"], "--threads"), (["train", "--time-limit", "nan"], "--time-limit"),
    (["train", "--eval-samples", "-1"], "--eval-samples"), (["train", "--seed", "-1"], "--seed"),
    (["eval", "--limit", "0"], "--limit"), (["eval", "--synthetic", "-5"], "--synthetic"),
    (["synth", "--n", "0"], "--n"), (["synth", "--n", "1e9"], "--n")])
def test_cli_rejects_bad_numbers(tmp_path, capsys, argv, flag):
    out = tmp_path / "out"
    tiny = {"train": ["--synthetic", "2", "--steps", "1", "--size", "64", "--quiet"], "eval": ["--synthetic", "2",
            "--prompt", "point", "--quiet"], "synth": ["--n", "1", "--size", "32"]}[argv[0]]  # fast if accepted
    assert main(["pose", argv[0], *tiny, *argv[1:], "--out" if argv[0] != "eval" else "--json", str(out)]) == 2
    one_error_line(capsys.readouterr().err, flag)
    assert not out.exists()


def test_cli_refuses_a_synthetic_set_too_large_for_memory(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["pose", "synth", "--n", "100000", "--size", "4096", "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, "--n", "--size")
    assert not out.exists()


@pytest.mark.parametrize("point", ["nan,nan", "inf,3", "3,-inf", "1,2,3"])
def test_cli_predict_refuses_non_finite_points(tmp_path, scene_file, capsys, point):
    path, _ = scene_file
    out = tmp_path / "o.png"
    assert main(["pose", "predict", str(path), "--point", point, "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, "--point")
    assert main(["pose", "predict", str(path), "--scribble", f"1,1;{point}", "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, "--scribble")
    assert not out.exists()


def _refhuman_set(tmp_path, n=3):
    ann = write_refhuman(synthetic_refhuman(n, seed=4), tmp_path / "ann.json", tmp_path / "images")
    return ann, json.loads(ann.read_text())


def _edit(entry, field, value):
    if value is _DROP:
        del entry[field]
    else:
        entry[field] = value


_DROP = object()


@pytest.mark.parametrize("where,field,value,expect", [
    ("annotations", "keypoints", _DROP, "'keypoints'"),
    ("annotations", "keypoints", [1.0] * 20, "'keypoints'"),
    ("annotations", "keypoints", [1.0] * 50 + [float("nan")], "'keypoints'"),
    ("annotations", "segmentation", _DROP, "'segmentation'"),
    ("annotations", "segmentation", {"counts": [1, 2], "size": [5, 5]}, "'segmentation'"),
    ("annotations", "bbox", [1, 2, 3], "'bbox'"),
    ("annotations", "area", "big", "'area'"),
    ("annotations", "scribble", [1.0] * 12, "'scribble'"),
    ("images", "height", _DROP, "'height'"),
    ("images", "width", -4, "'width'"),
    ("images", "caption", _DROP, "'caption'"),
    ("images", "file_name", 7, "'file_name'")])
def test_cli_eval_checks_the_refhuman_schema_first(tmp_path, capsys, where, field, value, expect):
    ann, data = _refhuman_set(tmp_path)
    _edit(data[where][1], field, value)
    ann.write_text(json.dumps(data))
    js = tmp_path / "m.json"
    assert main(["pose", "eval", "--data", str(ann), "--images", str(tmp_path / "images"), "--prompt", "point",
                       "--quiet", "--json", str(js)]) == 2
    line = one_error_line(capsys.readouterr().err, "ann.json", expect)
    entry = data["annotations"][1]
    assert f"annotation id {entry['id']}" in line  # the annotation, and for an image field also its image id
    assert where == "annotations" or f"image id {entry['image_id']}" in line
    assert not js.exists()


def test_loader_names_an_annotation_without_id_by_index(tmp_path):
    ann, data = _refhuman_set(tmp_path)
    del data["annotations"][2]["id"]
    ann.write_text(json.dumps(data))
    with pytest.raises(InputError, match="annotation at index 2.*'id'"):
        load_refhuman(ann, tmp_path / "images")


def test_cli_eval_skips_an_unreadable_image_with_exit_1(tmp_path, capsys):
    samples = synthetic_refhuman(5, seed=4)
    ann = write_refhuman(samples, tmp_path / "ann.json", tmp_path / "images")
    broken = tmp_path / "images" / samples[-1].file_name
    assert samples[0].file_name != broken.name
    broken.write_bytes(b"not a png")
    js = tmp_path / "m.json"
    assert main(["pose", "eval", "--data", str(ann), "--images", str(tmp_path / "images"), "--prompt", "all",
                       "--quiet", "--json", str(js)]) == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and broken.name in lines[0] and "Traceback" not in captured.err, captured.err
    rows = json.loads(js.read_text())
    bad = sum(s.file_name == broken.name for s in samples)
    assert [r["samples"] for r in rows] == [5 - bad] * 3 and all(r["skipped"] for r in rows)


def test_a_non_finite_loss_stops_training(tmp_path, monkeypatch):
    import visionlens_refer.uniphd.train as train_module
    from visionlens_refer.uniphd.text import build_vocab

    data = synthetic_refhuman(2, seed=5, size=64, people=(2, 2))
    monkeypatch.setattr(train_module, "criterion", lambda out, target, config: (out["masks"].sum() * float("nan"), {}))
    with pytest.raises(InputError, match="diverged.*step 1.*lower --lr") as err:
        train_module.train(data, tmp_path / "c.pt", steps=3, batch_size=2, config=_tiny_config(build_vocab(
            s.caption for s in data)), progress=False)
    assert "\n" not in str(err.value) and not (tmp_path / "c.pt").exists()


def test_json_outputs_are_strict(tmp_path, scene_file, monkeypatch):
    import visionlens_refer.uniphd.evaluate as evaluate_module

    def refuse(token):
        raise AssertionError(f"non-strict JSON token {token}")

    monkeypatch.setattr(evaluate_module, "pckh", lambda pred, gt: float("nan"))
    js = tmp_path / "m.json"
    assert main(["pose", "eval", "--synthetic", "3", "--prompt", "point", "--quiet", "--json", str(js)]) == 0
    rows = json.loads(js.read_text(), parse_constant=refuse)
    assert rows[0]["PCKh@0.5"] is None
    out = tmp_path / "synth"
    assert main(["pose", "synth", "--n", "2", "--size", "48", "--out", str(out)]) == 0
    json.loads((out / "annotations.json").read_text(), parse_constant=refuse)


@pytest.mark.parametrize("extra,flag", [(["--limit", "3"], "--limit"), (["--images", "."], "--images")])
def test_cli_eval_refuses_data_flags_with_synthetic_samples(tmp_path, capsys, extra, flag):
    js = tmp_path / "m.json"
    assert main(["pose", "eval", "--synthetic", "6", *extra, "--quiet", "--json", str(js)]) == 2
    one_error_line(capsys.readouterr().err, flag, "--data")
    assert not js.exists()


def test_cli_eval_refuses_synthetic_with_data(tmp_path, capsys):
    ann, _ = _refhuman_set(tmp_path)
    assert main(["pose", "eval", "--data", str(ann), "--images", str(tmp_path / "images"), "--synthetic", "6",
                 "--quiet"]) == 2
    one_error_line(capsys.readouterr().err, "--synthetic", "--data")


@pytest.mark.parametrize("command,samples", [("train", "2000"), ("eval", "300")])
def test_help_says_what_synthetic_0_means(capsys, command, samples):
    assert main(["pose", command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default 0, meaning {samples})" in text and "--device" in text and "(default: auto)" in text


@pytest.mark.parametrize("flag,value", [("--point", "-5,3"), ("--point", "3,-5"), ("--scribble", "-5,3;4,4")])
def test_cli_predict_takes_negative_coordinates_and_range_checks_them(tmp_path, scene_file, capsys, flag, value):
    """`--point -5,3` used to be argparse's "expected one argument": now the value is read and
    refused in one line naming the image's bounds."""
    path, _ = scene_file
    out = tmp_path / "o.png"
    assert main(["pose", "predict", str(path), flag, value, "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, flag, "outside the 96x96 image")
    assert not out.exists()
