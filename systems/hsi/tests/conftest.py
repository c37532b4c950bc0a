"""Fixtures for the SpectralKAN tests (the core's tests/conftest.py does not reach this folder)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_globals():
    """Each test leaves torch threads, default dtype, grad mode and the random generators as it found them."""
    saved = (torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled(),
             torch.random.get_rng_state(), np.random.get_state(), random.getstate())
    yield
    threads, dtype, grad, torch_rng, np_rng, py_rng = saved
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
    torch.set_grad_enabled(grad)
    torch.random.set_rng_state(torch_rng)
    np.random.set_state(np_rng)
    random.setstate(py_rng)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of small-tensor tests; the previous setting comes back afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
