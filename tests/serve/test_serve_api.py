"""The explorer's JSON API (FastAPI TestClient): maps, targets, downloads, flows, one-line errors,
what it refuses to serve and to decode, and one request at a time per device."""

from __future__ import annotations

import io
import socket
import threading

import numpy as np
import torch
import pytest
from PIL import Image

import visionlens
from visionlens.cli import main
from visionlens.serve import safety

from conftest import EVAL_IMAGES, UPLOAD_BYTES, UPLOAD_PIXELS
from helpers import one_error_line


def png(response) -> Image.Image:
    assert response.headers["content-type"] == "image/png", response.text
    return Image.open(io.BytesIO(response.content))


def data_image(url: str) -> Image.Image:
    import base64

    head, _, body = url.partition(",")
    assert head == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(body)))


def encoded(picture: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt)
    return buffer.getvalue()


def upload(client, data: bytes, name: str = "photo.jpg"):
    return client.post("/api/upload", files={"file": (name, data, "application/octet-stream")})


@pytest.fixture(scope="module")
def photo(client, imagenet_photos):
    """An uploaded sample photo: ``(image ref, its ImageNet label)``."""
    response = upload(client, imagenet_photos[0].read_bytes())
    assert response.status_code == 200, response.text
    return response.json()["image"], int(imagenet_photos[0].stem.rsplit("_", 1)[1])


def test_page_and_info(client):
    page = client.get("/")
    assert page.status_code == 200 and "visionlens explorer" in page.text and "<script>" in page.text
    info = client.get("/api/info").json()
    assert [m["name"] for m in info["models"]] == ["mobilenet_v2", "world-vit"]
    names = {m["name"] for m in info["methods"]}
    assert {"gradcam", "relevance-cam", "daam", "scorecam"} <= names and "sfam" not in names
    assert info["images"] and info["results"] and info["max_upload_bytes"] == UPLOAD_BYTES


def test_layers_list_names_and_output_shapes(client, mobilenet):
    layers = client.get("/api/layers", params={"model": "mobilenet_v2"}).json()
    shapes = {entry["name"]: entry["shape"] for entry in layers}
    assert shapes["features"] == [1, 1280, 7, 7]
    assert shapes["features.13"][2:] == [14, 14]
    assert mobilenet.layer in shapes and len(layers) > 100


def test_images_folder_lists_images_inside_only(client):
    names = client.get("/api/images").json()
    assert len(names) == 3 and any(n.startswith("sub/") for n in names)
    assert "link.png" not in names  # a link that leaves the folder is not listed


def test_top5_classes_hold_the_label(client, photo):
    image, label = photo
    top = client.post("/api/predict", json={"model": "mobilenet_v2", "image": image}).json()
    probs = [c["probability"] for c in top]
    assert len(top) == 5 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert label in [c["index"] for c in top]


def test_methods_side_by_side_match_the_library(client, photo, mobilenet, imagenet_photos):
    image, _ = photo
    response = client.post("/api/explain", json={"model": "mobilenet_v2", "image": image,
                                                  "methods": ["gradcam", "relevance-cam"]})
    assert response.status_code == 200, response.text
    result = response.json()
    maps = {m["method"]: m for m in result["maps"]}
    assert list(maps) == ["gradcam", "relevance-cam"]
    assert not maps["gradcam"]["signed"] and maps["relevance-cam"]["signed"]
    assert maps["gradcam"]["layer"] == mobilenet.layer and maps["gradcam"]["gradient"].startswith("linear-gradient")
    assert maps["relevance-cam"]["labels"][1] == "0"
    assert data_image(maps["gradcam"]["heat"]).size == (224, 224) and data_image(result["view"]).size == (224, 224)
    arrays = np.load(io.BytesIO(client.get(f"/api/result/{result['token']}/maps.npz").content))
    served_map = arrays["gradcam_map"]
    expected = visionlens.explain([imagenet_photos[0]], model=mobilenet, method="gradcam").maps[0].numpy()
    assert served_map.shape == (224, 224) and 0 <= served_map.min() and served_map.max() <= 1
    assert np.abs(served_map - expected).max() < 1e-3
    assert {"relevance-cam_raw", "relevance-cam_map", "gradcam_raw"} <= set(arrays.files)


def test_target_by_name_and_by_index(client, photo, mobilenet):
    image, _ = photo
    for target in ("Boxer", "242"):
        result = client.post("/api/explain", json={"model": "mobilenet_v2", "image": image, "methods": ["gradcam"],
                                                    "target": target, "layer": "features.13"}).json()
        assert result["target"] == {"index": 242, "name": mobilenet.class_name(242)}
        assert result["maps"][0]["layer"] == "features.13"


