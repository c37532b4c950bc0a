"""The command line: outputs, bad input (one-line errors, non-zero exit, no partial files)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import one_error_line
from visionlens.cli import main


def _write_odd_images(folder: Path) -> list[Path]:
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8))
    paths = [folder / "gray.png", folder / "rgba.png", folder / "palette.png", folder / "g16.png"]
    rgb.convert("L").save(paths[0])
    rgb.convert("RGBA").save(paths[1])
    rgb.convert("P").save(paths[2])
    Image.fromarray((np.arange(3500, dtype=np.uint16).reshape(50, 70) * 18)).save(paths[3])
    return paths


def _broken_files(folder: Path) -> list[Path]:
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_text("hello")
    data = (Path(__file__).parent / "test_cli.py").read_bytes()
    (folder / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0" + data[:100])
    Image.fromarray(np.full((20, 20), np.nan, dtype=np.float32)).save(folder / "nan.tif")
    return [folder / "empty.jpg", folder / "text.png", folder / "garbage.jpg", folder / "nan.tif"]


def test_explain_writes_overlays_maps_and_summary(tmp_path, imagenet_photos, capsys):
    out = tmp_path / "out"
    code = main(["explain", *map(str, imagenet_photos[:5]), "--model", "mobilenet_v2", "--method", "cam,gradcam",
                 "--out", str(out), "--device", "cpu"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "mobilenet_v2" and summary["methods"] == ["cam", "gradcam"]
    assert summary["layer"] == {"cam": "features", "gradcam": "features"}
    assert summary["versions"]["torch"] and summary["versions"]["visionlens"] and summary["failures"] == []
    assert len(summary["images"]) == 5
    for row in summary["images"]:
        assert 0 < row["probability"] <= 1 and row["predicted_name"] and row["target"] == row["predicted"]
        stem = Path(row["file"]).stem
        assert (out / f"{stem}.png").is_file() and (out / f"{stem}.cam.png").is_file()
        maps = np.load(out / f"{stem}.npz")
        assert maps["gradcam_map"].shape == (224, 224) and maps["gradcam_raw"].shape == (7, 7)
        assert 0 <= maps["cam_map"].min() and maps["cam_map"].max() <= 1
    assert "index.html" in {p.name for p in out.iterdir()}
    assert "mobilenet_v2" in (out / "index.html").read_text()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_bad_files_are_reported_and_the_rest_still_run(tmp_path, imagenet_photos, capsys):
    good = _write_odd_images(tmp_path) + [imagenet_photos[0]]
    bad = _broken_files(tmp_path)
    out = tmp_path / "out"
    code = main(["explain", *map(str, bad[:2] + good + bad[2:]), "--out", str(out), "--device", "cpu", "--quiet"])
    assert code == 1
    err_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err_lines) == 4
    for path, line in zip(bad, err_lines):
        assert str(path) in line
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(f["file"] for f in summary["failures"]) == sorted(map(str, bad))
    assert len(summary["images"]) == len(good)
    produced = {p.name.split(".")[0] for p in out.iterdir()} - {"summary", "index"}
    assert produced == {Path(p).stem for p in good}  # nothing written for the failed images


@pytest.mark.parametrize("bad", ["missing.jpg", "fifo"])
def test_a_named_path_that_is_no_file_is_bad_input(tmp_path, imagenet_photos, capsys, bad):
    """A missing path, or a FIFO (reading it could block), stops before the model is loaded: one line, exit 2."""
    if bad == "fifo":
        os.mkfifo(tmp_path / bad)
    out = tmp_path / "out"
    assert main(["explain", str(imagenet_photos[0]), str(tmp_path / bad), "--out", str(out), "--device", "cpu"]) == 2
    assert bad in one_error_line(capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "resnet9000"], "unknown model 'resnet9000'; choose from: mobilenet_v2, efficientnet_lite0"),
        (["--method", "smoothcam"], "unknown method 'smoothcam'; choose from: cam, gradcam"),
        (["--layer", "features.99"], "unknown layer 'features.99'"),
        (["--layer", "classifier.1"], "not a spatial (B, C, H, W) map"),
        (["--method", "cam", "--layer", "features.17"], "global average pooling"),
        (["--target", "1000"], "out of range for a model with 1000 classes"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--method", "gradcam@"], "method 'gradcam@' names no layer after '@'"),
    ],
)
def test_usage_errors_exit_2_with_one_line_and_write_nothing(tmp_path, imagenet_photos, capsys, args, message):
    out = tmp_path / "out"
    code = main(["explain", str(imagenet_photos[0]), "--out", str(out), "--quiet", *args])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_models_methods_and_layers_commands(capsys, mobilenet):
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "mobilenet_v2" in text and "efficientnet_lite0" in text and "ready" in text
    assert main(["methods"]) == 0
    assert "gradcam" in capsys.readouterr().out
    assert main(["layers", "mobilenet_v2"]) == 0
    assert "features.18" in capsys.readouterr().out


def test_layers_of_a_zoo_model_need_no_weights(capsys, tmp_path, monkeypatch):
    """The layers do not depend on the weights: before, an empty cache fetched the 14 MB weights
    package first, and offline `layers mobilenet_v2` was refused."""
    monkeypatch.setenv("VISIONLENS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("VISIONLENS_OFFLINE", "1")
    for name, layer in (("mobilenet_v2", "features.18"), ("efficientnet_lite0", "_head_act")):
        assert main(["layers", name]) == 0
        assert layer in capsys.readouterr().out
    assert not (tmp_path / "home").exists()


def test_layers_of_a_vit_at_another_size_is_one_line(capsys):
    assert main(["layers", "world-vit", "--size", "100"]) == 2  # its position embedding fixes the token count
    one_error_line(capsys.readouterr().err, "world-vit does not take 100 px inputs", "leave out --size")


def test_console_script_runs_as_a_process(tmp_path, imagenet_photos):
    out = tmp_path / "o"
    proc = subprocess.run(
        [sys.executable, "-m", "visionlens", "explain", str(imagenet_photos[1]), str(_broken_files(tmp_path)[1]),
         "--out", str(out), "--device", "cpu"],
        capture_output=True, text=True,
    )
    assert proc.returncode == 1
    assert "text.png: not a readable image" in proc.stderr
    assert (out / "imagenet_01_559.gradcam.png").is_file()


def test_detection_flags_on_a_classifier_are_a_warning_not_silence(tmp_path, imagenet_photos, capsys, mobilenet):
    """--top and --score-threshold choose detections; given for a classifier, they are ignored with one
    warning line (also in the --json summary), and the run is the same as without them."""
    photo = str(imagenet_photos[0])
    code = main(["explain", photo, "--model", "mobilenet_v2", "--top", "2", "--score-threshold", "0.9",
                 "--out", str(tmp_path / "o"), "--device", "cpu", "--quiet", "--json"])
    io = capsys.readouterr()
    assert code == 0
    summary = json.loads(io.out)
    assert len(summary["warnings"]) == 1 and "not a detector" in summary["warnings"][0]
    assert [line for line in io.err.splitlines() if line.startswith("warning:")] == ["warning: " + summary["warnings"][0]]
    assert main(["explain", photo, "--model", "mobilenet_v2", "--out", str(tmp_path / "p"), "--device", "cpu",
                 "--quiet", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert "warnings" not in plain and plain["images"][0]["predicted"] == summary["images"][0]["predicted"]


def test_a_method_named_twice_runs_once(tmp_path, imagenet_photos, capsys):
    out = tmp_path / "o"
    assert main(["explain", str(imagenet_photos[0]), "--model", "mobilenet_v2", "--method", "gradcam,cam,gradcam",
                 "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    assert json.loads((out / "summary.json").read_text())["methods"] == ["gradcam", "cam"]
    assert "with gradcam, cam on mobilenet_v2" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["evaluate", "--models", "world-cnn", "--data", "world:test", "--n", "2", "--out", ""],
                                  ["explain", "x.jpg", "--out", " "], ["evaluate", "--models", "world-cnn", "--data", ""],
                                  ["bank", "--out", ""]])
def test_an_empty_path_flag_is_a_usage_error_not_the_current_folder(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # an empty --out would have written here
    assert main(argv) == 2
    assert "is empty; give a path" in one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_a_bank_for_methods_that_do_not_use_it_is_a_warning(tmp_path, imagenet_photos, capsys, mobilenet):
    assert main(["explain", str(imagenet_photos[0]), "--method", "gradcam", "--bank", str(tmp_path / "b.pt"),
                 "--out", str(tmp_path / "o"), "--device", "cpu", "--quiet"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: --bank is DAAM's k-NN memory bank; gradcam does not use it, so it is ignored"]


def test_naflows_solver_flags_for_methods_that_do_not_solve_are_a_warning(tmp_path, imagenet_photos, capsys, mobilenet):
    assert main(["explain", str(imagenet_photos[0]), "--method", "gradcam", "--max-iter", "5", "--damp", "0.3",
                 "--out", str(tmp_path / "o"), "--device", "cpu", "--quiet"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: --max-iter and --damp set NAFlow's solve; gradcam does not solve, so they are ignored"]


def test_a_file_name_that_is_not_utf8_is_explained_and_shown_escaped(tmp_path, capsys, monkeypatch):
    """It ended every command in "internal error (UnicodeEncodeError ...)" after the whole run: the
    page and the printed lines could not encode the name's surrogates."""
    import io

    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in (b"ok.png", b"n\xe9.png"):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(os.fsdecode(bytes(folder) + b"/" + name))
    strict = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")  # a terminal that encodes strictly
    monkeypatch.setattr(sys, "stdout", strict)
    common = ["--model", "world-metric", "--device", "cpu", "--quiet"]
    assert main(["retrieve", str(folder / "ok.png"), "--gallery", str(folder), "--no-cache", *common,
                 "--out", str(tmp_path / "r")]) == 0
    strict.flush()
    assert b"n\\udce9.png" in strict.buffer.getvalue()
    assert main(["explain", str(folder), "--model", "world-cnn", "--device", "cpu", "--quiet",
                 "--out", str(tmp_path / "e")]) == 0
    assert "n\\udce9.png" in (tmp_path / "e" / "index.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "--n", "1", "--seed", str(2**64)], "must be at most 4294967295"),
    (["world", "--n", "1", "--seed", str(2**64)], "must be at most 4294967295"),
    (["concepts", "--classes", "0", "--seed", "99999999999999999999"], "must be at most 4294967295"),
    (["world", "--n", "10000", "--size", "2048"], "a contact sheet holds at most 134"),
    (["evaluate", "--n", "1", "--metrics", ""], "--metrics names no metric"),
    (["evaluate", "--n", "1", "--decode-workers", "999"], "--decode-workers: must be at most"),
    (["serve", "--host", ""], "--host is empty"),
    (["world", "--n", "1", "--out", "sheet.txt"], "give a file name ending in .png"),
])
def test_numbers_each_in_range_but_impossible_are_refused_before_any_work(tmp_path, capsys, monkeypatch, argv,
                                                                           message):
    """A seed of 2**64 crashed in torch.manual_seed; world --n 10000 --size 2048 tried to allocate
    167 GB; --decode-workers 999 started 999 processes; --host '' listened on every interface."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / ("o.png" if argv[0] == "world" else "o")
    given = "--out" in argv or argv[0] == "serve"
    assert main([*argv, *([] if given else ["--out", str(out)])]) == 2
    one_error_line(capsys.readouterr().err, message)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
