"""The explorer's Similarity view, long requests as jobs (progress, queued, cancel) and the Results
view's maps of a clicked image, through the JSON API (FastAPI TestClient)."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import visionlens
from visionlens.data.images import load_image
from visionlens.models.embedder import embedding_model
from visionlens.viz.overlay import overlay

from helpers import assert_same_state, json_error_line, snapshot

ENDED = ("done", "failed", "cancelled")


def data_image(url: str) -> np.ndarray:
    import base64

    head, _, body = url.partition(",")
    assert head == "data:image/png;base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(body))).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def names(client):
    """The served images: two photos at the top and one in ``sub/``."""
    found = client.get("/api/images").json()
    assert len(found) == 3
    return found


def cosine(model, paths) -> float:
    """The cosine similarity of two image files' embeddings, as `visionlens explain-pair` embeds them."""
    emb = embedding_model(model)
    x = torch.stack([emb.preprocess(load_image(p)) for p in paths])
    with torch.no_grad():
        e = emb.module(x)
    return float(F.cosine_similarity(e[:1], e[1:]))


# --- Similarity -------------------------------------------------------------------------------


def test_pair_gives_both_maps_per_method_and_the_embedding_similarity(client, names, served, mobilenet):
    body = {"model": "mobilenet_v2", "a": f"file:{names[0]}", "b": f"file:{names[1]}",
            "methods": ["sfam", "gradcam", "relevance-cam"]}
    response = client.post("/api/similarity", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["mode"] == "pair" and result["metric"] == "cosine"
    expected = cosine(mobilenet, [served["images"] / names[0], served["images"] / names[1]])
    assert abs(result["score"] - expected) < 1e-4
    assert [m["method"] for m in result["maps"]] == ["sfam", "gradcam", "relevance-cam"]
    for shown in result["maps"]:
        a, b = data_image(shown["query"]), data_image(shown["match"])
        assert a.shape == b.shape == (224, 224, 3) and np.abs(a - b).mean() > 1  # two different images' maps
        assert shown["gradient"].startswith("linear-gradient") and len(shown["labels"]) >= 2
    assert [data_image(v).shape for v in result["views"]] == [(224, 224, 3)] * 2
    swapped = client.post("/api/similarity", json=body | {"a": body["b"], "b": body["a"], "methods": ["sfam"]}).json()
    assert abs(swapped["score"] - result["score"]) < 1e-5


def test_query_against_picked_gallery_ranks_by_similarity_and_leaves_the_query_out(client, names, served, mobilenet):
    refs = [f"file:{n}" for n in names]
    result = client.post("/api/similarity", json={"model": "mobilenet_v2", "a": refs[0], "gallery": refs,
                                                  "methods": ["sfam", "gradcam"], "top": 5}).json()
    assert result["mode"] == "gallery" and result["gallery"] == 3 and result["excluded_query"]
    matches = result["matches"]
    assert [m["image"] for m in matches] != [] and refs[0] not in [m["image"] for m in matches]
    assert len(matches) == 2 and [m["rank"] for m in matches] == [1, 2]
    scores = [m["score"] for m in matches]
    assert scores == sorted(scores, reverse=True)
    for match in matches:
        expected = cosine(mobilenet, [served["images"] / names[0], served["images"] / match["image"][5:]])
        assert abs(match["score"] - expected) < 1e-4
        assert [m["method"] for m in match["maps"]] == ["sfam", "gradcam"]
        assert data_image(match["maps"][0]["match"]).shape == (224, 224, 3)


def test_default_gallery_is_the_images_folder_and_top_limits_the_matches(client, names):
    result = client.post("/api/similarity", json={"model": "mobilenet_v2", "a": f"file:{names[2]}", "top": 1}).json()
    assert result["gallery"] == 3 and len(result["matches"]) == 1
    assert result["matches"][0]["image"] in {f"file:{n}" for n in names[:2]}


@pytest.mark.parametrize("body, status, words", [
    ({"methods": ["nope"]}, 400, ["unknown similarity method 'nope'", "sfam"]),
    ({"methods": []}, 400, ["choose at least one similarity method"]),
    ({"metric": "l1"}, 400, ["l1"]),
    ({"top": 0, "b": None}, 400, ["top must be between 1 and"]),
    ({"model": "resnet9000"}, 400, ["unknown model 'resnet9000'"]),
    ({"b": "file:../secret.txt"}, 404, ["not served"]),
    ({"b": None, "gallery": ["upload:0000"]}, 400, ["unknown image"]),
    ({"model": "world-vit"}, 400, []),
])
def test_bad_similarity_requests_give_one_line_errors(client, names, body, status, words):
    request = {"model": "mobilenet_v2", "a": f"file:{names[0]}", "b": f"file:{names[1]}"} | body
    json_error_line(client.post("/api/similarity", json=request), status, *words)


def test_gallery_of_the_query_alone_is_refused(client, names):
    json_error_line(client.post("/api/similarity", json={"model": "mobilenet_v2", "a": f"file:{names[0]}",
                                                        "gallery": [f"file:{names[0]}"]}), 400, "only the query")


# --- jobs: progress, queued, cancel ---------------------------------------------------------


def wait(client, job_id: str, until=ENDED, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in until:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not reach {until}: {job}")


def test_a_job_reports_each_method_and_ends_with_the_maps(client, explorer, names):
    request = {"model": "mobilenet_v2", "image": f"file:{names[0]}", "methods": ["gradcam", "cam"]}
    job = client.post("/api/jobs", json=request).json()
    assert job["state"] in ("queued", "running") and job["total"] == 2
    job = wait(client, job["id"])
    assert job["state"] == "done" and job["done"] == 2 and job["error"] is None
    direct = client.post("/api/explain", json=request).json()
    assert [m["method"] for m in job["result"]["maps"]] == [m["method"] for m in direct["maps"]] == ["gradcam", "cam"]
    assert job["result"]["target"] == direct["target"]
    steps = []
    checked = explorer.explain_request("mobilenet_v2", f"file:{names[0]}", ["gradcam", "cam"])
    explorer.run_explain(checked, lambda *step: steps.append(step))  # what a job's progress hears
    assert steps == [(0, "gradcam", None), (1, "cam", None)]  # no pass estimate for gradient methods


def test_a_job_counts_whole_model_passes_in_its_own_thread_only(mobilenet):
    import threading

    from visionlens.serve.jobs import Job, _counting_passes

    job, x = Job("passes", 1), torch.zeros(1, 3, 64, 64)
    with _counting_passes(job), torch.no_grad():
        mobilenet.module(x)
        with pytest.raises(RuntimeError):
            mobilenet.module(torch.zeros(1, 5, 64, 64))  # a pass that fails inside counts, and ends
        mobilenet.module(x)
        other = threading.Thread(target=lambda: mobilenet.module(x))
        other.start()
        other.join()
    assert job.passes == 3  # outermost calls only (not each layer), and not the other thread's
    mobilenet.module(x)
    assert job.passes == 3  # the hooks are gone


def test_cancel_mid_way_frees_the_lock_and_leaves_the_model_as_it_was(client, explorer, names, mobilenet):
    before = snapshot(mobilenet.module)
    job = client.post("/api/jobs", json={"model": "mobilenet_v2", "image": f"file:{names[0]}", "methods": ["scorecam"]}).json()
    job = wait(client, job["id"], until=("running",) + ENDED)
    deadline = time.monotonic() + 60
    while job["passes"] < 1 and job["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
        job = client.get(f"/api/jobs/{job['id']}").json()
    time.sleep(0.3)  # into Score-CAM's masked passes (1280 channels: tens of seconds here)
    assert job["state"] == "running" and job["passes"] >= 1
    cancelled = client.post(f"/api/jobs/{job['id']}/cancel").json()
    assert cancelled["cancelling"]
    job = wait(client, job["id"], timeout=10)
    assert job["state"] == "cancelled" and job["result"] is None
    assert job["passes_expected"] is None or job["passes"] < job["passes_expected"]  # stopped mid-way
    lock = explorer.device_lock(mobilenet)
    assert lock.acquire(timeout=1)
    lock.release()
    assert_same_state(before, snapshot(mobilenet.module))
    after = client.post("/api/explain", json={"model": "mobilenet_v2", "image": f"file:{names[0]}", "methods": ["gradcam"]})
    assert after.status_code == 200


def test_a_job_waits_as_queued_while_the_device_is_busy_and_can_be_cancelled(client, explorer, names, mobilenet):
    lock = explorer.device_lock(mobilenet)
    lock.acquire()
    try:
        job = client.post("/api/jobs", json={"model": "mobilenet_v2", "image": f"file:{names[0]}",
                                             "methods": ["gradcam"]}).json()
        time.sleep(0.3)
        assert client.get(f"/api/jobs/{job['id']}").json()["state"] == "queued"
        client.post(f"/api/jobs/{job['id']}/cancel")
        job = wait(client, job["id"], timeout=5)
        assert job["state"] == "cancelled" and job["elapsed_s"] == 0
    finally:
        lock.release()
    second = client.post("/api/jobs", json={"model": "mobilenet_v2", "image": f"file:{names[0]}", "methods": ["gradcam"]}).json()
    assert wait(client, second["id"])["state"] == "done"


def test_naflow_job_uses_the_command_lines_damped_solve_and_converges(served, imagenet_photos):
    from fastapi.testclient import TestClient

    from visionlens.serve.app import create_app
    from visionlens.serve.explorer import Explorer

    client = TestClient(base_url="http://127.0.0.1", app=create_app(Explorer({"world-cnn": visionlens.load_model("world-cnn")}, images=served["images"])))
    job = client.post("/api/jobs", json={"model": "world-cnn", "image": f"file:{imagenet_photos[0].name}",
                                         "methods": ["naflow"]}).json()
    job = wait(client, job["id"], timeout=120)
    assert job["state"] == "done", job["error"]
    assert job["result"]["warnings"] == []  # damp 0.1 converges well within max_iter 1000: no warning
    assert len(job["result"]["maps"][0]["flow"]) >= 3


@pytest.mark.parametrize("path, status, words", [
    ("/api/jobs/0000", 404, ["no job '0000'"]),
    ("/api/jobs/0000/cancel", 404, ["no job '0000'"]),
])
def test_unknown_jobs_are_one_line_404s(client, path, status, words):
    response = client.post(path) if path.endswith("cancel") else client.get(path)
    json_error_line(response, status, *words)


@pytest.mark.parametrize("body, words", [
    ({"methods": ["nope"]}, ["unknown method 'nope'"]),
    ({"methods": ["scorecam"], "target": "not a class"}, ["unknown class 'not a class'"]),
])
def test_bad_job_requests_are_refused_before_they_start(client, names, body, words):
    request = {"model": "mobilenet_v2", "image": f"file:{names[0]}"} | body
    json_error_line(client.post("/api/jobs", json=request), 400, *words)


def test_a_job_with_a_bad_layer_fails_with_one_line(client, names):
    job = client.post("/api/jobs", json={"model": "mobilenet_v2", "image": f"file:{names[0]}", "methods": ["scorecam"],
                                         "layer": "features.99"}).json()
    job = wait(client, job["id"])
    assert job["state"] == "failed" and "features.99" in job["error"] and "\n" not in job["error"]


# --- Results: a clicked image's maps -------------------------------------------------------


def test_clicked_image_maps_are_the_maps_evaluate_drew(client, served):
    rows = client.get("/api/scores", params={"run": "run-world"}).json()
    examples = served["results"] / "run-world" / "examples"
    for index, row in enumerate(sorted(rows, key=lambda r: int(r["image"].rsplit(":", 1)[1]))):
        result = client.get("/api/record-maps", params={"run": "run-world", "image": row["image"], "model": row["model"]})
        assert result.status_code == 200, result.text
        result = result.json()
        assert result["source"] == "recomputed" and [m["method"] for m in result["maps"]] == ["gradcam"]
        assert result["maps"][0]["predicted"] == result["maps"][0]["recorded_predicted"] == row["predicted"]
        maps = np.load(io.BytesIO(client.get(f"/api/result/{result['token']}/maps.npz").content))
        view = Image.fromarray(data_image(result["view"]).astype(np.uint8))
        drawn = np.asarray(overlay(view, maps["gradcam_map"]).convert("RGB"), dtype=np.int16)
        stored = np.asarray(Image.open(examples / f"world-cnn.gradcam.{index}.png").convert("RGB"), dtype=np.int16)
        assert drawn.shape == stored.shape and np.abs(drawn - stored).mean() < 1.0


@pytest.mark.parametrize("params, status, words", [
    ({"image": "world:test:999"}, 400, ["no record of image 'world:test:999'"]),
    ({"model": "resnet9000"}, 400, ["no record"]),
    ({"run": "../.."}, 404, ["not served"]),
    ({"cmap": "rainbow"}, 400, ["unknown colormap 'rainbow'"]),
])
def test_bad_record_map_requests_give_one_line_errors(client, params, status, words):
    query = {"run": "run-world", "image": "world:test:0", "model": "world-cnn"} | params
    json_error_line(client.get("/api/record-maps", params=query), status, *words)


def test_pass_estimate_counts_channel_batches_where_the_batch_size_is_fixed(explorer, mobilenet):
    from visionlens.methods import GradCAM, ScoreCAM

    x = torch.zeros(1, 3, 224, 224)
    fixed = ScoreCAM(mobilenet.module, "features.16", batch_size=64)  # 160 channels: 3 batches
    assert explorer._expected_passes("mobilenet_v2", fixed, x) == 3 + 5
    assert explorer._expected_passes("mobilenet_v2", GradCAM(mobilenet.module, "features.16"), x) is None


def test_unreadable_gallery_image_is_skipped_and_reported(tmp_path, mobilenet, imagenet_photos):
    from fastapi.testclient import TestClient

    from visionlens.serve.app import create_app
    from visionlens.serve.explorer import Explorer

    for photo in imagenet_photos[:2]:
        (tmp_path / photo.name).write_bytes(photo.read_bytes())
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    client = TestClient(base_url="http://127.0.0.1", app=create_app(Explorer({"mobilenet_v2": mobilenet}, images=tmp_path)))
    result = client.post("/api/similarity", json={"model": "mobilenet_v2", "a": f"file:{imagenet_photos[0].name}"}).json()
    assert result["gallery"] == 2 and [m["image"] for m in result["matches"]] == [f"file:{imagenet_photos[1].name}"]
    assert [f["image"] for f in result["failures"]] == ["file:broken.png"] and "\n" not in result["failures"][0]["error"]
