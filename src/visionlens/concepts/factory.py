"""Reducers by name: every kind registered (the VAE included) before one is made or loaded."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..io import load_checkpoint
from .reducers import REDUCERS, Reducer
from . import vae  # noqa: F401  (registers the VAE)


def load_reducer(path: str | Path) -> Reducer:
    """A reducer saved with :meth:`Reducer.save` (loaded with ``weights_only=True``)."""
    blob = load_checkpoint(path, "saved reducer")
    if not isinstance(blob, dict) or blob.get("kind") not in REDUCERS:
        raise InputError(f"{path}: not a saved reducer (unknown kind); choose from: {', '.join(REDUCERS)}")
    reducer = REDUCERS[blob["kind"]](**blob["config"])
    reducer.n_channels = int(blob["n_channels"])
    reducer._load_state(blob["state"])
    return reducer


def make_reducer(kind: str, n_concepts: int, **options) -> Reducer:
    """Build a reducer by name (``nmf``, ``vae``, ``identity``)."""
    if kind not in REDUCERS or kind == "base":
        raise InputError(f"unknown reducer '{kind}'; choose from: {', '.join(k for k in REDUCERS if k != 'base')}")
    if not isinstance(n_concepts, int) or n_concepts < 1:
        raise InputError(f"--n-concepts must be a positive integer, got {n_concepts!r}")
    return REDUCERS[kind](n_concepts=n_concepts, **options)
