"""`--json` on every command that writes results (one strict JSON object on stdout, the human
messages on stderr) and the tqdm progress bars of core/progress.py (rate and time left from the
work of this run only; off without a terminal, with --quiet, or without tqdm)."""

from __future__ import annotations

import argparse
import io
import re
import shutil
import sys
from importlib.metadata import PackageNotFoundError, distribution

import numpy as np
import pytest
from PIL import Image

from helpers import strict_json
from visionlens.cli import JSON_COMMANDS, build_parser, main
from visionlens.core.progress import Progress


def _json_run(capsys, argv: list[str], code: int = 0) -> tuple[dict, str]:
    """Run ``argv --json``; its stdout must be exactly one strict JSON object. Returns it and stderr."""
    assert main([*argv, "--json"]) == code
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 1, out[:2000]
    summary = strict_json(lines[0])
    assert isinstance(summary, dict)
    return summary, err


def _installed(dist: str) -> None:
    try:
        distribution(dist)
    except PackageNotFoundError:
        pytest.skip(f"{dist} is not installed")


def _leaves(parser, path=()):
    """(command path, parser) for every parser that runs a command (no sub-commands below it)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
    for action in subs:
        for name, sub in action.choices.items():
            yield from _leaves(sub, (*path, name))


SYSTEM_LEAVES = [("sata", "evaluate"), ("adapt",), ("hsi-cd", "train"), ("hsi-cd", "eval"), ("hsi-cd", "map"),
                 ("refer",), ("pose", "train"), ("pose", "eval"), ("pose", "predict"), ("pose", "synth")]


def test_every_command_that_writes_results_has_json():
    leaves = {path: p for path, p in _leaves(build_parser()) if p.prefix_chars != "\0"}  # not the pointers
    wanted = [(c,) for c in JSON_COMMANDS] + [p for p in SYSTEM_LEAVES if p in leaves]
    missing = [" ".join(p) for p in wanted if "--json" not in leaves[p].format_usage()]
    assert not missing, missing


# ---- the core commands ----------------------------------------------------------------------

def test_world_json(tmp_path, capsys):
    summary, err = _json_run(capsys, ["world", "--n", "2", "--out", str(tmp_path / "w.png")])
    assert summary["n"] == 2 and summary["out"] == str(tmp_path / "w.png") and (tmp_path / "w.png").is_file()
    assert "wrote" in err  # the human line moved to stderr


def test_explain_json(tmp_path, capsys, mobilenet, imagenet_photos):
    summary, err = _json_run(capsys, ["explain", str(imagenet_photos[0]), "--method", "cam", "--device", "cpu",
                                      "--out", str(tmp_path / "e"), "--quiet"])
    assert len(summary["images"]) == 1 and summary["failures"] == []
    assert all(p.startswith(str(tmp_path)) for p in summary["written"]) and "explained 1 image" in err


def test_explain_pair_and_retrieve_json(tmp_path, capsys, mobilenet, imagenet_photos):
    a, b = map(str, imagenet_photos[:2])
    summary, _ = _json_run(capsys, ["explain-pair", a, b, "--model", "mobilenet_v2", "--device", "cpu",
                                    "--out", str(tmp_path / "p")])
    assert -1.0 <= summary["similarity"] <= 1.0 and summary["methods"] == ["sfam"]
    assert summary["page"].endswith("index.html")
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for photo in imagenet_photos[1:4]:
        shutil.copy(photo, gallery / photo.name)
    summary, _ = _json_run(capsys, ["retrieve", a, "--gallery", str(gallery), "--top", "1", "--no-cache",
                                    "--device", "cpu", "--out", str(tmp_path / "r"), "--quiet"])
    assert summary["gallery"]["images"] == 3 and len(summary["queries"][0]["matches"]) == 1


def test_evaluate_json(tmp_path, capsys):
    summary, _ = _json_run(capsys, ["evaluate", "--models", "world-cnn", "--methods", "gradcam", "--n", "2",
                                    "--batch-size", "2", "--metrics", "pointing-game", "--device", "cpu",
                                    "--out", str(tmp_path / "ev"), "--quiet"])
    assert summary["rows"] and {r["metric"] for r in summary["rows"]} == {"pointing-game"}
    assert summary["skipped"] == [] and any(p.endswith("report.json") for p in summary["written"])


def test_bank_json(tmp_path, capsys):
    summary, _ = _json_run(capsys, ["bank", "--model", "world-dino", "--n", "20", "--device", "cpu",
                                    "--out", str(tmp_path / "bank.pt")])
    assert summary["entries"] == 20 and summary["dim"] > 0 and summary["classes"] > 1


def test_concepts_json(tmp_path, capsys):
    summary, err = _json_run(capsys, ["concepts", "--model", "world-cnn", "--classes", "0", "--images", "4",
                                      "--n-concepts", "2", "--vae-epochs", "2", "--out", str(tmp_path / "c"),
                                      "--quiet"])
    assert set(summary["classes"]) == {"0"} and "fidelity" in summary["average"] and "mean" in err


def test_demo_json(tmp_path, capsys, monkeypatch, mobilenet, imagenet_photos):
    import visionlens.data.samples as samples
    import visionlens.models as models

    # the demo's own inputs, made small: one model, two photos
    monkeypatch.setattr(samples, "sample_images", lambda which="all", download=True: list(imagenet_photos[:2]))
    monkeypatch.setattr(models, "available_models", lambda kind=None: ["mobilenet_v2"])
    summary, _ = _json_run(capsys, ["demo", "--device", "cpu", "--out", str(tmp_path / "d"), "--quiet"])
    assert summary["models"]["mobilenet_v2"]["images"] == 2 and summary["page"].endswith("index.html")


def test_fetch_json_when_everything_is_there(capsys, mobilenet):
    summary, _ = _json_run(capsys, ["fetch", "mobilenet_v2"])
    assert summary["fetched"] == [] and summary["verified"] == ["mobilenet_v2"]


def test_failed_images_are_in_the_json_and_bad_input_is_one_error_line(tmp_path, capsys, mobilenet):
    broken, good = tmp_path / "broken.png", tmp_path / "good.png"
    broken.write_text("not an image")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    summary, err = _json_run(capsys, ["explain", str(broken), str(good), "--out", str(tmp_path / "e"), "--device", "cpu"],
                             code=1)
    assert [r["file"] for r in summary["images"]] == [str(good)]
    assert summary["failures"][0]["file"] == str(broken) and "not a readable image" in err
    # only unreadable files: nothing to explain, so refused in one line before the model loads, nothing written
    assert main(["explain", str(broken), "--out", str(tmp_path / "only"), "--device", "cpu", "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and len(err.splitlines()) == 1 and str(broken) in err
    assert not (tmp_path / "only").exists()
    (tmp_path / "file").write_text("")
    assert main(["world", "--n", "2", "--out", str(tmp_path / "file" / "w.png"), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and len(err.splitlines()) == 1


# ---- the research systems' commands --------------------------------------------------------

def test_sata_json(tmp_path, capsys):
    _installed("visionlens-sata")
    summary, err = _json_run(capsys, ["sata", "evaluate", "--images", "2", "--seeds", "0", "--bs1-seeds", "0",
                                      "--corruptions", "gaussian_noise", "--severities", "1", "--latency-images", "2",
                                      "--out", str(tmp_path / "t.md"), "--quiet"])
    assert summary["settings"]["images"] == 2 and summary["correct"] and "wrote" in err


def test_adapt_json(tmp_path, capsys):
    _installed("visionlens-adapt")
    summary, _ = _json_run(capsys, ["adapt", "--n-source", "64", "--n-target", "32", "--seeds", "0",
                                    "--source-epochs", "1", "--adapt-epochs", "1", "--methods", "eianet",
                                    "--gradcam", "0", "--out", str(tmp_path / "a"), "--quiet"])
    assert summary["summary"] and summary["per_seed"][0]["seed"] == 0 and "json" not in summary["config"]


def test_hsi_json(tmp_path, capsys):
    _installed("visionlens-hsi")
    out = tmp_path / "h"
    summary, _ = _json_run(capsys, ["hsi-cd", "train", "--size", "16", "--bands", "6", "--epochs", "1",
                                    "--train-fraction", "0.2", "--out", str(out), "--quiet"])
    assert 0 <= summary["oa"] <= 1 and summary["model"] == "spectralkan-b"
    summary, _ = _json_run(capsys, ["hsi-cd", "eval", "--checkpoint", str(out / "model.pt")])
    assert 0 <= summary["oa"] <= 1 and summary["test_pixels"] > 0
    summary, _ = _json_run(capsys, ["hsi-cd", "map", "--checkpoint", str(out / "model.pt"),
                                    "--out", str(tmp_path / "m.png")])
    assert summary["pixels"] == 16 * 16 and (tmp_path / "m.png").is_file()


def test_refer_json(tmp_path, capsys):
    _installed("visionlens-refer")
    summary, _ = _json_run(capsys, ["refer", "synthetic:test:1", "--out", str(tmp_path / "r"), "--quiet"])
    assert summary["expression"] and 0 <= summary["iou_with_ground_truth"] <= 1 and len(summary["written"]) == 3
    summary, _ = _json_run(capsys, ["refer", "--benchmark", "--n-val", "2", "--n-test", "2",
                                    "--out", str(tmp_path / "b"), "--quiet"])
    assert summary["rows"][0]["n"] == 2 and all(0 <= r["mIoU"] <= 1 for r in summary["rows"])


def test_pose_json(tmp_path, capsys):
    _installed("visionlens-refer")
    synth = tmp_path / "s"
    summary, err = _json_run(capsys, ["pose", "synth", "--n", "2", "--size", "64", "--out", str(synth)])
    assert summary["samples"] == 2 and "try: visionlens pose predict" in err
    image = next((synth / "images").iterdir())
    summary, _ = _json_run(capsys, ["pose", "predict", str(image), "--point", "20,20",
                                    "--out", str(tmp_path / "o.png")])
    assert 0 <= summary["score"] <= 1 and len(summary["box"]) == 4 and summary["prompt"] == "point"
    summary, _ = _json_run(capsys, ["pose", "eval", "--synthetic", "2", "--prompt", "point", "--quiet"])
    assert [r["prompt"] for r in summary["rows"]] == ["point"] and summary["skipped"] == 0
    summary, _ = _json_run(capsys, ["pose", "train", "--synthetic", "4", "--size", "32", "--steps", "1",
                                    "--batch-size", "2", "--out", str(tmp_path / "u.pt"), "--quiet"])
    assert summary["steps"] == 1 and summary["checkpoint"] == str(tmp_path / "u.pt")


def test_pose_json_file_still_writes_the_file(tmp_path, capsys):
    _installed("visionlens-refer")
    metrics = tmp_path / "m.json"
    assert main(["pose", "eval", "--synthetic", "2", "--prompt", "point", "--quiet", "--json", str(metrics)]) == 0
    out = capsys.readouterr().out
    assert "pose AP" in out  # the table stays on stdout; the file holds the rows
    assert strict_json(metrics.read_text())[0]["prompt"] == "point"


# ---- progress bars ---------------------------------------------------------------------------

class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def terminal(monkeypatch):
    """The bar's stream, a fake terminal, and a clock the test moves (tqdm reads it)."""
    import tqdm.std

    clock = Clock()
    monkeypatch.setattr(tqdm.std, "time", clock)
    return FakeTerminal(), clock


