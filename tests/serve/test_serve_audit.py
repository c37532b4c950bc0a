"""The explorer's limits and guards: uploads refused while they stream in, foreign hosts and
origins, the memory uploads keep, bounded jobs, a page that never waits for a device, Ctrl-C,
IPv6, eval-mode predictions, run images outside the served folders, paths in errors, the
Similarity view's warnings and failures, and a listing cut at its limit."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import threading
import time

import pytest
import torch
from PIL import Image

import visionlens
from helpers import json_error_line

LOCAL = "http://127.0.0.1"


class Tiny(torch.nn.Module):
    """A classifier with BatchNorm, small enough that a test builds it in no time."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        self.head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture()
def tiny(tmp_path):
    """``(explorer, app)`` on :class:`Tiny` with images and results folders under ``tmp_path``, 1 MiB uploads."""
    from visionlens.serve.app import create_app
    from visionlens.serve.explorer import Explorer

    for name in ("images", "results"):
        (tmp_path / name).mkdir()
    explorer = Explorer({"tiny": visionlens.load_model(Tiny())}, images=tmp_path / "images",
                        results=tmp_path / "results", max_upload_bytes=1024 * 1024)
    return explorer, create_app(explorer)


def png(size=(32, 32), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, "red" if mode == "RGB" else 0).save(buffer, format="PNG")
    return buffer.getvalue()


def post_chunks(app, headers: dict, chunks, path="/api/upload"):
    """POST ``chunks`` to the ASGI ``app`` as the server would hand them over; ``(status, body,
    bytes the app read)``."""
    sent, read = [], [0]
    source = iter(chunks)

    async def receive():
        chunk = next(source, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        read[0] += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in {"host": "127.0.0.1:8000", **headers}.items()],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), read[0]


# --- 1. uploads over the limit are refused while they stream in --------------------------------


def test_a_chunked_upload_over_the_limit_is_refused_before_the_body_is_read(tiny):
    _, app = tiny
    boundary = "xx"
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'.encode()
    endless = (head if i == 0 else b"\0" * 65536 for i in range(16 * 1024))  # 1 GiB if read to the end
    status, body, read = post_chunks(app, {"content-type": f"multipart/form-data; boundary={boundary}"}, endless)
    assert status == 413 and body["error"].endswith("uploads are limited to 1 MiB (--max-upload-mb)"), body
    assert read < 2 * 1024 * 1024


def test_a_declared_length_over_the_limit_is_refused_at_once(tiny):
    _, app = tiny
    headers = {"content-type": "multipart/form-data; boundary=xx", "content-length": str(10**9)}
    status, body, read = post_chunks(app, headers, iter([b"x" * 1000] * 1000))
    assert status == 413 and "limited to 1 MiB" in body["error"] and read == 0


def test_an_upload_within_the_limit_still_works(tiny):
    from fastapi.testclient import TestClient

    client = TestClient(tiny[1], base_url=LOCAL)
    response = client.post("/api/upload", files={"file": ("red.png", png(), "image/png")})
    assert response.status_code == 200 and response.json()["width"] == 32


# --- 2. Host and Origin ---------------------------------------------------------------------------


def test_foreign_hosts_and_cross_site_posts_are_refused(tiny):
    from fastapi.testclient import TestClient

    client = TestClient(tiny[1], base_url=LOCAL)
    for path in ("/files/images/a.png", "/api/info", "/"):
        json_error_line(client.get(path, headers={"Host": "attacker.example"}), 403, "refused", "attacker.example")
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "127.0.0.2:80"):
        assert client.get("/api/info", headers={"Host": host}).status_code == 200, host
    form = {"file": ("red.png", png(), "image/png")}
    json_error_line(client.post("/api/upload", files=form, headers={"Origin": "http://evil.example"}), 403, "another site")
    json_error_line(client.post("/api/upload", files=form, headers={"Origin": "null"}), 403)
    assert client.post("/api/upload", files=form, headers={"Origin": LOCAL}).status_code == 200
    assert client.get("/api/info", headers={"Origin": "http://evil.example"}).status_code == 200  # reads: CORS keeps them


