"""`visionlens evaluate`: resumable per-image results (a real SIGKILL), the report card, bad arguments."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import visionlens.core.inference as inference
import visionlens.evaluation.data as D
import visionlens.evaluation.run as R
import visionlens.evaluation.store as S
from visionlens import metrics as M
from visionlens.cli import main
from visionlens.errors import InputError
from visionlens.evaluation import evaluate, markdown_table, read_folder_results, read_results

from helpers import kill_after_records, labelled_folder, one_error_line

ARGS = {"models": ["world-cnn"], "methods": ["gradcam", "eigencam"], "data": "world:test", "n": 8, "batch_size": 4,
        "device": "cpu", "step": 1024, "metrics": ["deletion", "pointing-game", "relevance-mass"], "progress": False}
CLI = ["evaluate", "--models", "world-cnn", "--methods", "gradcam,eigencam", "--data", "world:test", "--n", "8",
       "--batch-size", "4", "--device", "cpu", "--step", "1024", "--metrics", "deletion,pointing-game,relevance-mass", "--quiet"]


def _strict_json(text: str):
    """``json.loads`` that refuses the NaN / Infinity tokens strict JSON does not have."""
    def refuse(token):
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def _exit_status(argv: list[str]) -> int:
    """``main``'s exit status, also where argparse refuses the line (it raises SystemExit in-process)."""
    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def _by_key(path: Path) -> dict:
    return {(r["model"], r["method"], r["image"]): r for r in read_results(path)}