def test_png_download_follows_the_opacity(client, photo):
    image, _ = photo
    token = client.post("/api/explain", json={"model": "mobilenet_v2", "image": image, "methods": ["gradcam"]}).json()["token"]
    url = f"/api/result/{token}/map.png"
    clear = np.asarray(png(client.get(url, params={"method": "gradcam", "alpha": 0})).convert("RGB"), dtype=np.int16)
    heavy = np.asarray(png(client.get(url, params={"method": "gradcam", "alpha": 1})).convert("RGB"), dtype=np.int16)
    assert clear.shape[1] == 224 and clear.shape[0] > 224  # the map with its colour bar under it
    assert np.abs(clear[:224] - heavy[:224]).mean() > 20
    view = np.asarray(data_image(client.post("/api/explain", json={
        "model": "mobilenet_v2", "image": image, "methods": ["cam"]}).json()["view"]).convert("RGB"), dtype=np.int16)
    assert np.abs(clear[:224] - view).max() <= 1  # opacity 0: the model's view itself
    bad = client.get(url, params={"method": "gradcam", "alpha": 2})
    assert bad.status_code == 400 and "opacity" in bad.json()["error"]


def _first_name(client) -> str:
    return client.get("/api/images").json()[0]


def test_daam_flow_names_each_block(client, world_vit):
    name = _first_name(client)
    result = client.post("/api/explain", json={"model": "world-vit", "image": f"file:{name}", "methods": ["daam"]}).json()
    flow = result["maps"][0]["flow"]
    blocks = [n for n, _ in world_vit.module.named_children() if n == "blocks"]
    assert blocks and [f["layer"] for f in flow] == [f"blocks.{i}" for i in range(len(world_vit.module.blocks))]
    pictures = [np.asarray(data_image(f["heat"]), dtype=np.int16) for f in flow]
    assert np.abs(pictures[0] - pictures[-1]).mean() > 1  # the blocks' maps differ


@pytest.mark.parametrize("body, words", [
    ({"methods": ["nope"]}, ["unknown method 'nope'", "gradcam"]),
    ({"methods": ["gradcam"], "model": "resnet9000"}, ["unknown model 'resnet9000'", "mobilenet_v2"]),
    ({"methods": ["gradcam"], "layer": "features.99"}, ["features.99"]),
    ({"methods": ["gradcam"], "target": "not a class"}, ["unknown class 'not a class'"]),
    ({"methods": ["gradcam"], "cmap": "rainbow"}, ["unknown colormap 'rainbow'"]),
    ({"methods": ["gradcam"], "image": "upload:0000"}, ["unknown image"]),
    ({"methods": []}, ["between 1 and"]),
])
def test_bad_requests_give_one_line_errors(client, photo, body, words):
    request = {"model": "mobilenet_v2", "image": photo[0]} | body
    response = client.post("/api/explain", json=request)
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert "\n" not in message and "Traceback" not in message
    for word in words:
        assert word in message


def test_malformed_requests_give_one_line_errors(client):
    response = client.post("/api/explain", json={"model": "mobilenet_v2", "image": "upload:0"})
    assert response.status_code == 400 and response.json()["error"].startswith("bad request: methods: ")
    response = client.post("/api/upload", files={"other": ("a.png", b"x")})
    assert response.status_code == 400 and response.json()["error"].startswith("bad request: file: ")


@pytest.mark.parametrize("path", [
    "/files/images/..%2Fsecret.txt", "/files/images/%2e%2e/secret.txt", "/files/images/link.png",
    "/files/images/sub/..%2F..%2Fsecret.txt", "/files/results/..%2Fsecret.txt", "/files/images/%2Fetc%2Fpasswd",
    "/files/other/secret.txt", "/files/images/sub", "/files/images/notes.txt",
])
def test_no_file_outside_the_served_folders(client, served, path):
    response = client.get(path)
    assert response.status_code == 404
    assert "not for the browser" not in response.text and "root:" not in response.text


def test_explain_refuses_a_file_outside_the_images_folder(client):
    response = client.post("/api/explain", json={"model": "mobilenet_v2", "image": "file:../secret.txt",
                                                  "methods": ["gradcam"]})
    assert response.status_code == 404 and "not served" in response.json()["error"]


def test_results_folder_opens_its_report_cards(client):
    assert client.get("/api/results").json() == ["run-world"]
    card = client.get("/files/results/run-world/index.html")
    assert card.status_code == 200 and "visionlens report card" in card.text


def test_per_image_scores_carry_metrics_and_curves(client):
    rows = client.get("/api/scores", params={"run": "run-world"}).json()
    assert len(rows) == EVAL_IMAGES and {r["method"] for r in rows} == {"gradcam"}
    for row in rows:
        assert set(row["metrics"]) == {"deletion", "insertion"}
        assert all(0 <= v <= 1 for v in row["metrics"].values())
        deletion = row["curves"]["deletion"]
        assert len(deletion) == len(row["curves"]["insertion"]) > 2 and deletion[0] > deletion[-1]
    refused = client.get("/api/scores", params={"run": "../.."})
    assert refused.status_code == 404