def test_a_server_on_another_host_takes_that_host():
    from visionlens.serve.app import host_allowed

    assert host_allowed("myhost.lan:8000", "myhost.lan") and not host_allowed("evil.example", "myhost.lan")
    assert host_allowed("192.168.1.5:8000", "0.0.0.0") and not host_allowed("evil.example:8000", "0.0.0.0")
    assert host_allowed("[::1]:8000", "::1") and not host_allowed("", "127.0.0.1")


# --- 3. memory kept by uploads ----------------------------------------------------------------------


def test_big_uploads_are_kept_as_bounded_working_copies(tiny):
    from visionlens.serve import explorer as explorer_module
    from visionlens.serve.safety import WORKING_SIDE

    explorer, _ = tiny
    explorer.max_upload_bytes, explorer.max_pixels = 20 * 1024 * 1024, 40_000_000
    data = png((6000, 5000), "L")  # a few kB, 30 M pixels
    refs = [explorer.add_upload(data)["image"] for _ in range(4)]
    kept = [explorer.uploads.get(r.partition(":")[2]) for r in refs]
    assert all(max(image.size) <= WORKING_SIDE for image in kept)
    assert sum(explorer_module.image_bytes(image) for image in kept) <= 4 * 3 * WORKING_SIDE ** 2
    budget = explorer_module.Recent(size=10, budget=100, weigh=len)
    tokens = [budget.add(b"x" * 40) for _ in range(5)]
    assert budget.kept_bytes <= 100 and budget.get(tokens[0]) is None and budget.get(tokens[-1]) is not None


# --- 4. bounded jobs -------------------------------------------------------------------------------


def endless(job):
    x = torch.ones(16, 16)
    while True:
        x = (x @ x).clamp(-1, 1)


def test_queued_and_running_jobs_are_kept_capped_and_run_by_few_workers():
    from visionlens.serve.app import _status
    from visionlens.serve.jobs import Jobs
    from visionlens.serve.safety import TooMany

    before = threading.active_count()
    jobs, lock = Jobs(keep=1, active=3, workers=1), threading.Lock()
    started = [jobs.start(lock, endless, f"job {i}", 1) for i in range(3)]
    with pytest.raises(TooMany, match="3 jobs are queued or running") as refused:
        jobs.start(lock, endless, "one too many", 1)
    assert _status(refused.value) == 429
    assert [jobs.get(j.id) for j in started] == started  # none dropped while unfinished
    assert threading.active_count() <= before + 1
    jobs.cancel(started[2].id)  # not yet taken by the worker
    assert started[2].state == "cancelled"
    assert jobs.close(timeout=10) is True
    assert all(j.state == "cancelled" for j in started)
    done = Jobs(keep=1)
    finished = [done.start(threading.Lock(), lambda job: {}, "quick", 1) for _ in range(3)]
    assert done.close(timeout=10) is True
    assert done.get(finished[-1].id).state == "done"
    with pytest.raises(visionlens.errors.InputError, match="no job"):
        done.get(finished[0].id)


# --- 5. the page never waits for a device ---------------------------------------------------------


def test_page_and_job_polls_answer_while_many_requests_wait_for_the_device(tiny):
    from fastapi.testclient import TestClient

    explorer, app = tiny
    image = explorer.add_upload(png())["image"]
    lock = explorer.device_lock(explorer.models["tiny"])
    codes, timings = [], {}
    with TestClient(app, base_url=LOCAL) as client:  # one event loop for all requests, as under uvicorn
        lock.acquire()
        release = threading.Timer(4, lock.release)  # a long request on the device
        release.start()
        waiting = [threading.Thread(target=lambda: codes.append(client.post(
            "/api/predict", json={"model": "tiny", "image": image}).status_code)) for _ in range(45)]
        for t in waiting:
            t.start()
        time.sleep(0.5)
        for path in ("/", "/api/jobs/0000"):
            start = time.monotonic()
            client.get(path)
            timings[path] = time.monotonic() - start
        for t in waiting + [release]:
            t.join()
    assert max(timings.values()) < 2, timings
    assert codes == [200] * 45


