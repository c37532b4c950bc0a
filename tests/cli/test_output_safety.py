"""The commands other than `explain` never replace a file the user owns: a one-file output
(`world`, `bank`) that exists stops the command before any work unless `--force` is given; a
folder output (`demo`, `concepts`, `evaluate`) may be written again by the same command, but a
file of a planned name that no earlier run wrote stops it. `explain`'s rules: tests/pipeline/test_outputs.py."""

from __future__ import annotations

import pytest

from helpers import one_error_line, strict_json
from visionlens.cli import main

USERS = b"a file the user owns"


@pytest.fixture(scope="module")
def world_photo(tmp_path_factory):
    """One synthetic-world image as a PNG file, in a folder of its own."""
    import numpy as np
    from PIL import Image

    from visionlens.data.world import World, WorldConfig

    image = World(WorldConfig(size=64), seed=0).batch("test", [0])["image"][0]
    path = tmp_path_factory.mktemp("photo") / "w.png"
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
    return path


def _plant(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(USERS)
    return path


@pytest.mark.parametrize("command", [
    ["world", "--n", "2", "--size", "32"],
    ["bank", "--model", "world-dino", "--n", "4", "--device", "cpu"],
])
def test_a_one_file_output_that_exists_is_refused_and_force_replaces_it(tmp_path, capsys, command):
    name = "existing.png" if command[0] == "world" else "existing.out"
    dest = _plant(tmp_path / name)
    assert main([*command, "--out", str(dest)]) == 2
    assert "--force" in one_error_line(capsys.readouterr().err, name, "already exists")
    assert dest.read_bytes() == USERS
    assert main([*command, "--out", str(dest), "--force"]) == 0
    assert dest.read_bytes() != USERS and dest.stat().st_size > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary file left


@pytest.mark.parametrize("command", [["world", "--n", "2"], ["bank", "--n", "4"]])
def test_a_one_file_output_that_is_a_folder_is_refused(tmp_path, capsys, command):
    assert main([*command, "--out", str(tmp_path)]) == 2
    one_error_line(capsys.readouterr().err, "is a folder")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def small_demo(monkeypatch, mobilenet, imagenet_photos):
    """The demo's own inputs, made small: one model, two photos."""
    import visionlens.data.samples as samples
    import visionlens.models as models

    monkeypatch.setattr(samples, "sample_images", lambda which="all", download=True: list(imagenet_photos[:2]))
    monkeypatch.setattr(models, "available_models", lambda kind=None: ["mobilenet_v2"])
    return ["demo", "--device", "cpu", "--quiet"]


@pytest.mark.parametrize("planted", ["index.html", "mobilenet_v2"])
def test_demo_refuses_a_users_file_and_runs_again_into_its_own_folder(tmp_path, capsys, small_demo, planted):
    users = _plant(tmp_path / "mine" / planted)
    assert main([*small_demo, "--out", str(tmp_path / "mine")]) == 2
    one_error_line(capsys.readouterr().err, planted, "not written by visionlens")
    assert users.read_bytes() == USERS and sorted(p.name for p in users.parent.iterdir()) == [planted]

    out = tmp_path / "demo"
    assert main([*small_demo, "--out", str(out)]) == 0
    assert main([*small_demo, "--out", str(out)]) == 0  # its own page and folders are replaced
    assert set(strict_json((out / "summary.json").read_text())["files"]) == {"mobilenet_v2", "index.html"}


CONCEPTS = ["concepts", "--model", "world-cnn", "--classes", "0", "--images", "2", "--n-concepts", "2",
            "--vae-epochs", "2", "--quiet"]


@pytest.mark.parametrize("planted", ["index.html", "metrics.csv", "sheets/class_0_ice.png"])
def test_concepts_refuses_a_users_file_and_runs_again_into_its_own_folder(tmp_path, capsys, planted):
    users = _plant(tmp_path / "mine" / planted)
    assert main([*CONCEPTS, "--out", str(tmp_path / "mine")]) == 2
    one_error_line(capsys.readouterr().err, planted.split("/")[-1], "not written by visionlens")
    assert users.read_bytes() == USERS and not (tmp_path / "mine" / "concepts.json").exists()

    out = tmp_path / "concepts"
    assert main([*CONCEPTS, "--out", str(out)]) == 0
    assert main([*CONCEPTS, "--out", str(out)]) == 0
    assert (out / "sheets" / "class_0_ice.png").stat().st_size > 100


EVALUATE = ["evaluate", "--n", "2", "--metrics", "pointing-game", "--device", "cpu", "--quiet"]


@pytest.mark.parametrize("planted", ["index.html", "report.csv", "settings.json"])
def test_evaluate_refuses_a_users_file_in_a_folder_that_is_not_an_evaluation(tmp_path, capsys, planted):
    users = _plant(tmp_path / "mine" / planted)
    assert main([*EVALUATE, "--out", str(tmp_path / "mine")]) == 2
    one_error_line(capsys.readouterr().err, planted, "not written by visionlens")
    assert users.read_bytes() == USERS and sorted(p.name for p in users.parent.iterdir()) == [planted]


def test_evaluate_resumes_its_own_folder(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main([*EVALUATE, "--out", str(out)]) == 0
    assert main([*EVALUATE[:2], "3", *EVALUATE[3:], "--out", str(out)]) == 0  # one more image into the same folder
    images = [strict_json(line)["image"] for line in (out / "results.jsonl").read_text().splitlines()]
    assert images == ["world:test:0", "world:test:1", "world:test:2"]  # the first two kept, the third added


def test_a_users_json_of_the_records_name_does_not_make_the_folder_the_commands(tmp_path, capsys):
    folder = tmp_path / "mine"
    _plant(folder / "index.html")
    (folder / "concepts.json").write_text('{"mine": true}')
    (folder / "settings.json").write_text('{"mine": true}')
    assert main([*CONCEPTS, "--out", str(folder)]) == 2
    one_error_line(capsys.readouterr().err, "not written by visionlens")
    assert main([*EVALUATE, "--out", str(folder)]) == 2
    one_error_line(capsys.readouterr().err, "not written by visionlens")
    assert (folder / "index.html").read_bytes() == USERS and (folder / "concepts.json").read_text() == '{"mine": true}'


def test_demo_runs_again_into_a_folder_an_older_demo_wrote(tmp_path, small_demo):
    """visionlens 0.1.0's demo wrote no summary.json of its own; its model folders' summaries mark it."""
    out = tmp_path / "demo"
    _plant(out / "index.html")
    _plant(out / "mobilenet_v2" / "summary.json").write_text(
        '{"model": "mobilenet_v2", "images": [], "versions": {"visionlens": "0.1.0"}}')
    assert main([*small_demo, "--out", str(out)]) == 0
    assert (out / "index.html").read_bytes() != USERS and (out / "summary.json").is_file()


def test_a_users_json_named_summary_does_not_make_the_folder_visionlens_own(tmp_path, capsys, world_photo):
    """Any JSON of that name was read as an earlier run's record: the user's summary.json and the
    index.html beside it were replaced."""
    for command in (["explain", str(world_photo), "--model", "world-cnn"],
                    ["explain-pair", str(world_photo), str(world_photo), "--model", "world-metric"]):
        folder = tmp_path / command[0]
        (folder / "summary.json").parent.mkdir()
        (folder / "summary.json").write_text('{"my": "data"}')
        _plant(folder / "index.html")
        assert main([*command, "--device", "cpu", "--out", str(folder)]) == 2
        one_error_line(capsys.readouterr().err, "summary.json", "not written by visionlens")
        assert (folder / "summary.json").read_text() == '{"my": "data"}' and (folder / "index.html").read_bytes() == USERS


def test_evaluate_does_not_append_to_a_users_results_file(tmp_path, capsys):
    users = _plant(tmp_path / "mine" / "results.jsonl")
    assert main([*EVALUATE, "--out", str(tmp_path / "mine")]) == 2
    one_error_line(capsys.readouterr().err, "results.jsonl", "not written by visionlens")
    assert users.read_bytes() == USERS


def test_retrieve_into_a_folder_inside_its_gallery_does_not_rank_its_own_outputs(tmp_path, capsys, world_photo):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for name in ("a.png", "b.png"):
        (gallery / name).write_bytes(world_photo.read_bytes())
    argv = ["retrieve", str(world_photo), "--gallery", str(gallery), "--model", "world-metric", "--device", "cpu",
            "--quiet", "--no-cache", "--top", "2", "--out", str(gallery / "out")]
    assert main(argv) == 0 and main(argv) == 0
    summary = strict_json((gallery / "out" / "summary.json").read_text())
    assert summary["gallery"]["images"] == 2
    assert sorted(m["file"] for m in summary["queries"][0]["matches"]) == [str(gallery / "a.png"), str(gallery / "b.png")]


def test_retrieve_refuses_a_cache_folder_that_is_a_file_before_embedding(tmp_path, capsys, world_photo):
    cache = _plant(tmp_path / "cachefile")
    assert main(["retrieve", str(world_photo), "--gallery", str(world_photo.parent), "--model", "world-metric",
                 "--device", "cpu", "--quiet", "--cache-dir", str(cache), "--out", str(tmp_path / "o")]) == 2
    one_error_line(capsys.readouterr().err, "cachefile is a file; give --cache-dir a folder")
    assert cache.read_bytes() == USERS and not (tmp_path / "o").exists()
