"""Shared fixtures: a tiny GAP+FC CNN (no assets needed) and the zoo models with sample photos.

Zoo fixtures skip when the offline assets are missing, unless VISIONLENS_REQUIRE_ASSETS=1 (set
by scripts/test.sh and CI), where a missing asset is a failure.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import visionlens
from visionlens.errors import AssetError


class TinyGapNet(nn.Module):
    """conv-bn-relu x2 -> GAP -> linear: the setting where CAM is defined."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture(autouse=True)
def _restore_globals():
    """Every test leaves the process as it found it: torch threads, default dtype, grad mode,
    deterministic-algorithms flag and the torch / numpy / random generators' states."""
    import random

    import numpy as np

    saved = (torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled(),
             torch.are_deterministic_algorithms_enabled(), torch.random.get_rng_state(), np.random.get_state(),
             random.getstate())
    yield
    threads, dtype, grad, deterministic, torch_rng, np_rng, py_rng = saved
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
    torch.set_grad_enabled(grad)
    torch.use_deterministic_algorithms(deterministic)
    torch.random.set_rng_state(torch_rng)
    np.random.set_state(np_rng)
    random.setstate(py_rng)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of small-tensor tests (faster and deterministic on a shared
    2-core machine); the previous setting comes back afterwards. Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")`` or as an argument."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_net():
    torch.manual_seed(0)
    net = TinyGapNet().eval()
    # non-trivial BatchNorm statistics
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net


def _require(fn):
    try:
        return fn()
    except AssetError as err:
        if os.environ.get("VISIONLENS_REQUIRE_ASSETS") == "1":
            pytest.fail(f"offline assets required but missing: {err}")
        pytest.skip(f"offline assets missing: {err}")


@pytest.fixture(scope="session")
def imagenet_photos():
    from visionlens.data.samples import sample_images

    return _require(lambda: sample_images("imagenet"))


@pytest.fixture(scope="session")
def all_photos():
    from visionlens.data.samples import sample_images

    return _require(lambda: sample_images("all"))


@pytest.fixture(scope="session")
def mobilenet():
    return _require(lambda: visionlens.load_model("mobilenet_v2"))


@pytest.fixture(scope="session")
def efficientnet():
    return _require(lambda: visionlens.load_model("efficientnet_lite0"))


def labelled_folder(folder, photos) -> str:
    """Copy sample ImageNet photos (named ``..._<class index>``) into ``folder`` with the
    ``labels.csv`` that `visionlens evaluate --data FOLDER` reads; returns the folder."""
    folder.mkdir()
    rows = ["file,class_index"]
    for p in photos:
        (folder / p.name).write_bytes(p.read_bytes())
        rows.append(f"{p.name},{int(p.stem.rsplit('_', 1)[1])}")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return str(folder)


def snapshot(model: nn.Module) -> dict:
    """Everything a call must leave unchanged: modes, flags, hooks, parameters and buffers."""
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": [
            sum(len(getattr(m, d, {})) for d in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                                                  "_backward_pre_hooks", "_forward_hooks_with_kwargs"))
            for m in model.modules()
        ],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_same_state(before: dict, after: dict) -> None:
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["hooks"] == after["hooks"]
    for g0, g1 in zip(before["grads"], after["grads"]):
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)
    assert before["state"].keys() == after["state"].keys()
    for k in before["state"]:
        assert torch.equal(before["state"][k], after["state"][k]), k
