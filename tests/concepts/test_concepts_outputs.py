"""`visionlens concepts` and its output folder: an interrupted run leaves it as it was, a re-run
holds one run, an unreadable image is left out (exit 1) and too few images are refused before
any work (exit 2, nothing written)."""

from __future__ import annotations

import json

import pytest

import visionlens.concepts.run as run_module
from visionlens.cli import main
from visionlens.concepts.sheet import fixed

pytestmark = pytest.mark.usefixtures("one_thread")

NMF = ["concepts", "--model", "world-cnn", "--layer", "layer3", "--reducer", "nmf", "--quiet"]


def _tree(folder) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included): relative path -> contents."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _run_files(classes: list[int]) -> set[str]:
    return {"concepts.json", "metrics.csv", "index.html", *(f"reducers/class_{c}.pt" for c in classes),
            *(f"sheets/class_{c}_{v}.png" for c in classes for v in ("bessel", "ice"))}


def _interrupt_at_class(monkeypatch, n: int) -> None:
    """Make every ``n``-th class's discovery raise KeyboardInterrupt (Ctrl-C midway through a run)."""
    real, calls = run_module.discover_class, []

    def discover(*args, **kwargs):
        calls.append(1)
        if len(calls) % n == 0:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "discover_class", discover)


def _no_work(monkeypatch) -> None:
    def discover(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(run_module, "discover_class", discover)


def test_interrupted_run_leaves_the_folder_as_it_was_and_a_rerun_works(tmp_path, monkeypatch, capsys):
    fresh, earlier = tmp_path / "fresh", tmp_path / "earlier"
    assert main(NMF + ["--classes", "0", "--images", "4", "--n-concepts", "2", "--out", str(earlier)]) == 0
    before = _tree(earlier)
    _interrupt_at_class(monkeypatch, 2)  # class 0 is done (its sheets and reducer saved), then Ctrl-C
    rerun = NMF + ["--classes", "0,3", "--images", "4", "--n-concepts", "3"]
    assert main(rerun + ["--out", str(fresh)]) == 130
    assert not fresh.exists()
    assert main(rerun + ["--out", str(earlier)]) == 130
    assert _tree(earlier) == before
    monkeypatch.undo()
    capsys.readouterr()
    assert main(rerun + ["--out", str(fresh)]) == 0, capsys.readouterr().err
    assert set(_tree(fresh)) == _run_files([0, 3])


def test_a_rerun_with_other_classes_holds_only_the_new_run(tmp_path):
    out = tmp_path / "out"
    assert main(NMF + ["--classes", "0,3", "--images", "4", "--n-concepts", "2", "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    assert main(NMF + ["--classes", "5", "--images", "3", "--n-concepts", "2", "--pooled", "--out", str(out)]) == 0
    assert set(_tree(out)) == {"notes.txt", "concepts.json", "metrics.csv", "index.html", "reducers/pooled.pt",
                               "sheets/class_5_bessel.png", "sheets/class_5_ice.png"}
    assert main(NMF + ["--classes", "3", "--images", "3", "--n-concepts", "2", "--out", str(out)]) == 0
    assert set(_tree(out)) == _run_files([3]) | {"notes.txt"}
    assert (out / "notes.txt").read_text() == "mine"
    assert set(json.loads((out / "concepts.json").read_text())["classes"]) == {"3"}


def test_a_user_file_with_a_planned_name_is_refused_before_work(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert main(NMF + ["--classes", "0", "--images", "3", "--n-concepts", "2", "--out", str(out)]) == 0
    (out / "sheets" / "class_3_ice.png").write_bytes(b"the user's")
    before = _tree(out)
    _no_work(monkeypatch)
    capsys.readouterr()
    assert main(NMF + ["--classes", "3", "--images", "3", "--n-concepts", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "class_3_ice.png exists and was not written by visionlens" in err and "\n" not in err
    assert _tree(out) == before


def _labelled_folder(folder, photos: dict[str, list], junk: dict[str, int]) -> None:
    """A labels.csv folder: ``photos`` {class index: PIL images}, ``junk`` {file name: class index}."""
    folder.mkdir()
    rows = ["file,class_index"]
    for cls, images in photos.items():
        for i, image in enumerate(images):
            image.save(folder / f"c{cls}_{i}.png")
            rows.append(f"c{cls}_{i}.png,{cls}")
    for name, cls in junk.items():
        (folder / name).write_bytes(b"not an image")
        rows.append(f"{name},{cls}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")


def _photos(world_source, cls: int, count: int) -> list:
    return world_source.load(world_source.items(cls, count))["views"]


def test_an_unreadable_image_is_left_out_and_named_with_exit_1(tmp_path, capsys, world_source):
    data, out = tmp_path / "data", tmp_path / "out"
    _labelled_folder(data, {3: _photos(world_source, 3, 3), 0: _photos(world_source, 0, 1)},
                     {"junk.jpg": 3, "bad.jpg": 0})
    code = main(NMF + ["--data", str(data), "--classes", "0,3", "--images", "8", "--n-concepts", "2",
                       "--out", str(out)])
    err = capsys.readouterr().err.splitlines()
    assert code == 1
    assert [line for line in err if "junk.jpg" in line][0].startswith("error: ")
    assert any(line.startswith("error: class 0 ") and "skipped" in line for line in err)
    summary = json.loads((out / "concepts.json").read_text())
    assert set(summary["classes"]) == {"3"} and summary["classes"]["3"]["images"] == 3
    assert [u for u in summary["unreadable"] if "junk.jpg" in u] and list(summary["skipped"]) == ["0"]
    assert set(_tree(out)) == _run_files([3])


def test_nothing_readable_is_refused_with_nothing_written(tmp_path, capsys, world_source):
    data, out = tmp_path / "data", tmp_path / "out"
    _labelled_folder(data, {3: _photos(world_source, 3, 1)}, {"junk.jpg": 3})
    assert main(NMF + ["--data", str(data), "--classes", "3", "--images", "8", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    assert not out.exists()


def test_a_corrupt_row_of_a_saved_hugging_face_dataset_is_left_out(tmp_path, capsys, world_cnn, world_source):
    datasets = pytest.importorskip("datasets")
    good = _photos(world_source, 3, 3)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["kite"])})
    rows = {"image": good + [{"bytes": b"corrupt", "path": None}], "label": [0, 0, 0, 0]}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "hf"))
    out = tmp_path / "out"
    assert main(NMF + ["--data", str(tmp_path / "hf"), "--images", "8", "--n-concepts", "2", "--out", str(out)]) == 1
    assert sum(line.startswith("error: ") for line in capsys.readouterr().err.splitlines()) == 1
    summary = json.loads((out / "concepts.json").read_text())
    assert len(summary["unreadable"]) == 1 and summary["classes"]["3"]["images"] == 3


@pytest.mark.parametrize("args, words", [
    (["--images", "1"], "at least 2"),
    (["--images", "3", "--n-concepts", "500"], "more than the 128 channels"),
])
def test_too_few_images_or_too_many_concepts_are_refused_before_work(tmp_path, monkeypatch, capsys, args, words):
    out = tmp_path / "out"
    _no_work(monkeypatch)
    assert main(NMF + ["--classes", "0", "--out", str(out)] + args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and words in err and "\n" not in err
    assert not out.exists()


def test_two_images_warn_that_pearson_coherence_is_degenerate(tmp_path, capsys):
    assert main(NMF + ["--classes", "0", "--images", "2", "--n-concepts", "2", "--out", str(tmp_path / "o")]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warned) == 1 and "Pearson" in warned[0]
    assert main(NMF + ["--classes", "0", "--images", "3", "--n-concepts", "2", "--out", str(tmp_path / "o")]) == 0
    assert "warning:" not in capsys.readouterr().err


def test_scores_that_round_to_zero_print_without_a_sign():
    assert fixed(-0.001) == "0.00" and fixed(-0.0004, 3) == "0.000" and fixed(-0.006) == "-0.01"
