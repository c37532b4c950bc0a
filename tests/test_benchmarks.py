"""The benchmark scripts' command lines: every script answers --help, and bad input is one
``error:`` line on stderr with exit status 2, never a traceback. No weights, photos or network:
each case fails at argument parsing or before any model is loaded."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if p.name != "_cli.py")

# (script, arguments); "{tmp}" is replaced by a folder that exists and is empty
BAD_INPUT = [
    ("insertion_start.py", ["imagenet", "--data", "{tmp}/nonexistent"]),
    ("insertion_start.py", ["world", "--n", "-1"]),
    ("perturbation_floor.py", ["--methods", "nosuch"]),
    ("perturbation_floor.py", ["--models", "vgg16"]),
    ("paired_differences.py", ["{tmp}/nonexistent"]),
    ("evaluation_tables.py", ["{tmp}/nonexistent"]),
    ("zoo_accuracy.py", ["{tmp}", "--batch-size", "0"]),
    ("naflow_speed.py", ["--photos", "{tmp}"]),
    ("evaluate_floor.py", ["--thousand", "--model", "efficientnet_lite0"]),
]

# Runs each script given as `python SCRIPT --help` would (its folder first on the path, run as
# __main__, its own modules imported afresh), in one process: a process per script imports torch
# each time, seconds apiece on a loaded machine. Prints {script: [exit code, stdout]} as JSON.
HELP_DRIVER = """
import contextlib, io, json, runpy, sys
folder, scripts, codes = sys.argv[1], sys.argv[2:], {}
sys.path.insert(0, folder)
for script in scripts:
    for name in [n for n, m in sys.modules.items() if str(getattr(m, "__file__", "")).startswith(folder)]:
        del sys.modules[name]
    sys.argv, out, code = [f"{folder}/{script}", "--help"], io.StringIO(), 0
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as stop:
        code = stop.code or 0
    except Exception as err:
        code = repr(err)
    codes[script] = [code, out.getvalue()]
print(json.dumps(codes))
"""


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def helps(tmp_path_factory) -> dict:
    done = subprocess.run([sys.executable, "-c", HELP_DRIVER, str(BENCHMARKS), *SCRIPTS], env=_env(),
                          cwd=tmp_path_factory.mktemp("help"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_the_scripts_are_found():
    assert {"cam_speed.py", "insertion_start.py", "paired_differences.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(helps, script):
    code, out = helps[script]
    assert code == 0 and "usage:" in out, (code, out)


@pytest.fixture(scope="module")
def bad_input(tmp_path_factory) -> dict:
    """The bad-input cases, each a `python SCRIPT ...` of its own, run a few at a time."""
    tmp = tmp_path_factory.mktemp("bench")

    def run(case):
        script, args = case
        return subprocess.run([sys.executable, str(BENCHMARKS / script), *(a.replace("{tmp}", str(tmp)) for a in args)],
                              cwd=tmp, env=_env(), capture_output=True, text=True, timeout=120)

    cases = [(s, tuple(a)) for s, a in BAD_INPUT]
    with ThreadPoolExecutor(max_workers=3) as pool:
        return dict(zip(cases, pool.map(run, cases)))


@pytest.mark.parametrize("script, args", BAD_INPUT, ids=[f"{s}:{' '.join(a)}" for s, a in BAD_INPUT])
def test_bad_input_is_one_error_line(bad_input, script, args):
    done = bad_input[(script, tuple(args))]
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr


def _import(name: str, monkeypatch):
    """A benchmark script as a module (its own folder on the path, as when it runs)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module(name)


def test_insertion_start_keeps_the_source_and_the_photo_folder_apart(monkeypatch, tmp_path):
    parser = _import("insertion_start", monkeypatch).parser()
    args = parser.parse_args(["imagenet", "--n", "2"])
    assert (args.source, args.n, args.photos) == ("imagenet", 2, Path("../shared/data/imagenet-sample"))
    args = parser.parse_args(["world", "--data", str(tmp_path)])
    assert (args.source, args.photos) == ("world", tmp_path)


def test_naflow_photos_match_any_case_and_random_inputs_only_without_photos(monkeypatch, tmp_path):
    import torch
    from PIL import Image

    naflow = _import("naflow_speed", monkeypatch)
    Image.new("RGB", (8, 8)).save(tmp_path / "one.JPG")
    Image.new("RGB", (8, 8)).save(tmp_path / "two.png")
    assert naflow.photo_folder(str(tmp_path)) == tmp_path
    assert [p.name for p in naflow._photos(tmp_path)] == ["one.JPG", "two.png"]
    batch = naflow.photos_batch(tmp_path, 3, lambda image: torch.zeros(3, 8, 8))  # repeated to 3
    assert tuple(batch.shape) == (3, 3, 8, 8)
    monkeypatch.setattr(naflow, "DEFAULT_PHOTOS", str(tmp_path / "nonexistent"))
    assert tuple(naflow.photos_batch(None, 2, None).shape) == (2, 3, 224, 224)

