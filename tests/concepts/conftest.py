"""Fixtures of the concepts tests: the world CNN and its validation images."""

import pytest

from visionlens.concepts.sources import open_source
from visionlens.models import load_model


@pytest.fixture(scope="module")
def world_cnn():
    return load_model("world-cnn")


@pytest.fixture(scope="module")
def world_source(world_cnn):
    return open_source("world:val", world_cnn)