def _same(a, b, rel: float = 1e-5) -> bool:
    """Equal records or reports, floats within ``rel``: on a CPU the scoring pass size is timed, so
    two runs may batch the perturbed images differently and round the last bits differently."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k], rel) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, (int, float)):
        return abs(a - b) <= rel * max(1.0, abs(a))
    return a == b


def test_resume_after_sigkill_gives_the_uninterrupted_results(tmp_path):
    full = tmp_path / "full"
    evaluate(out=full, **ARGS)
    expected = _by_key(full / "results.jsonl")
    assert len(expected) == 16

    killed = tmp_path / "killed"
    results = killed / "results.jsonl"
    kill_after_records([sys.executable, "-m", "visionlens", *CLI, "--out", str(killed)], results)
    partial = _by_key(results)
    assert 0 < len(partial) < 16
    assert not (killed / "report.csv").exists()
    with open(results, "ab") as f:  # as if killed in the middle of writing a line
        f.write(b'{"image": "world:test:7", "method": "gradc')

    assert main([*CLI, "--out", str(killed)]) == 0
    lines = results.read_text().splitlines()
    assert len(lines) == 16 and all(json.loads(line) for line in lines)  # nothing lost, nothing duplicated
    assert _same(_by_key(results), expected)
    assert _same(json.loads((killed / "report.json").read_text()), json.loads((full / "report.json").read_text()))


def test_a_name_given_twice_is_scored_once(tmp_path, capsys):
    argv = ["evaluate", "--models", "world-cnn,world-cnn", "--methods", "gradcam,gradcam", "--metrics",
            "deletion,deletion", "--n", "2", "--step", "1024", "--device", "cpu", "--quiet", "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [(r["model"], r["method"], r["metric"]) for r in report["rows"]] == [("world-cnn", "gradcam", "deletion")]
    api = evaluate(out=tmp_path / "api", **{**ARGS, "methods": ["gradcam", "gradcam"], "metrics": ["deletion"], "n": 2})
    assert len(api["rows"]) == 1


def test_report_covers_the_images_asked_for(tmp_path):
    """Re-run with a smaller --n on a folder holding more results: nothing is recomputed and the
    report card covers exactly the first --n images (how a long run's progress is published)."""
    full = evaluate(out=tmp_path, **{**ARGS, "methods": ["gradcam"], "n": 8})
    lines = (tmp_path / "results.jsonl").read_text()
    first = evaluate(out=tmp_path, **{**ARGS, "methods": ["gradcam"], "n": 4})
    assert (tmp_path / "results.jsonl").read_text() == lines
    recs = [r for r in read_results(tmp_path / "results.jsonl")][:4]
    row = {r["metric"]: r for r in first["rows"]}["deletion"]
    assert row["n"] == 4 and row["mean"] == pytest.approx(sum(r["metrics"]["deletion"] for r in recs) / 4)
    assert {r["metric"]: r for r in full["rows"]}["deletion"]["n"] == 8


def test_report_card_and_skipped_methods(tmp_path):
    report = evaluate(out=tmp_path, **{**ARGS, "methods": ["gradcam", "rollout"], "n": 4})
    assert report["skipped"][0]["method"] == "rollout" and "Vision Transformer" in report["skipped"][0]["reason"]
    cells = {(r["method"], r["metric"]): r for r in report["rows"]}
    assert cells[("gradcam", "pointing-game")]["n"] == 4
    assert cells[("gradcam", "deletion")]["direction"] == "lower" and ("gradcam", "relevance-mass") in cells
    for name in ("report.csv", "report.json", "index.html", "manifest.json", "results.jsonl"):
        assert (tmp_path / name).is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert list((tmp_path / "examples").glob("world-cnn.gradcam.*.png"))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["versions"]["torch"] and manifest["command"]["seed"] == 0
    assert "gradcam" in (tmp_path / "index.html").read_text()


@pytest.mark.parametrize("argv, message", [
    (["--models", "nope"], "unknown model"),
    (["--methods", "nope"], "unknown method"),
    (["--metrics", "nope"], "unknown metric"),
    (["--data", "/nonexistent/folder"], "bad --data"),
    (["--data", "world:holdout"], "bad --data"),
    (["--data", "samples"], "does not fit"),
    (["--step", "0"], "--step.* must be at least 1"),  # refused by argparse or by evaluate()
    (["--gallery-size", "0"], "--gallery-size.* must be at least 1"),
    (["--shard", "3/2"], "bad --shard '3/2': use K/N with 1 <= K <= N"),
    (["--shard", "half"], "bad --shard 'half'"),
])
def test_bad_arguments_stop_with_one_line(tmp_path, capsys, argv, message):
    assert _exit_status(["evaluate", "--out", str(tmp_path / "o"), "--quiet", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(message if ".*" in message else re.escape(message), err) and "\n" not in err
    assert not (tmp_path / "o" / "results.jsonl").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="the lock uses flock")
def test_a_second_run_on_the_same_folder_is_refused(tmp_path, capsys):
    import fcntl

    out = tmp_path / "o"
    out.mkdir()
    (out / "results.jsonl").write_text('{"image": "world:test:0", "method": "gradc')  # a torn line
    with open(out / "results.jsonl", "a") as running:  # as a run in progress holds it
        fcntl.flock(running.fileno(), fcntl.LOCK_EX)
        assert main([*CLI, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert "another `visionlens evaluate` is writing to" in err and "\n" not in err
        assert (out / "results.jsonl").read_text().endswith("gradc")  # the running one's file untouched
    assert main([*CLI, "--out", str(out)]) == 0  # once it has stopped
    assert len(read_results(out / "results.jsonl")) == 16


def test_shards_together_give_the_unsharded_results(tmp_path, capsys):
    """Three shards fill one folder, each its own file, and each the overlays of its images among the
    command's first four; the command without --shard then computes nothing and reports all images,
    as one run does."""
    full = tmp_path / "full"
    assert main([*CLI, "--out", str(full)]) == 0
    expected = _by_key(full / "results.jsonl")
    out = tmp_path / "o"
    assert main([*CLI, "--out", str(out), "--shard", "3/3"]) == 0
    assert main([*CLI, "--out", str(out), "--shard", "2/3"]) == 0
    assert sorted(p.name for p in (out / "examples").glob("world-cnn.gradcam.*.png")) == [
        "world-cnn.gradcam.2.png", "world-cnn.gradcam.3.png"]  # named by their index in the command's images
    assert {r["image"] for r in read_results(out / "results.shard-2-of-3.jsonl")} == {"world:test:2", "world:test:3",
                                                                                      "world:test:4"}
    assert main([*CLI, "--out", str(out), "--shard", "1/3"]) == 0
    assert sorted(p.name for p in (out / "examples").iterdir()) == sorted(p.name for p in (full / "examples").iterdir())
    capsys.readouterr()
    assert main([*CLI, "--out", str(out)]) == 0
    assert read_results(out / "results.jsonl") == []  # nothing recomputed
    got = {(r["model"], r["method"], r["image"]): r for r in read_folder_results(out)}
    assert got.keys() == expected.keys()
    for key, rec in got.items():  # other batches: equal up to float rounding
        assert rec["predicted"] == expected[key]["predicted"]
        for metric, value in rec["metrics"].items():
            assert value == pytest.approx(expected[key]["metrics"][metric], abs=1e-5)
    full_rows = {(r["method"], r["metric"]): r for r in json.loads((full / "report.json").read_text())["rows"]}
    for row in json.loads((out / "report.json").read_text())["rows"]:
        assert row["n"] == full_rows[(row["method"], row["metric"])]["n"]
        assert row["mean"] == pytest.approx(full_rows[(row["method"], row["metric"])]["mean"], abs=1e-5)


@pytest.mark.skipif(sys.platform == "win32", reason="the lock uses flock")
def test_a_shard_runs_beside_a_run_holding_the_folder(tmp_path, capsys):
    import fcntl

    out = tmp_path / "o"
    out.mkdir()
    shard = [*CLI, "--n", "4", "--out", str(out), "--shard", "2/2", "--methods", "gradcam"]
    with open(out / "results.jsonl", "a") as running:  # an unsharded run in progress holds its own file
        fcntl.flock(running.fileno(), fcntl.LOCK_EX)
        assert main(shard) == 0
    assert [r["image"] for r in read_folder_results(out)] == ["world:test:2", "world:test:3"]
    with open(out / "results.shard-2-of-2.jsonl", "a") as running:  # but not beside the same shard
        fcntl.flock(running.fileno(), fcntl.LOCK_EX)
        capsys.readouterr()
        assert main(shard) == 2
        err = capsys.readouterr().err.strip()
        assert "is writing to" in err and "(results.shard-2-of-2.jsonl)" in err and "\n" not in err


@pytest.mark.parametrize("change, message", [
    (["--step", "512"], "--step 1024 (this command: 512)"),
    (["--metrics", "deletion,insertion"], "--metrics deletion,pointing-game,relevance-mass (this command adds insertion)"),
    (["--data", "world:val"], "--data world:test (this command: world:val)"),
    (["--seed", "3"], "--seed 0 (this command: 3)"),
    (["--gallery-size", "50"], "--gallery-size 1000 (this command: 50)"),
])
def test_a_folder_refuses_results_computed_with_other_settings(tmp_path, capsys, change, message):
    """Per-image values depend on the data, the step, the seed and the metrics: a re-run that
    differs in one of them would mix incomparable results in one report, so it is refused, also
    for a folder written before its settings were recorded (they are read from its manifest)."""
    out = tmp_path / "o"
    first = [*CLI, "--n", "4", "--out", str(out)]
    assert main(first) == 0
    before = (out / "results.jsonl").read_bytes()
    changed = first + change  # argparse: the last value given wins
    assert main(changed) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    (out / "settings.json").unlink()  # as written by an older version: the manifest holds the command
    assert main(changed) == 2 and message in capsys.readouterr().err
    assert (out / "results.jsonl").read_bytes() == before


def test_a_subset_of_metrics_reports_the_subset_and_keeps_the_folder_whole(tmp_path, capsys):
    out = tmp_path / "o"
    assert main([*CLI, "--n", "4", "--out", str(out)]) == 0
    report = evaluate(out=out, **{**ARGS, "metrics": ["deletion"]})  # and 4 more images
    assert {r["metric"] for r in report["rows"]} == {"deletion"} and all(r["n"] == 8 for r in report["rows"])
    recs = read_results(out / "results.jsonl")
    assert len(recs) == 16 and all(set(r["metrics"]) == {"deletion", "pointing-game", "relevance-mass"} for r in recs)
    (out / "settings.json").write_text("{not json")
    assert main([*CLI, "--out", str(out)]) == 2
    assert "settings.json is unreadable" in capsys.readouterr().err


def test_metrics_the_data_cannot_support(tmp_path, capsys):
    """Asked for by name, a localisation metric on photos without masks is refused before any
    work; left to the default, the metrics the data cannot support are left out."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "labels.csv").write_text("file,class_index\na.jpg,1\n")
    (folder / "a.jpg").write_bytes(b"not read")
    argv = ["evaluate", "--models", "mobilenet_v2", "--data", str(folder), "--out", str(tmp_path / "o"), "--quiet"]
    assert main([*argv, "--metrics", "deletion,pointing-game"]) == 2
    assert "metric 'pointing-game' needs object masks" in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.jsonl").exists()


def test_default_metrics_on_photos_are_those_photos_support(tmp_path, imagenet_photos, mobilenet):
    evaluate(["mobilenet_v2"], ["gradcam"], data=labelled_folder(tmp_path / "photos", imagenet_photos[:1]), n=1,
             batch_size=1, device="cpu", out=tmp_path / "o", step=12544, progress=False)
    computed = json.loads((tmp_path / "o" / "settings.json").read_text())["metrics"]
    assert computed == ["deletion", "insertion", "average-drop", "increase-confidence"]
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["command"]["metrics"] == computed


@pytest.mark.parametrize("rows, message", [
    ("a.jpg,zero", "labels.csv line 2: class_index 'zero' is not a whole number"),
    ("a.jpg,-3", "labels.csv line 2: class_index -3 is negative"),
    ("gone.jpg,1", "labels.csv lists 1 file(s) that are not in the folder, first 'gone.jpg'"),
    ("a.jpg,1000", "class_index 1000 in labels.csv is not an ImageNet-1k class (0-999)"),
    ("a.jpg,1\n./a.jpg,2", "labels.csv line 3: './a.jpg' is listed twice (first on line 2)"),
])
def test_a_bad_labels_file_is_refused_before_any_work(tmp_path, capsys, rows, message):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"not read: the listing is checked first")
    (folder / "labels.csv").write_text(f"file,class_index\n{rows}\n")
    out = tmp_path / "o"
    assert main(["evaluate", "--models", "mobilenet_v2", "--data", str(folder), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not out.exists()


def test_a_corrupt_photo_is_left_out_on_one_line_and_scored_once_replaced(tmp_path, capsys, imagenet_photos,
                                                                         mobilenet):
    folder = labelled_folder(tmp_path / "photos", imagenet_photos[:3])
    files = [Path(folder) / p.name for p in imagenet_photos[:3]]  # in labels.csv order
    good = files[1].read_bytes()
    files[1].write_bytes(good[:len(good) // 3])  # truncated
    argv = ["evaluate", "--models", "mobilenet_v2", "--data", folder, "--metrics", "average-drop", "--batch-size", "2",
            "--device", "cpu", "--quiet", "--out", str(tmp_path / "o")]
    assert main(argv) == 1  # the other images are scored; the exit status says one was left out
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and files[1].name in lines[0] and "truncated or corrupt" in lines[0]
    assert "left out; replace it and re-run" in lines[0] and "Traceback" not in captured.err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [r["n"] for r in report["rows"]] == [2]
    assert [u["image"] for u in report["unreadable"]] == [files[1].name]
    page = (tmp_path / "o" / "index.html").read_text()
    assert "1 image(s) could not be read" in page and files[1].name in page
    examples = tmp_path / "o" / "examples"  # numbered by the images' places in the data, the left-out one's free
    assert {p.name for p in examples.glob("mobilenet_v2.*.png")} == {
        "mobilenet_v2.0.png", "mobilenet_v2.2.png", "mobilenet_v2.gradcam.0.png", "mobilenet_v2.gradcam.2.png"}
    third = (examples / "mobilenet_v2.2.png").read_bytes()
    workers = [*argv[:-1], str(tmp_path / "o2"), "--decode-workers", "1"]  # decoded in a DataLoader process
    assert main(workers) == 1 and files[1].name in capsys.readouterr().err
    assert len(read_results(tmp_path / "o2" / "results.jsonl")) == 2
    files[1].write_bytes(good)  # replaced: the re-run scores it and nothing else
    assert main(argv) == 0
    assert len(read_results(tmp_path / "o" / "results.jsonl")) == 3
    assert not json.loads((tmp_path / "o" / "report.json").read_text())["unreadable"]
    assert (examples / "mobilenet_v2.gradcam.1.png").exists() and (examples / "mobilenet_v2.2.png").read_bytes() == third


def test_data_with_no_readable_photo_is_one_line_and_leaves_nothing(tmp_path, capsys, imagenet_photos, mobilenet):
    folder = labelled_folder(tmp_path / "photos", imagenet_photos[:2])
    for p in imagenet_photos[:2]:
        (Path(folder) / p.name).write_bytes(b"not an image")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")
    argv = ["evaluate", "--models", "mobilenet_v2", "--data", folder, "--device", "cpu", "--quiet", "--out", str(out)]
    assert main(argv) == 2  # an empty report helps no one: the data is bad input
    err = capsys.readouterr().err.strip()
    assert "none of the 2 image(s)" in err and "nothing was written" in err and "\n" not in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_folder_without_labels_is_refused(tmp_path, capsys):
    assert main(["evaluate", "--models", "mobilenet_v2", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "labels.csv" in capsys.readouterr().err


def test_labelled_folder(tmp_path, imagenet_photos, mobilenet):
    report = evaluate(["mobilenet_v2"], ["gradcam"], data=labelled_folder(tmp_path / "photos", imagenet_photos[:2]), n=2, batch_size=2, device="cpu",
                      out=tmp_path / "o", metrics=["average-drop", "increase-confidence"], progress=False)
    assert {r["metric"] for r in report["rows"]} == {"average-drop", "increase-confidence"}
    assert all(r["n"] == 2 for r in report["rows"])


def test_per_class_pointing_game_averages_classes_first(tmp_path):
    report = evaluate(out=tmp_path, **{**ARGS, "methods": ["gradcam"], "metrics": ["pointing-game-classes"]})
    recs = [r for r in read_results(tmp_path / "results.jsonl")]
    by_class: dict[int, list[float]] = {}
    for r in recs:
        by_class.setdefault(r["label"], []).append(r["metrics"]["pointing-game"])
    expected = sum(sum(v) / len(v) for v in by_class.values()) / len(by_class)
    (row,) = [r for r in report["rows"] if r["metric"] == "pointing-game-classes"]
    assert row["n"] == len(by_class) and row["mean"] == pytest.approx(expected)


def test_embedding_models_use_the_similarity_confidences(tmp_path):
    """Spec 7.6: SFAM on the metric model is scored by the clamped cosine to each image's nearest
    gallery image (the clean reference), DAAM on the self-supervised ViT by its k-NN vote mass."""
    import torch

    from visionlens.evaluation import EmbeddingReference, RetrievalExplainer
    from visionlens.methods.sfam import SFAM
    from visionlens.metrics import deletion
    from visionlens.models import load_model

    args = {**ARGS, "n": 4, "metrics": ["deletion", "average-drop", "pointing-game"]}
    report = evaluate(out=tmp_path / "m", **{**args, "models": ["world-metric"], "methods": ["sfam", "cam"]},
                      gallery_size=200)
    assert {r["method"] for r in report["rows"]} == {"sfam"}
    assert report["skipped"][0]["method"] == "cam" and "needs class logits" in report["skipped"][0]["reason"]
    recs = read_results(tmp_path / "m" / "results.jsonl")
    assert all(0 <= r["reference"] < 200 for r in recs if r["image"] != "*")

    # the recorded deletion AUC is the one of the similarity to the clean nearest neighbour
    from visionlens.data.world import World, WorldConfig
    model = load_model("world-metric")
    b = World(WorldConfig(size=64)).batch("test", range(4))
    x = (b["image"] - 0.5) / 0.5
    ref = EmbeddingReference.build(model, {"kind": "world"}, 200)
    res = RetrievalExplainer(SFAM(model.module, model.layer), model.module, ref)(x, b["label"])
    auc = deletion(model.module, x, res.maps, res.targets, step=1024, confidence=res.confidence)
    got = sorted((r["image"], r["metrics"]["deletion"]) for r in recs if r["method"] == "sfam")
    assert [v for _, v in got] == pytest.approx(auc.tolist(), abs=1e-5)
    assert torch.equal(res.extra["reference"], torch.tensor([r["reference"] for r in sorted(
        (r for r in recs if r["method"] == "sfam"), key=lambda r: r["image"])]))

    report = evaluate(out=tmp_path / "d", **{**args, "models": ["world-dino"], "methods": ["daam"]}, gallery_size=200)
    cells = {r["metric"]: r for r in report["rows"]}
    assert cells["deletion"]["n"] == 4 and 0 <= cells["average-drop"]["mean"] <= 100


def test_compare_runs_script_reports_agreement(tmp_path):
    """benchmarks/compare_runs.py: two runs of the same images at different batch sizes agree."""
    evaluate(out=tmp_path / "a", **{**ARGS, "methods": ["gradcam"], "n": 4})
    evaluate(out=tmp_path / "b", **{**ARGS, "methods": ["gradcam"], "n": 4, "batch_size": 2})
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "compare_runs.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "a"), str(tmp_path / "b")],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split("|")[1:-1] for line in out.splitlines()[2:]]
    assert {r[2].strip() for r in rows} == {"deletion", "pointing-game", "relevance-mass"}
    assert all(r[3].strip() == "4" and float(r[4]) < 1e-3 for r in rows)


def test_paired_differences_script_on_the_images_of_another_run(tmp_path):
    """benchmarks/paired_differences.py: per-image method - baseline differences, optionally on the
    images another folder holds (here the first 4 of 8)."""
    evaluate(out=tmp_path / "long", **{**ARGS, "n": 8})
    evaluate(out=tmp_path / "short", **{**ARGS, "methods": ["gradcam"], "n": 4})
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "paired_differences.py"
    recs = {(r["method"], r["image"]): r["metrics"]["deletion"] for r in read_results(tmp_path / "long" / "results.jsonl")}
    for extra, n in (([], 8), (["--images-of", str(tmp_path / "short")], 4)):
        out = subprocess.run([sys.executable, str(script), str(tmp_path / "long"), "--metrics", "deletion", *extra],
                             capture_output=True, text=True, check=True).stdout
        row = [c.strip() for c in out.splitlines()[2].split("|")[1:-1]]
        images = [f"world:test:{i}" for i in range(n)]
        diff = sum(recs[("eigencam", i)] - recs[("gradcam", i)] for i in images) / n
        assert row[1] == "`eigencam`" and int(row[5]) == n and float(row[3]) == pytest.approx(diff, abs=1e-4)


def test_paired_differences_leaves_out_a_skipped_method_and_notes_a_shorter_report(tmp_path):
    """As the report card: a method that stopped on a model (a skip record after its first results)
    has no rows (it had rows from its partial results); a report over fewer images than the folder
    holds is noted (the differences are over every image)."""
    import json
    import shutil

    evaluate(out=tmp_path / "o", **{**ARGS, "methods": ["gradcam", "eigencam", "cam"], "n": 6})
    shutil.copytree(tmp_path / "o", tmp_path / "s")
    with open(tmp_path / "s" / "results.jsonl", "a") as f:
        f.write(json.dumps({"model": "world-cnn", "method": "eigencam", "image": "*", "skipped": "RuntimeError: x"}) + "\n")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "paired_differences.py"
    run = lambda folder: subprocess.run([sys.executable, str(script), str(folder), "--metrics", "deletion"],  # noqa: E731
                                        capture_output=True, text=True, check=True)
    done = run(tmp_path / "s")
    assert "`eigencam`" not in done.stdout and "`cam`" in done.stdout
    assert "eigencam on world-cnn left out: it was skipped (RuntimeError: x)" in done.stderr
    evaluate(out=tmp_path / "o", **{**ARGS, "methods": ["gradcam", "eigencam", "cam"], "n": 3})  # a report of 3
    assert "holds 6 images, its report the first 3" in run(tmp_path / "o").stderr


def test_paired_differences_calls_rounding_sized_differences_equal(tmp_path):
    """CAM and Grad-CAM give the same maps on the world CNN (GAP + linear head), up to float
    rounding: the verdict is "equal", never "better" or "worse" from a zero-width interval."""
    evaluate(out=tmp_path / "o", **{**ARGS, "methods": ["gradcam", "cam", "eigencam"], "n": 6})
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "paired_differences.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "o"), "--metrics", "deletion", "relevance-mass"],
                         capture_output=True, text=True, check=True).stdout
    verdicts = {(r[1], r[2]): r[6] for r in ([c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines()[2:])}
    assert verdicts[("`cam`", "deletion")] == verdicts[("`cam`", "relevance-mass")] == "equal"
    assert verdicts[("`eigencam`", "relevance-mass")] in {"better", "worse", "tie"}


def test_markdown_table_names_the_n_of_cells_over_fewer_images():
    def row(method, metric, n):
        return {"model": "m", "method": method, "metric": metric, "mean": 0.5, "ci95": 0.1, "n": n, "direction": "lower"}

    report = {"rows": [row("gradcam", "randomisation", 355), row("eigencam", "randomisation", 500),
                       row("eigencam", "pointing-game-classes", 10)], "skipped": []}
    lines = markdown_table(report, "m").splitlines()
    assert lines[2] == "| `gradcam` | 0.500 ± 0.100 (n = 355) |  |"
    assert lines[3] == "| `eigencam` | 0.500 ± 0.100 | 0.500 ± 0.100 (10 classes) |"


# --- reliability: keys, invalid lines, duplicates, races, memory, optional packages, strict JSON ---

def test_images_with_the_same_name_in_subfolders_stay_apart(tmp_path, capsys, imagenet_photos, mobilenet):
    """Records are keyed by the path relative to the data root: a/x.JPEG and b/x.JPEG are two images."""
    folder = tmp_path / "photos"
    rows = ["file,class_index"]
    for name, photo in zip(["a/x.JPEG", "b/x.JPEG", "c.JPEG"], imagenet_photos[:3]):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(photo.read_bytes())
        rows.append(f"{name},{int(photo.stem.rsplit('_', 1)[1])}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "o"
    assert main(["evaluate", "--models", "mobilenet_v2", "--methods", "gradcam", "--data", str(folder), "--metrics",
                 "average-drop", "--batch-size", "3", "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    assert sorted(r["image"] for r in read_results(out / "results.jsonl")) == ["a/x.JPEG", "b/x.JPEG", "c.JPEG"]
    (row,) = json.loads((out / "report.json").read_text())["rows"]
    assert row["n"] == 3


def test_an_invalid_results_line_is_skipped_with_one_warning(tmp_path, capsys):
    out = tmp_path / "o"
    argv = [*CLI, "--n", "2", "--methods", "gradcam", "--out", str(out)]
    assert main(argv) == 0
    results = out / "results.jsonl"
    first, *rest = results.read_text().splitlines()
    results.write_text("\n".join([first, "42", "{}", *rest]) + "\n")
    capsys.readouterr()
    assert main(argv) == 0  # was: AttributeError / KeyError on every re-run
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "Traceback" not in err
    assert f"{results} line 2 is not a results record" in warnings[0] and "(and 1 more such lines)" in warnings[0]
    assert all(r["n"] == 2 for r in json.loads((out / "report.json").read_text())["rows"])
    assert len(results.read_text().splitlines()) == 4  # nothing recomputed, nothing removed


def test_a_contradicting_duplicate_record_is_named_in_a_warning(tmp_path, capsys):
    out = tmp_path / "o"
    argv = [*CLI, "--n", "2", "--methods", "gradcam", "--metrics", "deletion", "--out", str(out)]
    assert main(argv) == 0
    results = out / "results.jsonl"
    first = json.loads(results.read_text().splitlines()[0])
    with open(results, "a") as f:
        f.write(json.dumps(first) + "\n")  # the same values: harmless, no warning
        f.write(json.dumps({**first, "metrics": {"deletion": 0.999}}) + "\n")
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("warning:")
    assert f"{results} line 4: a second record for (world-cnn, gradcam, {first['image']}) with other values" in err
    assert f"the first ({results} line 1) is used" in err
    recs = {r["image"]: r for r in read_results(results, warn=False)}
    assert recs[first["image"]]["metrics"] == first["metrics"]


@pytest.mark.skipif(sys.platform == "win32", reason="the lock uses flock")
def test_a_run_refused_at_the_same_instant_leaves_the_winners_files(tmp_path, monkeypatch, capsys):
    """Two fresh runs start at once: both find no results file; the winner creates and locks it (and
    writes its settings and an overlay) just before the loser opens it. The refused loser must not
    clean up: nothing there is its own."""
    import fcntl

    out = tmp_path / "o"
    real, held = S.open_for_append, []

    def winner_first(path):
        (path.parent / "examples").mkdir(parents=True, exist_ok=True)
        winner = open(path, "a")
        fcntl.flock(winner.fileno(), fcntl.LOCK_EX)
        held.append(winner)
        (path.parent / "settings.json").write_text("{}")
        (path.parent / "examples" / "world-cnn.0.png").write_bytes(b"png")
        return real(path)

    monkeypatch.setattr(S, "open_for_append", winner_first)
    try:
        assert main([*CLI, "--out", str(out)]) == 2
        assert "another `visionlens evaluate` is writing to" in capsys.readouterr().err
        assert os.path.samestat(os.stat(out / "results.jsonl"), os.fstat(held[0].fileno()))
        assert (out / "settings.json").exists() and (out / "examples" / "world-cnn.0.png").exists()
    finally:
        held[0].close()


@pytest.mark.skipif(sys.platform == "win32", reason="the lock uses flock")
def test_a_run_never_writes_into_a_removed_results_file(tmp_path, monkeypatch, capsys):
    """The other order: this run opens the file, the run holding it stops before its first result and
    removes it, then this run gets the lock. It must open the file again, not fill the removed one."""
    import fcntl
    import types

    out = tmp_path / "o"
    calls = []

    def flock(fd, op):
        if not calls:
            os.unlink(out / "results.jsonl")  # the other run's clean-up, between our open and our lock
        calls.append(op)
        return fcntl.flock(fd, op)

    monkeypatch.setattr(S, "fcntl", types.SimpleNamespace(LOCK_EX=fcntl.LOCK_EX, LOCK_NB=fcntl.LOCK_NB, flock=flock))
    assert main([*CLI, "--n", "2", "--methods", "gradcam", "--out", str(out)]) == 0
    assert len(calls) == 2 and len(read_results(out / "results.jsonl")) == 2


@pytest.mark.skipif(sys.platform == "win32", reason="the lock uses flock")
def test_a_run_that_stops_early_cleans_up_while_holding_the_lock(tmp_path, monkeypatch, capsys):
    """A run that stops before its first result removes its files while it still holds the lock, so
    a run arriving meanwhile is refused, never handed a file that is about to be removed."""
    out = tmp_path / "o"
    real, arrivals = S.remove_new_files, []

    def removing(folder, own, created):
        try:
            S.open_for_append(own).close()  # a second run arriving now
            arrivals.append("let in")
        except InputError:
            arrivals.append("refused")
        real(folder, own, created)

    def no_model(*args, **kwargs):
        raise InputError("cannot load the model")

    monkeypatch.setattr(S, "remove_new_files", removing)
    monkeypatch.setattr(R, "load_model", no_model)
    assert main([*CLI, "--out", str(out)]) == 2
    assert arrivals == ["refused"] and not out.exists()


def test_batches_stay_within_the_memory_budget(tmp_path, monkeypatch):
    """batch_size=1000000 on 12 images: the image batch and every forward pass of the scoring stay
    within the byte budget (here 8 world images), whatever the flag says."""
    per_image = 3 * 64 * 64 * 4
    monkeypatch.setattr(D, "BATCH_BYTES", 8 * per_image)
    loaded, forwards = [], []

    class Recorder(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            forwards.append(len(x))
            return self.module(x)

    real_load = D.load_batch
    def load_batch(data, items, model, **options):
        loaded.append(len(items))
        return real_load(data, items, model, **options)

    monkeypatch.setattr(D, "load_batch", load_batch)
    monkeypatch.setattr(R, "checked_inference_copy", lambda module, x, compile_batch=None: (Recorder(module), "recorder"))
    monkeypatch.setattr(inference, "fastest_batch", lambda module, x, bound: bound)  # the budget itself, untimed
    out = tmp_path / "o"
    evaluate(out=out, **{**ARGS, "n": 12, "batch_size": 10**6, "methods": ["gradcam"], "metrics": ["deletion"],
                         "step": 256})
    assert loaded == [8, 4]
    assert forwards and max(forwards) <= 8
    assert json.loads((out / "manifest.json").read_text())["batches"] == {"world-cnn": {"images": 8, "scoring": 8}}


def test_batch_sizes_are_capped_by_images_and_bytes():
    photo, world = 3 * 224 * 224 * 4, 3 * 64 * 64 * 4
    assert D.scoring_batch(16, photo) == 128 and D.scoring_batch(4, world) == 64  # the defaults are unchanged
    for per_image in (photo, world):
        assert D.scoring_batch(10**6, per_image) * per_image <= D.BATCH_BYTES
    assert D.image_batch(10**6, 2, photo) == 2  # never more than the images there are
    assert D.image_batch(10**6, 10**4, photo) * photo <= D.BATCH_BYTES
    assert D.image_batch(1, 10, 10**12) == D.scoring_batch(1, 10**12) == 1  # at least one image


def test_a_run_that_needs_no_torchvision_finishes_without_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # `import torchvision` now fails
    out = tmp_path / "o"
    assert main([*CLI, "--n", "1", "--methods", "gradcam", "--out", str(out)]) == 0
    versions = json.loads((out / "manifest.json").read_text())["versions"]
    assert versions["torch"] and versions["visionlens"] and versions["python"]


def test_every_json_file_is_strict_json(tmp_path, monkeypatch, capsys):
    """An undefined CI (n = 1) and metric values that are NaN or infinite become null, never the
    bare NaN / Infinity tokens strict parsers refuse."""
    monkeypatch.setattr(M, "relevance_mass", lambda maps, masks: torch.full((len(maps),), float("inf")))
    monkeypatch.setattr(M, "pointing_game", lambda maps, masks: torch.full((len(maps),), float("nan")))
    out = tmp_path / "o"
    assert main([*CLI, "--n", "1", "--methods", "gradcam", "--out", str(out)]) == 0
    for name in ("manifest.json", "settings.json", "report.json"):
        _strict_json((out / name).read_text())
    (rec,) = [_strict_json(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert rec["metrics"]["relevance-mass"] is None and rec["metrics"]["pointing-game"] is None
    (row,) = _strict_json((out / "report.json").read_text())["rows"]  # deletion only: the others are undefined
    assert row["metric"] == "deletion" and row["n"] == 1 and row["ci95"] is None
    assert "nan" not in (out / "index.html").read_text()


@pytest.mark.parametrize("change, message", [
    ({"n": 0}, "--n must be at least 1, got 0"),
    ({"n": float("nan")}, "--n must be an integer, got nan"),
    ({"batch_size": 0}, "--batch-size must be at least 1, got 0"),
    ({"batch_size": 2.5}, "--batch-size must be an integer, got 2.5"),
    ({"step": 0}, "--step must be at least 1 pixel (got 0)"),
    ({"step": "wide"}, "--step must be an integer, got 'wide'"),
    ({"gallery_size": 0}, "--gallery-size must be at least 1, got 0"),
])
def test_numeric_arguments_are_checked_before_any_work(tmp_path, change, message):
    with pytest.raises(InputError, match=re.escape(message)):
        evaluate(out=tmp_path / "o", **{**ARGS, **change})
    assert not (tmp_path / "o").exists()


def test_a_new_metric_is_one_registry_entry(tmp_path, monkeypatch):
    """A metric registered with its ``compute`` (and nothing else edited) is computed per image,
    recorded, aggregated and described in the manifest; the registry is restored afterwards."""
    toy = M.MetricInfo("toy", True, "faithfulness", ("classifier",), ("masks",), "class",
                       "the explained class, as a number", compute=lambda c: c.target.float() + 0 * c.masks.sum((1, 2)))
    monkeypatch.setitem(M.METRICS, "toy", toy)
    out = tmp_path / "o"
    report = evaluate(out=out, **{**ARGS, "methods": ["gradcam"], "n": 4, "metrics": ["toy", "relevance-mass"]})
    recs = read_results(out / "results.jsonl")
    assert len(recs) == 4 and all(r["metrics"]["toy"] == r["predicted"] for r in recs)
    (row,) = [r for r in report["rows"] if r["metric"] == "toy"]
    assert row["n"] == 4 and row["direction"] == "higher"
    assert row["mean"] == pytest.approx(sum(r["predicted"] for r in recs) / 4)
    assert json.loads((out / "manifest.json").read_text())["metrics"]["toy"]["description"] == toy.description
    assert "toy (↑)" in markdown_table(report, "world-cnn")
    # a metric that needs what the data lacks is refused by name, like the built-in ones
    with pytest.raises(InputError, match="metric 'toy' needs object masks"):
        evaluate(["mobilenet_v2"], ["gradcam"], data="samples", n=1, out=tmp_path / "s", metrics=["toy"], progress=False)


def test_report_card_draws_the_mean_deletion_and_insertion_curves(tmp_path):
    """Each image's curves are kept in its record; the report holds their mean per model and method
    (AUC of the mean curve = mean of the AUCs) and the page draws them."""
    from visionlens.metrics import trapezoid_auc

    report = evaluate(out=tmp_path, **{**ARGS, "metrics": ["deletion", "insertion"], "n": 4})
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert all(len(r["curves"]["deletion"]) == len(r["curves"]["insertion"]) >= 2 for r in records)
    cells = {(r["method"], r["metric"]): r["mean"] for r in report["rows"]}
    for method in ("gradcam", "eigencam"):
        curves = report["curves"]["world-cnn"][method]
        for mode in ("deletion", "insertion"):
            auc = float(trapezoid_auc(torch.tensor(curves[mode])))
            assert abs(auc - cells[(method, mode)]) < 1e-3, (method, mode)  # curves rounded to 4 decimals
    page = (tmp_path / "index.html").read_text()
    assert page.count("<polyline") == 4  # 2 methods x (deletion, insertion)


@pytest.mark.parametrize("methods, message", [("gradcam@bogus", "nothing to score: every method was skipped"),
                                              ("", "no method given")])
def test_a_run_that_can_score_nothing_is_one_line_and_leaves_nothing(tmp_path, capsys, methods, message):
    out = tmp_path / "o"
    argv = ["evaluate", "--models", "world-cnn", "--data", "world:test", "--n", "2", "--metrics", "deletion",
            "--device", "cpu", "--methods", methods, "--out", str(out), "--quiet"]
    assert main(argv) == 2
    assert message in one_error_line(capsys.readouterr().err)
    assert not out.exists()


def test_insertion_values_of_an_earlier_start_image_are_not_resumed(tmp_path, capsys):
    """insertion started from a sampled Gaussian before it used RISE's kernel (up to 0.07 apart on one
    ImageNet photo): a folder holding such values is not filled further with the new ones."""
    out = tmp_path / "o"
    argv = [*CLI, "--n", "2", "--metrics", "deletion,insertion", "--out", str(out)]
    assert main(argv) == 0
    assert json.loads((out / "settings.json").read_text())["insertion_start"] == "RISE gkern(11, 5)"
    settings = json.loads((out / "settings.json").read_text())
    del settings["insertion_start"]  # as an earlier visionlens wrote it
    (out / "settings.json").write_text(json.dumps(settings))
    before = (out / "results.jsonl").read_bytes()
    assert main([*argv[:-4], "--n", "4", "--metrics", "deletion,insertion", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "holds insertion values of an earlier visionlens" in err and "\n" not in err
    assert (out / "results.jsonl").read_bytes() == before
    deletion_only = tmp_path / "d"  # a folder without insertion resumes as before
    assert main([*CLI, "--n", "2", "--metrics", "deletion", "--out", str(deletion_only)]) == 0
    settings = json.loads((deletion_only / "settings.json").read_text())
    del settings["insertion_start"]
    (deletion_only / "settings.json").write_text(json.dumps(settings))
    assert main([*CLI, "--n", "3", "--metrics", "deletion", "--out", str(deletion_only)]) == 0


def test_seed_sets_the_randomisation_weights_and_leaves_the_callers_random_state(tmp_path):
    """``--seed`` changes the randomisation metric's random weights (it was always seed 0 whatever
    the run's seed), the same seed gives the same values, and ``evaluate()`` restores the caller's
    global random state."""
    args = {**ARGS, "methods": ["gradcam"], "n": 2, "batch_size": 2, "metrics": ["randomisation"]}

    def scores(seed: int, name: str) -> list[float]:
        evaluate(**args, seed=seed, out=tmp_path / name)
        return [r["metrics"]["randomisation"] for r in read_folder_results(tmp_path / name)]

    torch.manual_seed(1234)
    state = torch.random.get_rng_state()
    first = scores(0, "a")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert scores(0, "b") == pytest.approx(first, abs=1e-6)
    assert scores(1, "c") != pytest.approx(first, abs=1e-3)