def test_oversized_upload_is_refused(client):
    noise = np.random.default_rng(0).integers(0, 256, (1100, 1100, 3), dtype=np.uint8)
    data = encoded(Image.fromarray(noise))
    assert len(data) > UPLOAD_BYTES
    response = upload(client, data, "noise.png")
    assert response.status_code == 413 and "over the limit" in response.json()["error"]


def test_too_many_pixels_are_refused_before_decoding(client):
    data = encoded(Image.new("1", (2500, 2000)))  # small file, 5,000,000 pixels
    assert len(data) < UPLOAD_BYTES
    response = upload(client, data, "wide.png")
    assert response.status_code == 413
    assert f"the limit is {UPLOAD_PIXELS:,}" in response.json()["error"]


def test_decompression_bomb_is_refused_with_default_limits():
    bomb = encoded(Image.new("1", (10_000, 10_000)))  # 100 M pixels in a few kB
    assert len(bomb) < 100_000
    with pytest.raises(safety.TooLarge, match="the limit is 40,000,000"):
        safety.load_upload(bomb)
    huge = encoded(Image.new("1", (20_000, 20_000)))  # 400 M pixels: over what the library decodes
    with pytest.raises((safety.TooLarge, visionlens.errors.ImageLoadError), match="decompression-bomb"):
        safety.load_upload(huge, max_pixels=10**12)  # past our check, the library's own limit still holds


def test_a_file_that_is_not_an_image_is_refused(client):
    response = upload(client, b"\x80\x04pickle-ish bytes, not an image", "model.pkl")
    assert response.status_code == 400 and "not a readable image" in response.json()["error"]


def test_requests_on_a_device_run_one_at_a_time(client, photo, mobilenet):
    active, peak, guard = [0], [0], threading.Lock()

    def enter(module, inputs):
        with guard:
            active[0] += 1
            peak[0] = max(peak[0], active[0])

    def leave(module, inputs, output):
        with guard:
            active[0] -= 1

    handles = [mobilenet.module.register_forward_pre_hook(enter), mobilenet.module.register_forward_hook(leave)]
    codes = []
    request = lambda: codes.append(client.post("/api/explain", json={  # noqa: E731
        "model": "mobilenet_v2", "image": photo[0], "methods": ["gradcam", "gradcam++"]}).status_code)
    try:
        threads = [threading.Thread(target=request) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for h in handles:
            h.remove()
    assert codes == [200, 200, 200] and peak[0] == 1


def test_serve_command_refuses_bad_folders_and_a_busy_port_in_one_line(tmp_path, capsys):
    assert main(["serve", "--images", str(tmp_path / "missing")]) == 2
    one_error_line(capsys.readouterr().err, "--images", "not a folder")
    assert main(["serve", "--samples", "--images", str(tmp_path)]) == 2
    one_error_line(capsys.readouterr().err, "--samples", "not both")
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    one_error_line(capsys.readouterr().err, "cannot listen", f"127.0.0.1:{port}")


def test_serving_beyond_this_machine_warns_that_the_explorer_has_no_login(tmp_path, capsys, monkeypatch):
    served = []
    monkeypatch.setattr("visionlens.serve.cli._run", lambda app, host, port: served.append(host))

    def free() -> int:
        with socket.create_server(("127.0.0.1", 0)) as probe:
            return probe.getsockname()[1]

    assert main(["serve", "--model", "world-cnn", "--images", str(tmp_path), "--port", str(free())]) == 0
    assert "warning" not in capsys.readouterr().err  # 127.0.0.1, the default: this machine only
    assert main(["serve", "--model", "world-cnn", "--images", str(tmp_path), "--host", "0.0.0.0",
                 "--port", str(free())]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert served == ["127.0.0.1", "0.0.0.0"]
    assert len(err) == 1 and err[0].startswith("warning: --host 0.0.0.0 lets other machines reach the explorer")


class Broken(torch.nn.Module):
    """A model whose forward pass fails with an error that is not the user's."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        raise RuntimeError("boom\nsecond line")


def test_a_bug_is_a_500_with_one_line(served, imagenet_photos):
    from fastapi.testclient import TestClient

    from visionlens.serve.app import create_app
    from visionlens.serve.explorer import Explorer

    app = create_app(Explorer({"broken": visionlens.load_model(Broken())}, images=served["images"]))
    client = TestClient(base_url="http://127.0.0.1", app=app, raise_server_exceptions=False)
    response = client.post("/api/predict", json={"model": "broken", "image": f"file:{imagenet_photos[0].name}"})
    assert response.status_code == 500 and response.json() == {"error": "internal error (RuntimeError: boom)"}


def test_only_the_newest_uploads_and_results_are_kept():
    from visionlens.serve.explorer import Recent

    kept = Recent(size=3)
    tokens = [kept.add(i) for i in range(5)]
    assert len(set(tokens)) == 5
    assert [kept.get(t) for t in tokens] == [None, None, 2, 3, 4]
