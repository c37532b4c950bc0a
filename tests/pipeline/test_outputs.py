"""`visionlens explain` output files: unique names, inputs never replaced, folders checked
before any work, names escaped in the page, strict JSON."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from PIL import Image

from helpers import one_error_line, strict_json
from visionlens.cli import main
from visionlens.outputs import safe_name, unique_stems


@pytest.fixture
def photo(imagenet_photos) -> Image.Image:
    return Image.open(imagenet_photos[0]).convert("RGB").resize((96, 96))


def _explain(*args) -> int:
    return main(["explain", *map(str, args), "--quiet", "--device", "cpu"])


def _summary(out: Path) -> dict:
    return strict_json((out / "summary.json").read_text())


def test_explain_into_the_input_folder_never_replaces_the_input(tmp_path, photo, monkeypatch):
    src = tmp_path / "tench.png"
    photo.save(src)
    before = src.read_bytes()
    monkeypatch.chdir(tmp_path)
    assert _explain("tench.png", "--out", ".") == 0
    assert src.read_bytes() == before
    row = _summary(tmp_path)["images"][0]
    assert row["view"] != "tench.png" and (tmp_path / row["view"]).is_file()


def test_same_file_names_in_different_folders_keep_every_output(tmp_path, photo):
    paths = [tmp_path / "x" / "a.jpg", tmp_path / "y" / "a.jpg", tmp_path / "z" / "a-2.jpg"]
    for i, p in enumerate(paths):
        p.parent.mkdir()
        photo.rotate(90 * i).save(p)
    out = tmp_path / "o"
    assert _explain(*paths, "--out", out) == 0
    rows = _summary(out)["images"]
    assert len(rows) == 3 and len({r["view"] for r in rows}) == 3
    names = {n for r in rows for n in (r["view"], r["maps"], *r["overlays"].values())}
    assert len(names) == 9 and all((out / n).is_file() for n in names)
    # each view is that image's own view, not another's
    views = [Image.open(out / r["view"]) for r in rows]
    assert len({v.tobytes() for v in views}) == 3


def test_an_image_named_like_another_images_overlay(tmp_path, photo):
    a, b = tmp_path / "photo.jpg", tmp_path / "photo.gradcam.jpg"
    photo.save(a)
    photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(b)
    out = tmp_path / "o"
    assert _explain(a, b, "--out", out, "--method", "gradcam") == 0
    rows = _summary(out)["images"]
    files = [n for r in rows for n in (r["view"], r["overlays"]["gradcam"], r["maps"])]
    assert len(set(files)) == 6 and all((out / n).is_file() for n in files)
    # reruns give the same names (stable)
    assert _explain(a, b, "--out", out, "--method", "gradcam") == 0
    assert [r["view"] for r in _summary(out)["images"]] == [r["view"] for r in rows]


def test_names_with_hash_and_newline_are_safe_on_disk_and_in_the_page(tmp_path, photo):
    a, b = tmp_path / "a#1.jpg", tmp_path / "new\nline.jpg"
    photo.save(a)
    photo.save(b)
    out = tmp_path / "o"
    assert _explain(a, b, "--out", out) == 0
    page = (out / "index.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 4  # two views and two overlays
    for src in sources:
        assert "#" not in src and "\n" not in src and (out / src).is_file()
    assert all("\n" not in p.name and "#" not in p.name for p in out.iterdir())


def test_an_unreadable_name_with_a_newline_is_reported_on_one_line(tmp_path, photo, capsys):
    good = tmp_path / "good.png"
    photo.save(good)
    bad = tmp_path / "bro\nken.png"
    bad.write_text("not an image")
    assert _explain(good, bad, "--out", tmp_path / "o") == 1
    assert "ken.png" in one_error_line(capsys.readouterr().err)


def test_only_unreadable_images_are_refused_before_any_work_and_nothing_is_written(tmp_path, capsys, monkeypatch):
    from visionlens.errors import InputError
    from visionlens.models import load_model
    from visionlens.pipeline import explain_files

    model = load_model("world-cnn")
    broken = [tmp_path / "a.png", tmp_path / "b.jpg"]
    broken[0].write_text("not an image")
    broken[1].write_bytes(b"\xff\xd8\xff")  # a JPEG's first bytes, nothing after them
    loads = []
    monkeypatch.setattr("visionlens.models.load_model", lambda *a, **k: loads.append(a))
    assert _explain(*broken, "--out", tmp_path / "o") == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: none of the 2 images can be read; the first: ") and "a.png" in line
    assert loads == [] and not (tmp_path / "o").exists()  # refused before the model was loaded
    with pytest.raises(InputError, match="b.jpg"):  # the API too: one file, its own error
        explain_files(broken[1:], model, ["gradcam"], out_dir=tmp_path / "api", progress=False)
    assert not (tmp_path / "api").exists()


@pytest.mark.parametrize("case", ["file", "below-a-file"])
def test_out_that_is_a_file_is_refused_before_any_work(tmp_path, photo, capsys, case):
    img = tmp_path / "p.png"
    photo.save(img)
    out = img if case == "file" else img / "sub"
    assert _explain(img, "--out", out) == 2
    assert "is a file, not a folder" in one_error_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png"]


def test_unwritable_out_is_refused_before_any_map_is_computed(tmp_path, photo, capsys, monkeypatch):
    img = tmp_path / "p.png"
    photo.save(img)
    computed = []
    import visionlens.pipeline as pipeline

    monkeypatch.setattr(pipeline, "_explain_in_batches", lambda *a, **k: computed.append(1) or ([], []))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path / "ro" else real_access(p, mode))
    (tmp_path / "ro").mkdir()
    assert _explain(img, "--out", tmp_path / "ro" / "sub") == 2
    assert "not writable" in one_error_line(capsys.readouterr().err)
    assert not computed and not (tmp_path / "ro" / "sub").exists()


def test_a_write_check_failure_leaves_no_folder(tmp_path, photo, capsys, monkeypatch):
    img = tmp_path / "p.png"
    photo.save(img)
    import tempfile

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert _explain(img, "--out", tmp_path / "new") == 2
    assert "cannot write in" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "new").exists()


def test_empty_method_list_is_one_line_and_leaves_no_folder(tmp_path, photo, capsys):
    img = tmp_path / "p.png"
    photo.save(img)
    assert _explain(img, "--method", ",", "--out", tmp_path / "o") == 2
    assert "no method given" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_a_second_run_replaces_only_its_own_files_and_refuses_foreign_ones(tmp_path, photo, capsys):
    img = tmp_path / "p.png"
    photo.save(img)
    out = tmp_path / "o"
    assert _explain(img, "--out", out) == 0
    assert _explain(img, "--out", out, "--method", "gradcam,cam") == 0  # its own earlier outputs: replaced
    capsys.readouterr()
    (out / "q.png").write_bytes(b"the user's own file")
    q = tmp_path / "q.png"
    photo.save(q)
    assert _explain(q, "--out", out) == 2
    assert "was not written by visionlens" in one_error_line(capsys.readouterr().err)
    assert (out / "q.png").read_bytes() == b"the user's own file"


def test_stems_are_short_unique_and_stable():
    assert unique_stems(["x/a.jpg", "y/b.jpg"]) == ["a", "b"]
    assert unique_stems(["a.jpg", "a.png"]) == ["a.jpg", "a.png"]
    assert unique_stems(["x/a.jpg", "y/a.jpg"]) == ["x__a.jpg", "y__a.jpg"]
    clash = unique_stems(["p.jpg", "p.m.jpg"], lambda s: [f"{s}.png", f"{s}.m.png"])
    assert len(set(clash)) == 2 and clash == unique_stems(["p.jpg", "p.m.jpg"], lambda s: [f"{s}.png", f"{s}.m.png"])
    assert safe_name("a b#c\n.d") == "a_b_c_.d"


def test_a_folder_gives_its_images_sorted_and_recursive_adds_sub_folders(tmp_path, photo, capsys):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.png", "a.jpg", "sub/c.png"):
        photo.save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "o"
    assert _explain(folder, "--out", out) == 0
    assert [Path(r["file"]).name for r in _summary(out)["images"]] == ["a.jpg", "b.png"]
    assert _explain(folder, "--recursive", "--out", tmp_path / "r") == 0
    assert [Path(r["file"]).name for r in _summary(tmp_path / "r")["images"]] == ["a.jpg", "b.png", "c.png"]
    (tmp_path / "empty").mkdir()
    assert _explain(tmp_path / "empty", "--out", tmp_path / "e") == 2
    assert "no image files" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "e").exists()


def test_several_target_classes_by_name_give_one_map_each_equal_to_single_runs(tmp_path, photo, capsys):
    import numpy as np

    img = tmp_path / "p.png"
    photo.save(img)
    assert _explain(img, "--target", "tabby cat,282", "--method", "gradcam,relevance-cam", "--out", tmp_path / "two") == 0
    summary = _summary(tmp_path / "two")
    assert summary["maps"] == ["gradcam:281", "gradcam:282", "relevance-cam:281", "relevance-cam:282"]
    row = summary["images"][0]
    assert row["target"] == [281, 282] and row["target_name"][0] == "tabby cat"
    both = np.load(tmp_path / "two" / row["maps"])
    for cls in (281, 282):
        assert _explain(img, "--target", str(cls), "--method", "gradcam,relevance-cam", "--out", tmp_path / str(cls)) == 0
        one = np.load(tmp_path / str(cls) / _summary(tmp_path / str(cls))["images"][0]["maps"])
        for m in ("gradcam", "relevance-cam"):
            np.testing.assert_allclose(both[f"{m}:{cls}_map"], one[f"{m}_map"], atol=1e-4)
    assert not np.allclose(both["gradcam:281_map"], both["gradcam:282_map"], atol=1e-3)
    capsys.readouterr()
    assert _explain(img, "--target", "tabbby", "--out", tmp_path / "bad") == 2
    assert "tabby cat" in one_error_line(capsys.readouterr().err, "--target")


# ----- a run writes into a hidden folder and moves its files out only when it completes


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_staged_run_moves_its_files_in_and_removes_its_stale_ones(tmp_path):
    from visionlens.outputs import staged_out_dir

    out = tmp_path / "o"
    out.mkdir()
    for name in ("old.png", "input.png", "user.txt"):
        (out / name).write_text(name)
    with staged_out_dir(out, earlier={"old.png", "new.png"}) as stage:
        assert stage.parent == out and stage.name.startswith(".")
        (stage / "new.png").write_text("new")
        (stage / "sub").mkdir()
        (stage / "sub" / "x.npz").write_text("x")
    assert _files(out) == {"new.png": b"new", "sub/x.npz": b"x", "input.png": b"input.png", "user.txt": b"user.txt"}


@pytest.mark.parametrize("error", [KeyboardInterrupt, OSError])
def test_an_interrupted_staged_run_leaves_the_folder_as_it_was(tmp_path, error):
    from visionlens.outputs import staged_out_dir

    out = tmp_path / "o"
    out.mkdir()
    (out / "a.png").write_text("earlier run")
    with pytest.raises(error), staged_out_dir(out, earlier={"a.png"}) as stage:
        (stage / "a.png").write_text("this run")
        raise error()
    assert _files(out) == {"a.png": b"earlier run"} and [p.name for p in out.iterdir()] == ["a.png"]
    with pytest.raises(error), staged_out_dir(tmp_path / "fresh") as stage:
        (stage / "a.png").write_text("this run")
        raise error()
    assert not (tmp_path / "fresh").exists()


def test_ctrl_c_during_explain_leaves_the_earlier_run_intact(tmp_path, imagenet_photos, monkeypatch):
    import visionlens.pipeline as pipeline

    out = tmp_path / "o"
    photos = imagenet_photos[:3]
    assert _explain(*photos, "--method", "cam", "--out", out) == 0
    before = _files(out)
    write, calls = pipeline._write_image_outputs, []

    def interrupted(*args, **kwargs):  # Ctrl-C after the second image's files
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return write(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_write_image_outputs", interrupted)
    assert main(["explain", *map(str, photos), "--method", "cam,gradcam", "--out", str(out), "--batch-size", "1",
                 "--quiet", "--device", "cpu"]) == 130
    assert _files(out) == before  # no new file, none replaced, no hidden folder left
    monkeypatch.setattr(pipeline, "_write_image_outputs", write)
    assert _explain(*photos, "--method", "gradcam", "--out", out) == 0  # a re-run into it works, and holds one run
    summary = _summary(out)
    listed = {n for row in summary["images"] for n in (row["view"], row["maps"], *row["overlays"].values())}
    assert set(_files(out)) == listed | {"summary.json", "index.html"}


def test_the_same_command_twice_reads_the_same_images(tmp_path, imagenet_photos):
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    for i, p in enumerate(imagenet_photos[:2]):
        (folder / ("more" if i else ".") / p.name).write_bytes(p.read_bytes())
    for out in (folder / "results", folder):  # results inside the input folder, or the input folder itself
        for _ in range(2):
            assert _explain(folder, "--recursive", "--out", out) == 0
            assert sorted(Path(r["file"]).name for r in _summary(out)["images"]) == sorted(p.name for p in imagenet_photos[:2])


def test_a_folder_of_only_outputs_is_refused_with_the_reason(tmp_path, imagenet_photos, capsys):
    out = tmp_path / "o"
    assert _explain(imagenet_photos[0], "--out", out) == 0
    assert _explain(out, "--out", tmp_path / "again") == 2
    assert "a visionlens run's outputs" in one_error_line(capsys.readouterr().err)


# ----- the audit of 2026-12-07: a user's summary.json, SIGTERM, two runs at once, names


@pytest.mark.parametrize("summary", ['{"run": 3, "files": ["a.jpg"]}',
                                     '{"model": "my-resnet", "images": ["a.jpg"], "accuracy": 0.91}'])
def test_a_users_summary_json_that_lists_their_files_is_not_a_runs(tmp_path, photo, capsys, summary):
    """A user's summary.json that lists a photo under a key a run also uses ("files"), or has a
    model and an image list, was read as an earlier run's: the photo was deleted as a stale output
    and the summary and page replaced. Only a summary that records visionlens's version is a run's."""
    img = tmp_path / "p.png"
    photo.save(img)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "a.jpg").write_bytes(b"the user's photo")
    (out / "summary.json").write_text(summary)
    (out / "index.html").write_text("<h1>my report</h1>")
    assert _explain(img, "--out", out) == 2
    one_error_line(capsys.readouterr().err, "not written by visionlens")
    assert _files(out) == {"a.jpg": b"the user's photo", "summary.json": summary.encode(),
                           "index.html": b"<h1>my report</h1>"}


def test_sigterm_during_explain_leaves_nothing_behind(tmp_path, photo):
    """``timeout``, ``kill`` and batch schedulers send SIGTERM: the run stops as after Ctrl-C, exit
    143, and its hidden folder of partial outputs is removed (it was left behind)."""
    import subprocess
    import sys

    for i in range(3):
        photo.save(tmp_path / f"p{i}.png")
    out = tmp_path / "o"
    script = ("import os, signal, sys\n"
              "import visionlens.pipeline as p\n"
              "from visionlens.cli import main\n"
              "write, calls = p._write_image_outputs, []\n"
              "def terminated(*a, **k):\n"
              "    calls.append(1)\n"
              "    if len(calls) == 2:\n"
              "        os.kill(os.getpid(), signal.SIGTERM)\n"
              "    return write(*a, **k)\n"
              "p._write_image_outputs = terminated\n"
              "sys.exit(main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", script, "explain", str(tmp_path / "p0.png"), str(tmp_path / "p1.png"),
                           str(tmp_path / "p2.png"), "--method", "cam", "--batch-size", "1", "--out", str(out),
                           "--quiet", "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 143, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "terminated (SIGTERM)" and "Traceback" not in done.stderr
    assert not out.exists()


def test_a_second_run_into_a_folder_being_written_is_refused(tmp_path):
    """Two runs into one folder at once mixed their files and left a summary of one of them."""
    from visionlens.errors import InputError
    from visionlens.outputs import staged_out_dir

    out = tmp_path / "o"
    with staged_out_dir(out) as stage:
        (stage / "a.png").write_text("first run")
        with pytest.raises(InputError, match="another visionlens run is writing into"):
            with staged_out_dir(out):
                pass
    assert _files(out) == {"a.png": b"first run"}
    with staged_out_dir(out, earlier={"a.png"}) as stage:  # the lock is gone with the run
        (stage / "b.png").write_text("second run")
    assert _files(out) == {"b.png": b"second run"}


def test_ctrl_c_while_the_files_move_in_takes_effect_after_the_move(tmp_path, monkeypatch):
    """Ctrl-C during the move out of the hidden folder left a folder of two runs (the earlier
    summary beside the new maps); now the move completes, then the interrupt is raised."""
    import signal

    import visionlens.outputs as outputs

    out = tmp_path / "o"
    out.mkdir()
    for name in ("a.png", "b.png", "summary.json"):
        (out / name).write_text("earlier run")
    replace, calls = os.replace, []

    def interrupted(src, dst):
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signal.SIGINT)
        replace(src, dst)

    monkeypatch.setattr(outputs.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt), outputs.staged_out_dir(out, earlier={"a.png", "b.png", "summary.json"}) as stage:
        for name in ("a.png", "b.png", "summary.json"):
            (stage / name).write_text("this run")
    assert _files(out) == {"a.png": b"this run", "b.png": b"this run", "summary.json": b"this run"}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_names_that_differ_only_in_case_or_are_very_long_get_their_own_outputs(tmp_path, photo):
    """``a.jpg`` and ``A.jpg`` wrote ``a.png`` and ``A.png``, one file on macOS and Windows disks;
    a 240-character name failed after the work ("File name too long")."""
    stems = unique_stems(["x/a.jpg", "x/A.jpg"], lambda s: [f"{s}.png"])
    assert len({s.casefold() for s in stems}) == 2
    long = tmp_path / ("p" * 240 + ".png")
    photo.save(long)
    out = tmp_path / "o"
    assert _explain(long, "--method", "cam", "--out", out) == 0
    names = [n for n in os.listdir(out) if not n.startswith(".")]
    assert max(len(n) for n in names) <= 130 and len(_summary(out)["images"]) == 1


def test_folders_leave_out_hidden_files_and_follow_linked_sub_folders(tmp_path, photo):
    """Hidden files (macOS's ``._`` copies, ``.thumbnails``) were explained or failed; a linked
    album under --recursive and ``.jfif`` photos were dropped without a word."""
    from visionlens.data.images import image_files

    folder, album = tmp_path / "photos", tmp_path / "album"
    (folder / ".thumbnails").mkdir(parents=True)
    album.mkdir()
    photo.save(folder / "a.jpg")
    photo.save(folder / "b.jfif", format="JPEG")
    photo.save(folder / ".thumbnails" / "a.jpg")
    (folder / "._a.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    photo.save(album / "c.png")
    (folder / "linked").symlink_to(album, target_is_directory=True)
    (album / "loop").symlink_to(folder, target_is_directory=True)
    assert [p.name for p in image_files([folder])] == ["a.jpg", "b.jfif"]
    assert [p.relative_to(folder).as_posix() for p in image_files([folder], recursive=True)] == \
        ["a.jpg", "b.jfif", "linked/c.png"]


def test_a_full_disk_stops_the_run_at_the_first_image(tmp_path, imagenet_photos, monkeypatch, capsys):
    """Every remaining image was still computed and then failed the same way."""
    import errno

    import visionlens.pipeline as pipeline

    calls = []

    def full(*args, **kwargs):
        calls.append(1)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pipeline, "_write_image_outputs", full)
    out = tmp_path / "o"
    assert _explain(*imagenet_photos[:3], "--method", "cam", "--batch-size", "1", "--out", out) == 2
    assert len(calls) == 1 and not out.exists()
    one_error_line(capsys.readouterr().err, "No space left on device")
