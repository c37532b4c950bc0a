"""The committed world reference models: they reload, reach their recorded scores on the fixed
500-image test slice, and their evidence is the ground-truth object."""

import json

import pytest
import torch

import visionlens
from visionlens.data.world import World, WorldConfig
from visionlens.models.world_eval import evidence_check, score
from visionlens.models.zoo import WORLD_WEIGHTS, ZOO

WORLD_MODELS = ["world-cnn", "world-vit", "world-dino", "world-metric"]


def _manifest(name):
    return json.loads((WORLD_WEIGHTS / f"{name}.json").read_text())


def _world(manifest):
    cfg = manifest["world"]
    return World(WorldConfig(size=cfg["size"], distractors=tuple(cfg["distractors"]), scale=tuple(cfg["scale"]),
                             rotation=cfg["rotation"], occlusion=cfg["occlusion"]), seed=manifest["world_seed"])


@pytest.mark.parametrize("name", WORLD_MODELS)
def test_committed_model_reaches_its_recorded_score(name):
    manifest = _manifest(name)
    zoo = visionlens.load_model(name)
    assert ZOO[name].task.startswith("world")
    got = score(manifest["kind"], zoo.module, _world(manifest), range(500))
    assert got >= manifest["test_slice_500"] - 0.01, (got, manifest["test_slice_500"])
    target = {"classifier": 0.95 if name == "world-cnn" else 0.90, "self-supervised": 0.80, "metric": 0.90}[manifest["kind"]]
    assert manifest["test_2000"]["clean"] >= target


def test_evidence_check_on_the_committed_cnn():
    manifest = _manifest("world-cnn")
    zoo = visionlens.load_model("world-cnn")
    check = evidence_check("classifier", zoo.module, _world(manifest), range(500))
    assert check["object_removed"] <= 0.2  # near chance (0.1) without the object
    assert abs(check["distractors_removed"] - check["clean"]) <= 0.02


def test_world_cnn_is_explained_by_cam_on_the_object():
    zoo = visionlens.load_model("world-cnn")
    b = World(WorldConfig(size=64), seed=0).batch("test", range(32))
    x = (b["image"] - 0.5) / 0.5
    exp = visionlens.GradCAM(zoo.module, zoo.layer)(x, b["label"])
    cam = visionlens.CAM(zoo.module, zoo.layer)(x, b["label"])
    torch.testing.assert_close(exp.maps, cam.maps, rtol=1e-3, atol=1e-4)
    # the energy of the map inside the object is well above the object's share of the image
    inside = (exp.maps * b["object_mask"]).sum((1, 2)) / exp.maps.sum((1, 2))
    share = b["object_mask"].float().mean((1, 2))
    assert float((inside > share).float().mean()) >= 0.9
