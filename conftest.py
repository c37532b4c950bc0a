"""Fixtures every test folder shares (tests/ and each systems/NAME/tests/): the process's globals
restored after each test, one torch thread for a module of small-tensor tests, one compile cache
per CPU capability, and the zoo models with the sample photos.

Zoo fixtures skip when the offline assets are missing, unless VISIONLENS_REQUIRE_ASSETS=1 (set by
scripts/test.sh and CI), where a missing asset is a failure."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

import visionlens
from visionlens.errors import AssetError

# torch.compile's on-disk cache does not tell CPU capabilities apart: a kernel cached under one
# ATEN_CPU_CAPABILITY fails to build under another ("'at::vec' has not been declared"). The tests
# keep one cache per capability (set before torch's inductor reads it).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"torchinductor-visionlens-{os.environ.get('ATEN_CPU_CAPABILITY', 'native')}"))


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
