"""The explorer under stress: Ctrl-C while a job runs, jobs stopped when the server stops, a results
folder with a broken settings.json, errors that FastAPI and Starlette raise themselves (unknown
routes, wrong methods, bodies that cannot be parsed), and `serve --weights`."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

import visionlens
from visionlens.cli import main

from helpers import json_error_line, one_error_line


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return probe.getsockname()[1]


class Tiny(torch.nn.Module):
    """A classifier small enough that a test builds it in no time."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture()
def tiny_app(tmp_path):
    """``(app factory, explorer)`` on :class:`Tiny`, with an empty results folder."""
    from visionlens.serve.app import create_app
    from visionlens.serve.explorer import Explorer

    (tmp_path / "results").mkdir()
    explorer = Explorer({"tiny": visionlens.load_model(Tiny())}, results=tmp_path / "results")
    return create_app, explorer


# --- 1. stopping while a job runs ------------------------------------------------------------


def endless(job):
    """Work that runs torch operations until it is cancelled."""
    x = torch.ones(64, 64)
    while True:
        x = (x @ x).clamp(-1, 1)


def test_closing_cancels_running_and_queued_jobs_and_waits_for_their_threads():
    import threading

    from visionlens.serve.jobs import Jobs
    from visionlens.serve.safety import ShuttingDown

    jobs, lock = Jobs(keep=1), threading.Lock()
    running = jobs.start(lock, endless, "endless", 1)
    queued = jobs.start(lock, endless, "queued", 1)  # waits for the lock; never evicts `running`, which is not finished
    deadline = time.monotonic() + 10
    while running.state != "running" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert running.state == "running" and queued.state == "queued"
    assert jobs.close(timeout=10) is True
    assert running.state == queued.state == "cancelled"
    assert not [t for t in jobs._pool._threads if t.is_alive()]  # its workers have ended
    assert lock.acquire(blocking=False)  # released
    with pytest.raises(ShuttingDown, match="shutting down"):
        jobs.start(lock, endless, "late", 1)
    assert jobs.close(timeout=1) is True  # again: nothing left


def test_the_app_stops_its_jobs_when_the_server_stops(tiny_app):
    from fastapi.testclient import TestClient

    create_app, explorer = tiny_app
    with TestClient(base_url="http://127.0.0.1", app=create_app(explorer)) as client:  # the context runs the app's lifespan (startup, shutdown)
        job = explorer.jobs.start(explorer.device_lock(explorer.models["tiny"]), endless, "endless", 1)
        deadline = time.monotonic() + 10
        while job.state != "running" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert client.get(f"/api/jobs/{job.id}").json()["state"] == "running"
    assert job.state == "cancelled" and not explorer.jobs.closed  # stopped; another app may still serve it
    later = TestClient(base_url="http://127.0.0.1", app=create_app(explorer))  # no lifespan: requests only
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buffer, format="PNG")
    image = later.post("/api/upload", files={"file": ("red.png", buffer.getvalue(), "image/png")}).json()["image"]
    request = {"model": "tiny", "image": image, "methods": ["gradcam"]}
    started = later.post("/api/jobs", json=request)
    assert started.status_code == 200, started.text
    assert explorer.close(timeout=10) is True  # what `serve` does before it exits
    json_error_line(later.post("/api/jobs", json=request), 503, "shutting down")