def test_a_request_that_waits_too_long_for_the_device_is_a_503(tiny, monkeypatch):
    from fastapi.testclient import TestClient

    from visionlens.serve import explorer as explorer_module

    explorer, app = tiny
    image = explorer.add_upload(png())["image"]
    monkeypatch.setattr(explorer_module, "LOCK_WAIT_S", 0.1)
    lock = explorer.device_lock(explorer.models["tiny"])
    with lock:
        response = TestClient(app, base_url=LOCAL).post("/api/predict", json={"model": "tiny", "image": image})
    json_error_line(response, 503, "busy", "/api/jobs")


# --- 6. Ctrl-C ------------------------------------------------------------------------------------


def test_second_ctrl_c_ends_the_process_at_once_with_one_line(monkeypatch, capsys):
    import os
    import signal

    from visionlens.serve.cli import _server_class

    class Base:
        should_exit = False

        def handle_exit(self, sig, frame):
            self.should_exit = True

    def exit_now(status):
        raise SystemExit(status)

    monkeypatch.setattr(os, "_exit", exit_now)
    server = _server_class(Base)()
    server.handle_exit(signal.SIGINT, None)
    first = capsys.readouterr().err.strip().splitlines()
    assert server.should_exit and len(first) == 1 and "waiting for the requests in progress" in first[0]
    with pytest.raises(SystemExit) as ended:
        server.handle_exit(signal.SIGINT, None)
    assert ended.value.code == 130 and capsys.readouterr().err.strip().splitlines() == ["interrupted"]


# --- 7. IPv6 --------------------------------------------------------------------------------------


def test_ipv6_loopback_can_be_listened_on_and_is_shown_in_brackets():
    from visionlens.serve.cli import _bare_host, _check_port, _url

    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6) as probe:
            port = probe.getsockname()[1]
    except OSError:
        pytest.skip("no IPv6 loopback here")
    _check_port("::1", port)
    assert _bare_host("[::1]") == "::1" and _url("::1", 8000) == "http://[::1]:8000/"
    assert _url("127.0.0.1", 8000) == "http://127.0.0.1:8000/"


# --- 9. predictions in eval mode --------------------------------------------------------------------


def test_predict_runs_a_train_mode_model_in_eval_mode_and_leaves_it_as_it_was(tiny):
    explorer, _ = tiny
    image = explorer.add_upload(png())["image"]
    module = explorer.models["tiny"].module
    evaluated = explorer.predict("tiny", image)
    module.train()
    stats = module.features[1].running_mean.clone()
    assert explorer.predict("tiny", image) == evaluated
    assert module.training and torch.equal(module.features[1].running_mean, stats)


# --- 10. a run's images outside the served folders ---------------------------------------------------


def test_record_maps_refuse_a_run_image_outside_the_served_folders(tiny, tmp_path):
    from fastapi.testclient import TestClient

    explorer, app = tiny
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(png())
    (outside / "labels.csv").write_text("file,class_index\nsecret.png,0\n")
    run = explorer.results / "run1"
    run.mkdir()
    (run / "index.html").write_text("<html></html>\n")
    (run / "results.jsonl").write_text(json.dumps({"image": "secret.png", "model": "tiny", "method": "gradcam",
                                                   "label": 0, "metrics": {"deletion": 0.1}}) + "\n")
    settings = {"models": {"tiny": {"spec": "tiny", "weights": "zoo"}}, "data": {"kind": "folder", "path": str(outside)}}
    (run / "settings.json").write_text(json.dumps(settings))
    client = TestClient(app, base_url=LOCAL)
    params = {"run": "run1", "image": "secret.png", "model": "tiny"}
    json_error_line(client.get("/api/record-maps", params=params), 404, "not served", "secret.png")
    (explorer.images / "data").symlink_to(outside)  # the same folder, reached from inside --images
    settings["data"]["path"] = str(explorer.images / "data")
    (run / "settings.json").write_text(json.dumps(settings))
    response = client.get("/api/record-maps", params=params)
    assert response.status_code == 404  # it resolves outside all the same


# --- 11. no server paths in errors ------------------------------------------------------------------


