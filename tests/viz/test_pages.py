"""The HTML pages: Jinja2 templates with autoescape, one stylesheet, a colour bar on every page,
the true label with a mark where the prediction is wrong, headings that name a layer once, the
report card's precision, best values and curves, and the page skipped (one line) without Jinja2."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import one_error_line
from visionlens.cli import main
from visionlens.models import imagenet_classes
from visionlens.pipeline import explain_files, report_section
from visionlens.viz import render
from visionlens.viz.labels import method_heading, true_label
from visionlens.viz.pairs import write_pair_flows, write_pair_report
from visionlens.viz.report import write_report
from visionlens.viz.report_card import format_ci, report_card_html


def _row(name="a.png", **extra) -> dict:
    return {"file": name, "view": "a.png", "overlays": {"gradcam": "a.gradcam.png"}, "predicted": "tabby (281)",
            "probability": 0.9, "target": "tabby (281)", **extra}


def _explain_page(tmp_path, rows, **section) -> str:
    dest = write_report(tmp_path / "index.html", "t", [{"title": "m — gradcam", "methods": ["gradcam"], "rows": rows,
                                                        "failures": [], "base": "", **section}])
    return dest.read_text(encoding="utf-8")


def _pair_section() -> dict:
    return {"query": "q.png", "methods": ["sfam"], "failures": [], "rows": [{
        "file": "m.png", "rank": 1, "score": 0.9, "query_view": "q.png", "match_view": "m.png",
        "query_overlays": {"sfam": "q.sfam.png"}, "match_overlays": {"sfam": "m.sfam.png"}}]}


def _report(rows=None, **extra) -> dict:
    rows = rows or [
        {"model": "m", "method": "gradcam", "metric": "deletion", "mean": 0.20, "ci95": 0.26133, "n": 10, "direction": "lower"},
        {"model": "m", "method": "cam", "metric": "deletion", "mean": 0.31, "ci95": 0.05, "n": 10, "direction": "lower"},
        {"model": "m", "method": "gradcam", "metric": "insertion", "mean": 0.5, "ci95": 0.1, "n": 10, "direction": "higher"},
        {"model": "m", "method": "cam", "metric": "insertion", "mean": 0.7, "ci95": 0.1, "n": 10, "direction": "higher"},
    ]
    return {"rows": rows, "skipped": [], **extra}


def _bars(page: str) -> list[str]:
    return re.findall(r'class="colorbar" data-kind="(\w+)"', page)


def test_every_page_has_a_colour_bar_with_its_end_labels(tmp_path):
    explain = _explain_page(tmp_path, [_row()])
    assert _bars(explain) == ["normalised"] and ">low<" in explain and ">high<" in explain
    signed = _explain_page(tmp_path, [_row()], signed=["gradcam"])
    assert _bars(signed) == ["signed"] and all(f">{t}<" in signed for t in ("−max", "0", "+max"))
    pairs = write_pair_report(tmp_path / "p.html", "pairs", [_pair_section()]).read_text()
    assert _bars(pairs) == ["normalised"]
    card = report_card_html(_report(), {}, ["m.gradcam.0.png"])
    assert _bars(card) == ["normalised"]
    view = Image.new("RGB", (32, 32))
    flows = (np.random.default_rng(0).random((2, 32, 32), dtype=np.float32),) * 2
    write_pair_flows(tmp_path / "flow", (view, view), flows, ["l1", "l2"], {"model": "m", "similarity": 0.5})
    assert _bars((tmp_path / "flow" / "index.html").read_text()) == ["normalised"]


def test_pages_share_the_one_stylesheet_and_wrap(tmp_path):
    css = (Path(render.__file__).with_name("templates") / "style.css").read_text()
    assert "flex-wrap: wrap" in css
    pairs = write_pair_report(tmp_path / "p.html", "pairs", [_pair_section()]).read_text()
    assert css.strip() in pairs and css.strip() in _explain_page(tmp_path, [_row()])
    assert "<table" not in pairs and 'class="figs"' in pairs  # cards of wrapping figures, not a wide table


def test_wrong_prediction_is_marked_and_a_right_one_is_not(tmp_path):
    wrong = _explain_page(tmp_path, [_row(label="tiger cat (282)", wrong=True)])
    assert "✗ wrong" in wrong and 'class="card wrong"' in wrong and "true label: tiger cat (282)" in wrong
    right = _explain_page(tmp_path, [_row(label="tabby (281)", wrong=False)])
    assert "✗ wrong" not in right and "card wrong" not in right and "true label: tabby (281)" in right
    unknown = _explain_page(tmp_path, [_row()])
    assert "true label" not in unknown and "✗ wrong" not in unknown


def test_true_label_only_for_the_bundled_labelled_photos(imagenet_photos, tmp_path):
    names = imagenet_classes()
    photo = imagenet_photos[0]
    label = int(photo.stem.rsplit("_", 1)[1])
    assert true_label({"file": str(photo), "predicted": label, "predicted_name": names[label]}) == {
        "label": f"{names[label]} ({label})", "wrong": False}
    other = (label + 1) % 1000
    assert true_label({"file": str(photo), "predicted": other, "predicted_name": names[other]})["wrong"] is True
    copy = tmp_path / photo.name  # same name elsewhere: not known to be labelled
    copy.write_bytes(photo.read_bytes())
    assert true_label({"file": str(copy), "predicted": other, "predicted_name": names[other]}) == {}
    assert true_label({"file": str(photo), "predicted": 1, "predicted_name": "class 1"}) == {}  # not ImageNet names


def test_explain_page_names_each_layer_once_marks_signed_maps_and_flags_wrong(mobilenet, imagenet_photos, tmp_path):
    assert method_heading("relevance-cam@features.13", "features.13") == "relevance-cam@features.13"
    assert method_heading("gradcam", "features.18") == "gradcam @ features.18"
    out = tmp_path / "o"
    summary = explain_files(imagenet_photos[:1], mobilenet, ["gradcam", "relevance-cam@features.13"], out_dir=out,
                            progress=False, cmap="inferno")
    page = (out / "index.html").read_text()
    heading = re.search(r"<h2>(.*?)</h2>", page).group(1)
    assert heading.count("features.13") == 1, heading
    assert sorted(_bars(page)) == ["normalised", "signed"] and "(signed)" in page
    row = summary["images"][0]
    assert "true label:" in page and ("✗ wrong" in page) == (row["predicted"] != int(imagenet_photos[0].stem[-3:]))
    for name in row["overlays"].values():
        assert (out / name).is_file()
    flipped = {**summary, "images": [{**row, "predicted": 1, "predicted_name": imagenet_classes()[1]}]}
    wrong = write_report(tmp_path / "w.html", "t", [report_section(flipped, "o")]).read_text()
    assert "✗ wrong" in wrong


def test_file_names_are_escaped_by_the_templates(tmp_path):
    name = "<script>alert(1).png"
    page = _explain_page(tmp_path, [_row(name, view=name)])
    assert "<script>" not in page and "<b>&lt;script&gt;alert(1).png</b>" in page
    assert 'src="%3Cscript%3Ealert%281%29.png"' in page
    card = report_card_html(_report(_report()["rows"], skipped=[{"model": "m", "method": "<b>x</b>", "reason": "r"}]),
                            {"note": "<script>"}, [])
    assert "<script>" not in card and "<b>x</b>" not in card


def test_without_jinja2_the_page_is_skipped_with_one_line_and_the_pngs_are_written(imagenet_photos, tmp_path,
                                                                                  monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "jinja2", None)  # `import jinja2` raises ImportError
    monkeypatch.setitem(render._state, "warned", False)
    out = tmp_path / "o"
    assert main(["explain", str(imagenet_photos[0]), "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'visionlens[cli]'" in lines[0] and "Traceback" not in err
    assert not (out / "index.html").exists()
    assert (out / "summary.json").is_file() and len(list(out.glob("*.png"))) == 2  # the view and the overlay


def test_unknown_cmap_on_the_command_line_is_one_line_before_any_output(imagenet_photos, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["explain", str(imagenet_photos[0]), "--out", str(out), "--quiet", "--device", "cpu",
                 "--cmap", "rainbow"]) == 2
    one_error_line(capsys.readouterr().err, "rainbow", "viridis", "rdbu", "jet")
    assert not out.exists()


@pytest.mark.parametrize("mean, ci, shown", [
    (20.0, 26.133, "20 ± 26"), (0.4567, 0.0123, "0.457 ± 0.012"), (0.5, 0.1, "0.50 ± 0.10"),
    (1234.5, 260.0, "1230 ± 260"), (0.5, None, "0.5"), (0.5, float("nan"), "0.5"), (1.0, 0.0, "1 ± 0"),
    (None, None, "—"),
])
def test_ci_precision(mean, ci, shown):
    assert format_ci(mean, ci) == shown


def test_report_card_marks_the_best_per_column_and_captions_examples():
    card = report_card_html(_report(), {}, ["m.0.png", "m.cam.0.png", "m.gradcam.0.png", "m.gradcam.1.png"])
    best = re.findall(r'<td class="best"[^>]*>([^<]*)</td>', card)
    assert best == ["0.20 ± 0.26 (n=10) ★", "0.70 ± 0.10 (n=10) ★"]  # lower deletion (gradcam), higher insertion (cam)
    assert "0.200" not in card and "+/-" not in card
    assert "<figcaption>gradcam, image 2</figcaption>" in card and "<figcaption>image 1 (input)</figcaption>" in card
    tied = [{**r, "mean": 0.5} for r in _report()["rows"]]
    assert 'class="best"' not in report_card_html(_report(tied), {}, [])
    # identical maps scored in different batches differ by float rounding: both are the best (before: one)
    rows = _report()["rows"]
    noise = [{**r, "mean": r["mean"] * (1 + 5e-8)} if r["method"] == "gradcam" and r["metric"] == "deletion" else r
             for r in rows]
    noise += [{**r, "method": "xgradcam", "mean": r["mean"] * (1 - 5e-8)} for r in noise
              if r["method"] == "gradcam" and r["metric"] == "deletion"]
    marked = re.findall(r'<td class="best"[^>]*>([^<]*)</td>', report_card_html(_report(noise), {}, []))
    assert marked.count("0.20 ± 0.26 (n=10) ★") == 2


def test_report_card_draws_deletion_and_insertion_curves_per_method():
    curves = {"m": {"gradcam": {"deletion": [1.0, 0.4, 0.1], "insertion": [0.1, 0.6, 1.0]},
                    "cam": {"deletion": [1.0, 0.7, 0.2], "insertion": [0.1, 0.3, 1.0]}}}
    card = report_card_html(_report(curves=curves), {}, [])
    assert card.count("<svg") == 2 and card.count("<polyline") == 4
    points = re.findall(r'points="([^"]*)"', card)
    first = [tuple(map(float, p.split(","))) for p in points[0].split()]
    assert len(first) == 3 and first[0][0] < first[1][0] < first[2][0]  # left to right
    assert first[0][1] < first[2][1]  # deletion falls: a larger y is lower on the screen
    assert "Deletion and insertion curves" not in report_card_html(_report(), {}, [])


def test_pair_page_gives_signed_similarity_maps_their_own_colour_bar(tmp_path):
    section = _pair_section()
    section["methods"] = ["sfam", "relevance-cam"]
    for row in section["rows"]:
        row["query_overlays"]["relevance-cam"] = "q.rc.png"
        row["match_overlays"]["relevance-cam"] = "m.rc.png"
    page = write_pair_report(tmp_path / "p.html", "pairs", [section]).read_text()
    assert _bars(page) == ["normalised", "signed"]
    assert "query · relevance-cam (signed)" in page and "query · sfam (signed)" not in page


def test_the_true_label_of_a_users_photo_fetches_no_sample_photos(tmp_path, monkeypatch):
    """The labels come from the bundled photos already on this machine; with none there, nothing
    is fetched for a user's own photo (explain used to download all 20 to label one)."""
    from visionlens import assets

    monkeypatch.setenv("VISIONLENS_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("VISIONLENS_OFFLINE", raising=False)

    def no_fetch(asset):
        raise AssertionError(f"fetched {asset.name}")

    monkeypatch.setattr(assets, "_fetch_on_first_use", no_fetch)
    assert true_label({"file": str(tmp_path / "mine.jpg"), "predicted": 1, "predicted_name": "goldfish"}) == {}
