"""Fixtures of the core tests: a tiny GAP+FC CNN (no assets needed). The zoo models and sample
photos are in the repository's conftest.py; helpers to import are in helpers.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import TinyGapNet


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