def test_ctrl_c_while_a_scorecam_job_runs_exits_cleanly(tmp_path, imagenet_photos):
    """A serve process stopped with SIGINT while a Score-CAM job runs ends with the CLI's status for
    Ctrl-C (130, "interrupted"), soon, and not with an abort (134, "terminate called ...")."""
    import urllib.request

    images = tmp_path / "images"
    images.mkdir()
    photo = imagenet_photos[0]
    (images / photo.name).write_bytes(photo.read_bytes())
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "visionlens", "serve", "--model", "mobilenet_v2", "--images", str(images),
         "--port", str(port), "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # Ctrl-C as in a terminal (not ignored)
    base = f"http://127.0.0.1:{port}"

    def call(path, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                call("/api/info")
                break
            except OSError:
                assert time.monotonic() < deadline, "the explorer did not start"
                time.sleep(0.2)
        job = call("/api/jobs", {"model": "mobilenet_v2", "image": f"file:{photo.name}", "methods": ["scorecam"]})
        deadline = time.monotonic() + 20
        while (state := call(f"/api/jobs/{job['id']}"))["passes"] < 2:
            assert state["state"] in ("queued", "running") and time.monotonic() < deadline, state
            time.sleep(0.1)
        assert state["state"] == "running"
        stopped = time.monotonic()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        waited = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    err = err.decode(errors="replace")
    assert "terminate called" not in err and "Traceback" not in err, err
    assert proc.returncode == 130, (proc.returncode, err)
    assert err.strip().splitlines()[-1] == "interrupted", err
    assert waited < 15, waited  # the job was cancelled, not waited for to the end


# --- 2. a results folder with a broken settings.json -----------------------------------------


def _record_maps_of_a_run(tiny_app, settings: bytes, model: str):
    """GET /api/record-maps of a results folder 'run1' with one record of ``model`` and ``settings``."""
    from fastapi.testclient import TestClient

    create_app, explorer = tiny_app
    run = explorer.results / "run1"
    run.mkdir()
    (run / "index.html").write_text("<html></html>\n")
    (run / "results.jsonl").write_text(json.dumps({"image": "chelsea.png", "model": model, "method": "gradcam",
                                                   "label": 1, "metrics": {"deletion": 0.1}}) + "\n")
    (run / "settings.json").write_bytes(settings)
    client = TestClient(base_url="http://127.0.0.1", app=create_app(explorer), raise_server_exceptions=False)
    return client.get("/api/record-maps", params={"run": "run1", "image": "chelsea.png", "model": model})


@pytest.mark.parametrize("settings, words", [
    ("{bad json", ["not valid JSON"]),
    ("[1, 2]", ["holds a list", "not an object"]),
    (b"\xff\xfe\x00garbage", ["not valid JSON"]),
    ("[" * 100_000, ["not valid JSON"]),
    ('{"models": [1]}', ["'models' is a list"]),
    ('{"models": {"mobilenet_v2": 3}}', ["model 'mobilenet_v2' is a number"]),
    ('{"data": "samples"}', ["'data' is a string"]),
])
def test_a_broken_settings_json_is_a_one_line_400_naming_the_folder_and_the_file(tiny_app, settings, words):
    response = _record_maps_of_a_run(tiny_app, settings if isinstance(settings, bytes) else settings.encode(),
                                     "mobilenet_v2")
    json_error_line(response, 400, "results folder 'run1'", "settings.json", *words)


@pytest.mark.parametrize("settings, words", [
    ({"models": {"mobilenet_v2": {"spec": ["x"]}}}, ["model 'mobilenet_v2'", "settings.json"]),
    ({"models": {}, "data": {"kind": "folder", "path": 3}}, ["settings.json", "'folder' data"]),
    ({"models": {}, "data": {"kind": "folder", "path": ""}}, ["settings.json", "'folder' data"]),
])
def test_settings_of_the_wrong_shape_inside_are_one_line_400s(tiny_app, settings, words):
    name = "mobilenet_v2" if "mobilenet_v2" in settings["models"] else "tiny"
    json_error_line(_record_maps_of_a_run(tiny_app, json.dumps(settings).encode(), name), 400, *words)


# --- 3. every error is {"error": "..."} ------------------------------------------------------


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("method, path, kwargs, status, words", [
    ("get", "/nope", {}, 404, ["not served", "/nope"]),
    ("get", "/api/nope%0Aline", {}, 404, ["not served"]),
    ("post", "/api/info", {}, 405, ["method not allowed", "POST /api/info", "GET"]),
    ("get", "/api/explain", {}, 405, ["method not allowed", "GET /api/explain", "POST"]),
    ("get", "/api/jobs/0000/cancel", {}, 405, ["method not allowed", "POST"]),
    ("post", "/api/explain", {"content": b"[" * 100_000, "headers": JSON}, 400, ["bad request", "could not be parsed"]),
    ("post", "/api/explain", {"content": b'{"a":' * 5_000, "headers": JSON}, 400, ["bad request"]),
    ("post", "/api/explain", {"content": bytes(range(256)), "headers": JSON}, 400, ["bad request", "not valid JSON"]),
    ("post", "/api/explain", {"content": b"\xff\xfe{", "headers": JSON}, 400, ["bad request"]),
    ("post", "/api/explain", {"content": bytes(range(256))}, 400, ["bad request", "JSON object"]),
    ("post", "/api/explain", {"json": [1, 2]}, 400, ["bad request", "JSON object"]),
    ("post", "/api/upload", {"content": bytes(range(256)),
                             "headers": {"Content-Type": "multipart/form-data; boundary=xx"}}, 400, ["bad request"]),
    ("post", "/api/upload", {"content": b"x", "headers": {"Content-Type": "multipart/form-data"}}, 400, ["bad request"]),
])
def test_routing_and_parsing_errors_are_one_line_error_json(tiny_app, method, path, kwargs, status, words):
    from fastapi.testclient import TestClient

    create_app, explorer = tiny_app
    client = TestClient(base_url="http://127.0.0.1", app=create_app(explorer), raise_server_exceptions=False)
    response = getattr(client, method)(path, **kwargs)
    json_error_line(response, status, *words)
    if status == 405:
        assert response.headers["allow"]


# --- 4. serve --weights ----------------------------------------------------------------------


def test_serve_weights_loads_a_library_model_from_a_local_file(tmp_path, monkeypatch, capsys):
    import torchvision

    module = torchvision.models.mobilenet_v3_small(num_classes=10)
    weights = tmp_path / "mine.pt"
    torch.save(module.state_dict(), weights)
    served = []
    monkeypatch.setattr("visionlens.serve.cli._run", lambda app, host, port: served.append(app))
    spec = "torchvision:mobilenet_v3_small"
    assert main(["serve", "--model", spec, "--weights", str(weights), "--port", str(free_port()), "--device", "cpu"]) == 0
    explorer = served[0].state.explorer
    loaded = explorer.models[spec]
    assert list(explorer.models) == [spec] and loaded.module.classifier[-1].out_features == 10
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[key].cpu(), value), key
    assert loaded.source["weights"] == str(weights.resolve())
    assert explorer.jobs.closed  # closed when the server returned


def test_serve_weights_is_for_one_model_only(tmp_path, capsys):
    weights = tmp_path / "mine.pt"
    weights.write_bytes(b"unused")
    assert main(["serve", "--model", "world-cnn", "--model", "world-vit", "--weights", str(weights),
                 "--port", str(free_port())]) == 2
    one_error_line(capsys.readouterr().err, "--weights", "one model", "world-cnn, world-vit")
    assert main(["serve", "--model", "torchvision:mobilenet_v3_small", "--weights", str(tmp_path / "missing.pt"),
                 "--port", str(free_port())]) == 2
    one_error_line(capsys.readouterr().err, "missing.pt")


def test_serve_without_python_multipart_names_the_extra(monkeypatch, capsys):
    """FastAPI raises a RuntimeError for form routes without python-multipart: it was an internal
    error (exit 70) for an install that had fastapi and uvicorn but not the whole extra."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("python_multipart", "multipart") else real(name, *a))
    assert main(["serve", "--port", "8765"]) == 2  # refused before the port is opened or a model loads
    one_error_line(capsys.readouterr().err, "python-multipart is missing", "pip install 'visionlens[serve]'")
