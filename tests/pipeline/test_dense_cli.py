"""`visionlens explain` on torchvision detectors and segmenters: boxes and classes as --target, the
box drawn, the region shown, a bad item skipped in one line. Random-init weights saved locally
(the detector's head biased towards one class so that it detects something); no downloads."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import one_error_line, strict_json
from visionlens.cli import main

tvm = pytest.importorskip("torchvision.models")
from torchvision.models import detection, segmentation  # noqa: E402

DETECTOR = "fasterrcnn_mobilenet_v3_large_320_fpn"
SEGMENTER = "lraspp_mobilenet_v3_large"
CAT = 17  # COCO's "cat"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    det = detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None)
    with torch.no_grad():  # every proposal scores as a cat: a random detector that detects
        det.roi_heads.box_predictor.cls_score.bias[CAT] = 8.0
    torch.save(det.state_dict(), folder / "det.pt")
    seg = segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None)
    torch.save(seg.state_dict(), folder / "seg.pt")
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray((rng.random((240, 320, 3)) * 255).astype("uint8")).save(folder / f"{name}.png")
    return folder


def _explain(capsys, *argv):
    code = main(["explain", *argv, "--device", "cpu", "--quiet"])
    return code, capsys.readouterr()


def test_detector_explains_its_top_detections_with_boxes(weights, photos, tmp_path, capsys):
    out = tmp_path / "det"
    code, io = _explain(capsys, str(photos), "--model", f"torchvision:{DETECTOR}", "--weights", str(weights / "det.pt"),
                        "--method", "gradcam,eigencam,layercam", "--score-threshold", "0", "--top", "2",
                        "--out", str(out))
    assert code == 0, io.err
    summary = strict_json((out / "summary.json").read_text())
    assert summary["task"] == "detection" and summary["layer"].startswith("backbone.body.")
    assert summary["model_source"]["preprocess"]["std"] == [1.0, 1.0, 1.0]  # the detector normalises itself
    for row in summary["images"]:
        assert len(row["targets"]) == 2
        for t in row["targets"]:
            assert t["name"] == "cat" and 0.0 <= t["score"] <= 1.0 and len(t["box"]) == 4
            for method, name in t["files"].items():
                picture = np.asarray(Image.open(out / name).convert("RGB"))
                x0, y0 = (max(0, int(round(v))) for v in t["box"][:2])
                assert tuple(picture[y0 + 1, x0 + 5]) == (255, 64, 64) or tuple(picture[y0 + 5, x0 + 1]) == (255, 64, 64)
            raws = np.load(out / t["raw"])
            assert set(raws.files) == {"gradcam", "eigencam", "layercam"}
            assert all(np.isfinite(raws[k]).all() for k in raws.files)
    assert "<section>" in (out / "index.html").read_text() and "cat" in (out / "index.html").read_text()


def test_a_box_target_explains_the_detection_it_overlaps(weights, photos, tmp_path, capsys):
    first = tmp_path / "first"
    code, io = _explain(capsys, str(photos / "a.png"), "--model", f"torchvision:{DETECTOR}", "--weights",
                        str(weights / "det.pt"), "--score-threshold", "0", "--top", "1", "--out", str(first))
    assert code == 0, io.err
    image = strict_json((first / "summary.json").read_text())["images"][0]
    box, file_box = image["targets"][0]["box"], image["targets"][0]["file_box"]  # in the 427x320 view, the 320x240 file
    width, height = image["size"]
    assert (width, height) == (427, 320)
    assert np.allclose(np.array(file_box) * np.array([width / 320, height / 240] * 2), box, atol=0.02)
    shifted = [file_box[0] + 1, file_box[1] + 1, file_box[2] + 1, file_box[3] + 1]  # a box in the file's pixels
    out = tmp_path / "box"
    code, io = _explain(capsys, str(photos / "a.png"), "--model", f"torchvision:{DETECTOR}", "--weights",
                        str(weights / "det.pt"), "--target", ",".join(f"{v:.1f}" for v in shifted), "--out", str(out))
    assert code == 0, io.err
    target = strict_json((out / "summary.json").read_text())["images"][0]["targets"][0]
    assert target["why"].startswith("box ") and np.allclose(target["box"], box, atol=1e-3)


def test_a_wide_photo_is_viewed_at_the_size_the_detector_resizes_it_to(weights, tmp_path, capsys):
    """The view's long side is capped at the transform's max_size (640 here) as the detector caps it,
    not left at short side 320 (1200 x 320), which the detector would then have shrunk again."""
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (240, 900, 3), dtype=np.uint8)).save(tmp_path / "wide.png")
    out = tmp_path / "wide"
    code, io = _explain(capsys, str(tmp_path / "wide.png"), "--model", f"torchvision:{DETECTOR}", "--weights",
                        str(weights / "det.pt"), "--score-threshold", "0", "--top", "1", "--out", str(out))
    assert code == 0, io.err
    width, height = strict_json((out / "summary.json").read_text())["images"][0]["size"]
    assert (width, height) == (640, 171)  # 900 x 240 scaled by min(320 / 240, 640 / 900)
    model = detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None).eval()
    resized, _ = model.transform.resize(torch.zeros(3, height, width), None)
    assert tuple(resized.shape[-2:]) == (height, width)  # the detector takes the view as it is


def test_a_box_that_overlaps_a_detection_little_is_skipped_not_explained(weights, photos, tmp_path, capsys):
    """A box matched any detection it touched (IoU 0.02 explained an unrelated one); now it needs
    IoU >= 0.5, as BoxTarget and pytorch-grad-cam."""
    first = tmp_path / "first"
    code, io = _explain(capsys, str(photos / "a.png"), "--model", f"torchvision:{DETECTOR}", "--weights",
                        str(weights / "det.pt"), "--score-threshold", "0", "--top", "1", "--out", str(first))
    x0, y0, x1, y1 = strict_json((first / "summary.json").read_text())["images"][0]["targets"][0]["file_box"]
    corner = [x1 - 0.1 * (x1 - x0), y1 - 0.1 * (y1 - y0), x1 + (x1 - x0), y1 + (y1 - y0)]  # touches its corner only
    code, io = _explain(capsys, str(photos / "a.png"), "--model", f"torchvision:{DETECTOR}", "--weights",
                        str(weights / "det.pt"), "--target", ",".join(f"{v:.1f}" for v in corner) + ";cat",
                        "--out", str(tmp_path / "o"))
    assert code == 0, io.err
    image = strict_json((tmp_path / "o" / "summary.json").read_text())["images"][0]
    assert [t["why"] for t in image["targets"]] == ["best cat"]
    assert image["skipped"][0]["why"].startswith("no detection overlaps this box with IoU >= 0.5")


def test_detections_without_area_are_never_explained():
    from visionlens.dense import detection_targets

    class Named:
        def class_name(self, index):
            return f"class {index}"

    dets = {"boxes": torch.tensor([[32.0, 64, 32, 64], [10, 10, 40, 50]]), "scores": torch.tensor([0.9, 0.3]),
            "labels": torch.tensor([1, 2])}
    targets, skipped = detection_targets(dets, [], Named(), threshold=0.5, top=3)
    assert [t["label"] for t in targets] == [2]  # the best detection with an area, though below the threshold
    targets, skipped = detection_targets(dets, [("class", 1)], Named(), threshold=0.5, top=3)
    assert not targets and skipped[0]["why"] == "only detections without area"


@pytest.mark.parametrize("model, file, target, message", [
    (DETECTOR, "det.pt", "10,10,5,40", "x1 > x0"),
    (SEGMENTER, "seg.pt", "10,10,50,50", "boxes choose detections"),  # a box given to a segmenter
])
def test_bad_boxes_are_one_line_before_any_work(weights, photos, tmp_path, capsys, model, file, target, message):
    code, io = _explain(capsys, str(photos / "a.png"), "--model", f"torchvision:{model}", "--weights",
                        str(weights / file), "--target", target, "--out", str(tmp_path / "o"))
    assert code == 2
    one_error_line(io.err, message)
    assert not (tmp_path / "o").exists()


def test_segmenter_explains_the_largest_class_or_given_classes(weights, photos, tmp_path, capsys):
    out = tmp_path / "seg"
    code, io = _explain(capsys, str(photos / "a.png"), "--model", f"torchvision:{SEGMENTER}", "--weights",
                        str(weights / "seg.pt"), "--method", "gradcam,layercam", "--out", str(out))
    assert code == 0, io.err
    summary = strict_json((out / "summary.json").read_text())
    assert summary["task"] == "segmentation"
    target = summary["images"][0]["targets"][0]
    assert target["pixels"] > 0 and target["why"] == "largest"
    assert (out / target["region"]).is_file() and set(target["files"]) == {"gradcam", "layercam"}
    # a class named by the user that is present, and one that is not: the first explained, the second noted
    present = target["name"]
    absent = next(n for n in ("cat", "dog", "bus") if n != present)
    out2 = tmp_path / "seg2"
    code, io = _explain(capsys, str(photos / "a.png"), "--model", f"torchvision:{SEGMENTER}", "--weights",
                        str(weights / "seg.pt"), "--target", f"{present},{absent}", "--out", str(out2))
    row = strict_json((out2 / "summary.json").read_text())["images"][0]
    if absent in {t["name"] for t in row["targets"]}:
        pytest.skip("the random segmenter predicts the second class too")
    assert code == 0 and [t["name"] for t in row["targets"]] == [present]
    assert row["skipped"][0]["name"] == absent


def test_an_image_with_nothing_to_explain_is_skipped_in_one_line(weights, photos, tmp_path, capsys):
    out = tmp_path / "none"
    code, io = _explain(capsys, str(photos / "a.png"), "--model", f"torchvision:{SEGMENTER}", "--weights",
                        str(weights / "seg.pt"), "--target", "__background__,aeroplane,bicycle,bird,boat,bottle",
                        "--out", str(out))
    summary = strict_json((out / "summary.json").read_text())
    if summary["images"]:
        pytest.skip("the random segmenter predicts one of the six classes")
    assert code == 1
    one_error_line(io.err, "a.png", "no pixel of")
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "summary.json"]  # nothing half-written


def test_boxes_and_classes_together_and_what_matches_nothing_is_skipped(weights, photos, tmp_path, capsys):
    """--target "BOX;CLASS" (the docs' example) explains both; a box that overlaps no detection and a
    class with no detection are listed under skipped, not silently replaced by another detection."""
    det = ["--model", f"torchvision:{DETECTOR}", "--weights", str(weights / "det.pt")]
    code, io = _explain(capsys, str(photos / "a.png"), *det, "--top", "1", "--out", str(tmp_path / "first"))
    file_box = strict_json((tmp_path / "first" / "summary.json").read_text())["images"][0]["targets"][0]["file_box"]
    out = tmp_path / "mixed"
    code, io = _explain(capsys, str(photos / "a.png"), *det, "--target", ",".join(map(str, file_box)) + ";cat",
                        "--out", str(out))
    assert code == 0, io.err
    row = strict_json((out / "summary.json").read_text())["images"][0]
    assert [t["why"].split()[0] for t in row["targets"]] == ["box", "best"] and row["skipped"] == []
    out = tmp_path / "partly"
    code, io = _explain(capsys, str(photos / "a.png"), *det, "--target", "500,500,510,510;cat;dog", "--out", str(out))
    assert code == 0, io.err
    row = strict_json((out / "summary.json").read_text())["images"][0]
    assert [t["name"] for t in row["targets"]] == ["cat"]
    assert [s["why"] for s in row["skipped"]] == ["no detection overlaps this box with IoU >= 0.5",
                                                  "not detected in this image"]
    out = tmp_path / "nothing"
    code, io = _explain(capsys, str(photos / "a.png"), *det, "--target", "500,500,510,510", "--out", str(out))
    assert code == 1
    one_error_line(io.err, "a.png", "no detection overlaps this box")


def test_a_classifier_only_method_on_a_detector_is_one_line_before_any_work(weights, photos, tmp_path, capsys):
    code, io = _explain(capsys, str(photos / "a.png"), "--model", f"torchvision:{DETECTOR}", "--weights",
                        str(weights / "det.pt"), "--method", "gradcam,relevance-cam", "--out", str(tmp_path / "o"))
    assert code == 2
    one_error_line(io.err, "--method relevance-cam", "detection")
    assert not (tmp_path / "o").exists()


def test_detection_flags_on_a_segmenter_are_a_warning(weights, photos, tmp_path, capsys):
    code, io = _explain(capsys, str(photos / "a.png"), "--model", f"torchvision:{SEGMENTER}", "--weights",
                        str(weights / "seg.pt"), "--top", "2", "--out", str(tmp_path / "o"))
    assert code == 0
    assert [line for line in io.err.splitlines() if line.startswith("warning:")] == [
        f"warning: --top and --score-threshold choose detections; torchvision:{SEGMENTER} is not a detector, so "
        "they are ignored"]
