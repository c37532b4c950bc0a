"""`visionlens evaluate --engine ray` on a real Ray cluster on this machine (a head and one more
node on 127.0.0.1, started by the module's fixture and always stopped): the one-process run's
values, an actor that dies mid-run, a driver killed and re-run."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from visionlens.cli import main
from visionlens.evaluation import evaluate, read_results

from helpers import kill_after_records, labelled_folder, one_error_line

ARGS = {"models": ["world-cnn"], "methods": ["gradcam", "eigencam"], "data": "world:test", "n": 12, "batch_size": 2,
        "device": "cpu", "step": 1024, "metrics": ["deletion", "pointing-game", "relevance-mass"], "progress": False}
CLI = ["evaluate", "--models", "world-cnn", "--methods", "gradcam,eigencam", "--data", "world:test", "--n", "12",
       "--batch-size", "2", "--device", "cpu", "--step", "1024", "--metrics", "deletion,pointing-game,relevance-mass",
       "--quiet", "--engine", "ray"]
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}  # a test cluster on 127.0.0.1 only


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli(*args: str, env: dict) -> None:
    ray_cli = Path(sys.executable).with_name("ray")
    done = subprocess.run([str(ray_cli), *args, "--disable-usage-stats"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def _stop_processes_under(temp: str) -> None:
    """Stop this fixture's Ray processes only: those that name the session folder under ``temp``
    on their command line, and their children (``ray stop`` would stop every Ray cluster on the
    machine, another user's or test run's included)."""
    import psutil  # a dependency of Ray

    ours = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid != os.getpid() and temp in " ".join(proc.info["cmdline"] or ()):
            with contextlib.suppress(psutil.NoSuchProcess):  # and their children (agents rename themselves)
                ours.update({p.pid: p for p in [proc, *proc.children(recursive=True)]})
    ours = list(ours.values())
    for proc in ours:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(ours, timeout=15)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=15)


@pytest.fixture(scope="module")
def cluster():
    """The address of a Ray head (2 CPUs) plus one worker node (1 CPU), small object stores; stopped
    at the end whatever the tests did."""
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'visionlens[ray]')")
    saved = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)
    env = {**os.environ}
    temp = tempfile.mkdtemp(prefix="vlray")  # short: Ray's socket paths live under it
    address = f"127.0.0.1:{_free_port()}"
    store = "--object-store-memory=100000000"
    try:
        _ray_cli("start", "--head", f"--port={address.split(':')[1]}", "--num-cpus=2", store,
                 "--include-dashboard=false", "--node-ip-address=127.0.0.1", f"--temp-dir={temp}", env=env)
        _ray_cli("start", f"--address={address}", "--num-cpus=1", store, "--node-ip-address=127.0.0.1", env=env)
        yield address
    finally:
        _stop_processes_under(temp)
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    """The records of the one-process run, by key."""
    out = tmp_path_factory.mktemp("local")
    evaluate(out=out, **ARGS)
    return _by_key(out / "results.jsonl")


def _by_key(path: Path) -> dict:
    return {(r["model"], r["method"], r["image"]): r for r in read_results(path)}


def _assert_same_values(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys() and len(expected) == 24
    for key, rec in expected.items():
        assert got[key]["predicted"] == rec["predicted"] and got[key]["label"] == rec["label"]
        assert got[key]["metrics"].keys() == rec["metrics"].keys()
        for metric, value in rec["metrics"].items():
            other = got[key]["metrics"][metric]
            assert (value is None) == (other is None), (key, metric)
            assert value is None or abs(value - other) <= 1e-6, (key, metric, value, other)


def test_ray_run_gives_the_one_process_values_and_survives_a_dead_actor(cluster, one_process, tmp_path,
                                                                         monkeypatch):
    from visionlens.evaluation.ray_engine import CRASH_ONCE_ENV, RayEngine

    marker = tmp_path / "crashed"
    monkeypatch.setenv(CRASH_ONCE_ENV, str(marker))  # the first batch's actor process exits; Ray restarts it
    out = tmp_path / "ray"
    evaluate(out=out, engine=RayEngine(address=cluster, workers=2), **ARGS)
    assert marker.exists(), "no actor died: the retry was not exercised"
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 24  # the retried batch's records are written once
    _assert_same_values(_by_key(out / "results.jsonl"), one_process)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["command"]["engine"] == {"engine": "ray", "address": cluster, "workers": 2, "gpus_per_worker": 0.0}
    assert (out / "examples" / "world-cnn.gradcam.0.png").stat().st_size > 0


def test_driver_killed_then_rerun_resumes_with_nothing_lost_or_duplicated(cluster, one_process, tmp_path):
    out = tmp_path / "killed"
    results = out / "results.jsonl"
    cmd = [sys.executable, "-m", "visionlens", *CLI, "--address", cluster, "--workers", "1", "--out", str(out)]
    kill_after_records(cmd, results, records=4)  # one batch of two methods written
    partial = _by_key(results)
    assert 0 < len(partial) < 24 and not (out / "report.csv").exists()

    assert main([*CLI, "--address", cluster, "--workers", "2", "--out", str(out)]) == 0
    lines = results.read_text().splitlines()
    assert len(lines) == 24  # nothing lost, nothing duplicated
    got = _by_key(results)
    assert all(got[k] == rec for k, rec in partial.items())  # what the killed run wrote stays as it was
    _assert_same_values(got, one_process)


def test_an_unreadable_image_on_the_cluster_is_left_out_and_named(cluster, tmp_path, capsys, imagenet_photos):
    data = labelled_folder(tmp_path / "photos", imagenet_photos[:3])
    broken = Path(data) / imagenet_photos[1].name
    broken.write_bytes(b"not an image")
    argv = ["evaluate", "--models", "mobilenet_v2", "--methods", "gradcam", "--data", data, "--batch-size", "2",
            "--device", "cpu", "--step", "12544", "--metrics", "deletion", "--quiet", "--engine", "ray",
            "--address", cluster, "--workers", "1", "--out", str(tmp_path / "o")]
    scratch = lambda: set(Path(tempfile.gettempdir()).glob("visionlens-ray-*"))  # noqa: E731
    before = scratch()
    assert main(argv) == 1  # the others scored on the cluster; the exit status says one was left out
    assert scratch() == before  # the actors removed their scratch folders (ray.kill skips __del__)
    err = capsys.readouterr().err  # Ray may log its own lines on stderr too
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and broken.name in errors[0] and "not a readable image" in errors[0], err
    assert "left out" in errors[0] and "Traceback" not in err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [u["image"] for u in report["unreadable"]] == [broken.name]
    assert len(read_results(tmp_path / "o" / "results.jsonl")) == 2


def test_ray_flags_without_the_ray_engine_are_one_line(tmp_path, capsys):
    assert main(["evaluate", "--workers", "2", "--out", str(tmp_path / "x")]) == 2
    one_error_line(capsys.readouterr().err, "--workers", "--engine ray")
    assert not (tmp_path / "x").exists()


def test_the_core_and_the_local_engine_do_not_import_ray():
    code = ("import sys, visionlens, visionlens.cli, visionlens.evaluation, visionlens.evaluation.ray_engine as e; "
            "assert e.engine_for('local', None, None, None) is None; print('ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_an_address_where_no_cluster_listens_is_one_line(tmp_path, capsys):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'visionlens[ray]')")
    out = tmp_path / "x"
    assert main(["evaluate", "--n", "2", "--quiet", "--engine", "ray", "--address", f"127.0.0.1:{_free_port()}",
                 "--out", str(out)]) == 2
    one_error_line(capsys.readouterr().err, "--address", "ray start --head")
    assert not out.exists()  # a run that stops before its first result leaves nothing
