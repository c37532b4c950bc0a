"""Fixtures of the explorer's tests: a served images folder (sample photos and a link that points
outside it), a results folder with a real evaluate run, the explorer on the zoo's MobileNetV2 and
world-vit with small upload limits, and its app (TestClient)."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'visionlens[serve]'")

import visionlens  # noqa: E402
from visionlens.cli import main  # noqa: E402

UPLOAD_BYTES = 2 * 1024 * 1024
UPLOAD_PIXELS = 4_000_000
EVAL_IMAGES = 3


@pytest.fixture(scope="session")
def served(tmp_path_factory, imagenet_photos):
    """``{"images", "results", "secret"}``: three photos and a link to a file outside the folder;
    a small `visionlens evaluate` run (world-cnn, Grad-CAM, deletion and insertion); the secret
    file outside both."""
    base = tmp_path_factory.mktemp("served")
    secret = base / "secret.txt"
    secret.write_text("not for the browser\n")
    images = base / "images"
    (images / "sub").mkdir(parents=True)
    for photo in imagenet_photos[:2]:
        (images / photo.name).write_bytes(photo.read_bytes())
    (images / "sub" / imagenet_photos[2].name).write_bytes(imagenet_photos[2].read_bytes())
    os.symlink(secret, images / "link.png")
    (images / "notes.txt").write_text("not an image\n")
    run = base / "results" / "run-world"
    code = main(["evaluate", "--models", "world-cnn", "--methods", "gradcam", "--data", "world:test", "--n", str(EVAL_IMAGES),
                 "--metrics", "deletion,insertion", "--device", "cpu", "--out", str(run), "--quiet"])
    assert code == 0
    return {"images": images, "results": base / "results", "secret": secret}


@pytest.fixture(scope="session")
def world_vit():
    return visionlens.load_model("world-vit")


@pytest.fixture(scope="session")
def explorer(mobilenet, world_vit, served):
    from visionlens.serve.explorer import Explorer

    return Explorer({"mobilenet_v2": mobilenet, "world-vit": world_vit}, images=served["images"],
                    results=served["results"], max_upload_bytes=UPLOAD_BYTES, max_pixels=UPLOAD_PIXELS)


@pytest.fixture(scope="session")
def client(explorer):
    from fastapi.testclient import TestClient

    from visionlens.serve.app import create_app

    return TestClient(base_url="http://127.0.0.1", app=create_app(explorer))