def test_an_unreadable_listed_image_is_named_without_the_servers_path(tiny):
    from fastapi.testclient import TestClient

    explorer, app = tiny
    (explorer.images / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    response = TestClient(app, base_url=LOCAL).post("/api/predict", json={"model": "tiny", "image": "file:bad.png"})
    message = json_error_line(response, 400, "bad.png")
    assert str(explorer.images) not in message and "/" not in message.replace("bad.png", ""), message


# --- 12, 13. the Similarity view's warnings and failures ---------------------------------------------


def test_similarity_reports_warnings_and_skips_bad_gallery_entries(client, served):
    names = client.get("/api/images").json()
    pair = client.post("/api/similarity", json={"model": "mobilenet_v2", "a": f"file:{names[0]}",
                                                "b": f"file:{names[0]}", "metric": "euclidean"})
    assert pair.status_code == 200 and isinstance(pair.json()["warnings"], list), pair.text
    gallery = [f"file:{names[1]}", "file:../secret.txt", "file:missing.png", f"file:{names[2]}"]
    ranked = client.post("/api/similarity", json={"model": "mobilenet_v2", "a": f"file:{names[0]}", "gallery": gallery,
                                                  "top": 1})
    assert ranked.status_code == 200, ranked.text
    body = ranked.json()
    assert [f["image"] for f in body["failures"]] == gallery[1:3] and body["gallery"] == 2
    assert isinstance(body["warnings"], list)
    assert all(str(served["images"]) not in f["error"] for f in body["failures"])


def test_identical_images_compared_by_distance_bring_the_librarys_warning(tiny):
    from fastapi.testclient import TestClient

    explorer, app = tiny
    image = explorer.add_upload(png())["image"]
    body = TestClient(app, base_url=LOCAL).post("/api/similarity", json={
        "model": "tiny", "a": image, "b": image, "metric": "euclidean", "methods": ["gradcam"]}).json()
    assert body.get("warnings"), body


# --- 14. a listing cut at its limit -------------------------------------------------------------------


def test_a_listing_cut_at_its_limit_says_so(tiny, monkeypatch, capsys):
    from fastapi.testclient import TestClient

    from visionlens.serve import safety, similarity
    from visionlens.serve.cli import _say_if_truncated

    explorer, app = tiny
    for i in range(3):
        (explorer.images / f"{i}.png").write_bytes(png())
    monkeypatch.setattr(safety, "MAX_LISTED", 2)
    monkeypatch.setattr(similarity, "MAX_GALLERY", 1)
    client = TestClient(app, base_url=LOCAL)
    assert client.get("/api/images").json() == ["0.png", "1.png"]
    info = client.get("/api/info").json()
    assert info["images_total"] == 3 and info["images_listed"] == 2
    _say_if_truncated(explorer)
    assert "holds 3 images; the page lists the first 2" in capsys.readouterr().err
    json_error_line(client.post("/api/similarity", json={"model": "tiny", "a": "file:0.png"}), 400, "the gallery has 3 images")


# --- a class-free map of an embedding model ---------------------------------------------------------


def test_rollout_of_a_headless_vit_names_no_class(tmp_path):
    """Rollout records no class for an embedding model (no classifier head); the explorer read
    ``targets[0]`` and failed with a TypeError."""
    timm = pytest.importorskip("timm")
    from visionlens.serve.explorer import Explorer

    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(img_size=32, patch_size=16, embed_dim=32, depth=2,
                                                          num_heads=2, num_classes=0).eval()
    explorer = Explorer({"vit": visionlens.load_model(vit, preprocess=visionlens.Preprocess(resize=32, crop=32))})
    image = explorer.add_upload(png())["image"]
    result = explorer.explain("vit", image, ["rollout"])
    assert result["target"] is None and result["maps"] and not any("Traceback" in w for w in result["warnings"])


def test_sigterm_stops_the_server_like_any_command(tmp_path):
    """A real server process: SIGTERM (systemd, ``kill``) stops it gracefully with one line and
    exit 143, as every other command ends on SIGTERM (it exited 0 once SIGTERM stopped commands)."""
    import os
    import signal
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "visionlens", "serve", "--model", "world-cnn", "--device", "cpu",
                             "--port", str(port)], stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "terminated (SIGTERM)" and "Traceback" not in err
