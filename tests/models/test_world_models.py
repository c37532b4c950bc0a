"""The committed world reference models: they reload, reach their recorded scores on the fixed
500-image test slice, and their evidence is the ground-truth object."""

import json

import pytest
import torch
import torch.nn.functional as F

import visionlens
from visionlens.data.world import World, WorldConfig
from visionlens.models.world_eval import evidence_check, outputs, score
from visionlens.models.zoo import WORLD_WEIGHTS, ZOO

WORLD_MODELS = ["world-cnn", "world-vit", "world-dino", "world-metric"]
SLICE = 500  # the fixed test slice the manifests record


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
    got = score(manifest["kind"], zoo.module, _world(manifest), range(SLICE))
    # a score counts right decisions; another CPU's rounding could flip only a near-tie, and no decision
    # is near one (test below), so at most one image of the slice may differ from the recorded score
    assert round(got * SLICE) >= round(manifest["test_slice_500"] * SLICE) - 1, (got, manifest["test_slice_500"])
    target = {"classifier": 0.95 if name == "world-cnn" else 0.90, "self-supervised": 0.80, "metric": 0.90}[manifest["kind"]]
    assert manifest["test_2000"]["clean"] >= target


def _decision_margins(kind: str, module, world) -> torch.Tensor:
    """Per test image, how far its decision is from flipping (> 0: right). Classifier: the true
    class's logit minus the best other one; metric model: cosine to the nearest clean image of the
    same class minus that to the nearest of another class (recall@1, itself excluded)."""
    out, labels = outputs(module, world, "test", range(SLICE))
    if kind == "classifier":
        right = out.gather(1, labels[:, None])[:, 0]
        return right - out.scatter(1, labels[:, None], -float("inf")).max(1).values
    sims = F.normalize(out, dim=1) @ F.normalize(out, dim=1).T
    sims.fill_diagonal_(-float("inf"))
    same = labels[:, None] == labels[None, :]
    return sims.masked_fill(~same, -float("inf")).max(1).values - sims.masked_fill(same, -float("inf")).max(1).values


@pytest.mark.parametrize("name, margin", [("world-cnn", 1.0), ("world-vit", 1.0), ("world-metric", 0.1)])
def test_committed_models_decide_every_test_image_by_a_wide_margin(name, margin):
    """Why the recorded scores hold on any CPU: every decision of the slice is right by far more than
    float32 rounding (~1e-6) could move it. Measured: logit margins >= 3.2 (CNN, ViT), cosine
    margins >= 0.25 (metric). World-DINO (k-NN over 5000 training images, vote-mass margin >= 0.9)
    is left out for time."""
    manifest = _manifest(name)
    got = _decision_margins(manifest["kind"], visionlens.load_model(name).module, _world(manifest))
    assert got.shape == (SLICE,) and float(got.min()) >= margin, float(got.min())


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