def _stdout_is_a_terminal(monkeypatch) -> None:
    # in the test itself: pytest's capture puts its own sys.stdout back after fixtures are set up
    monkeypatch.setattr(sys, "stdout", FakeTerminal())


def _last_frame(stream) -> str:
    return stream.getvalue().replace("\n", "\r").rstrip("\r").rsplit("\r", 1)[-1]


def _rate_and_left(frame: str, unit: str = "img") -> tuple[float, float]:
    """Items per second and seconds left, as a tqdm frame shows them ("2.50s/img" or "4.00img/s")."""
    m = re.search(rf"<(\d+):(\d+), +([\d.]+)(s/{unit}|{unit}/s)\]", frame)
    assert m, frame
    minutes, seconds, value, kind = m.groups()
    rate = 1 / float(value) if kind.startswith("s/") else float(value)
    return rate, 60 * int(minutes) + int(seconds)


def test_bar_shows_a_rate_and_the_time_left(terminal, monkeypatch):
    _stdout_is_a_terminal(monkeypatch)
    stream, clock = terminal
    bar = Progress(10, "model", stream=stream)
    clock.now += 4
    bar.update(2)  # 0.5 img/s, 8 left: 16 s
    rate, left = _rate_and_left(_last_frame(stream))
    assert rate == pytest.approx(0.5, rel=0.05) and left == pytest.approx(16, abs=1)
    assert _last_frame(stream).startswith("model:") and "2/10" in _last_frame(stream)


def test_skipped_items_do_not_count_in_the_rate(terminal, monkeypatch):
    _stdout_is_a_terminal(monkeypatch)
    stream, clock = terminal
    bar = Progress(100, "resumed", stream=stream)
    bar.skip(90)  # found done already (a resumed run)
    clock.now += 5
    bar.update(2)
    rate, left = _rate_and_left(_last_frame(stream))
    assert rate == pytest.approx(0.4, rel=0.05)  # 2 items in 5 s, not 92
    assert left == pytest.approx(20, abs=1)      # 8 left at 0.4 img/s
    assert bar.done == 92 and bar.skipped == 90


def test_parts_of_an_item_move_the_bar_inside_a_batch(terminal, monkeypatch):
    _stdout_is_a_terminal(monkeypatch)
    stream, clock = terminal
    bar = Progress(4, "eval", stream=stream)
    for _ in range(4):  # a batch of one image scored in four parts
        clock.now += 1
        bar.update(0.25)
    rate, _ = _rate_and_left(_last_frame(stream))
    assert bar.done == pytest.approx(1.0) and rate == pytest.approx(0.25, rel=0.05)


def test_bar_closes_with_a_newline_when_complete(terminal, monkeypatch):
    _stdout_is_a_terminal(monkeypatch)
    stream, clock = terminal
    bar = Progress(3, "m", stream=stream)
    bar.skip(1)
    clock.now += 1
    bar.update(2)
    assert stream.getvalue().endswith("\n") and not bar.enabled and "3/3" in _last_frame(stream)


def test_no_bar_without_a_terminal_or_with_quiet(monkeypatch):
    tty = FakeTerminal()
    _stdout_is_a_terminal(monkeypatch)
    for bar, stream in [(Progress(5, "q", stream=tty, enabled=False), tty),   # --quiet
                        (Progress(5, "pipe", stream=io.StringIO()), None)]:    # the bar's stream is no terminal
        bar.update(2)
        bar.skip(1)
        assert not bar.enabled and bar.done == 3 and bar.skipped == 1
    assert tty.getvalue() == ""
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # stdout redirected to a file or pipe
    bar = Progress(5, "redirected", stream=tty)
    bar.update(5)
    assert not bar.enabled and tty.getvalue() == ""


def test_no_bar_and_no_error_without_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` raises ImportError
    tty = FakeTerminal()
    _stdout_is_a_terminal(monkeypatch)
    bar = Progress(4, "m", stream=tty)
    bar.update(1)
    bar.skip(1)
    assert not bar.enabled and bar.done == 2 and tty.getvalue() == ""
