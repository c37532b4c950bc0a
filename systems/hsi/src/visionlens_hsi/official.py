"""Load the SpectralKAN authors' released checkpoints (``SpectralKAN_farmland.pth``) into our model.

The reference code (github.com/yanhengwang-heu/SpectralKAN, ``SpectralKAN/test_new.py`` and
``efficient_kan/wkan_encoder.py``) builds ``SpectralKAN(2, band, 5)`` as ``layer1 = WKAN([25, 16, 1])``
on each band's patch of the difference image and ``layer2 = WKAN([band, 2])``: our config "b".
Each ``WKAN`` keeps its ``WKANLinear`` layers in ``layers``. The hand-written map, per layer ``i``:

=================================  =================  ==================================================
reference key                      reference shape    ours
=================================  =================  ==================================================
``layer1.layers.i.base_weight``    ``(out, in)``      ``spatial.i.base_weight``
``layer1.layers.i.spline_weight``  ``(1, in, 8)``     ``spatial.i.spline_weight`` ``(in, 8)`` (leading 1 dropped)
``layer1.layers.i.spline_scaler``  ``(out, in)``      ``spatial.i.spline_scaler``
``layer1.layers.i.grid``           ``(in, 12)``       ``spatial.i.knots`` ``(12,)``: every row must equal our fixed knots
``layer2.layers.0.*``              as above           ``channel.0.*``; the 2 output rows swapped
=================================  =================  ==================================================

The rows are swapped because the reference code's class 0 is "changed" (its label 1 becomes index
0) while ours is class 1. The released ``SpectralKAN_farmland.pth`` (commit 6d238bc) holds exactly
these 12 tensors with ``band = 224``: it fits Bay Area / Santa Barbara (224 bands), not Farmland's
155 bands, despite its name.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from visionlens.errors import InputError

from .kan import uniform_knots
from .spectralkan import SpectralKAN

N_BASIS, N_KNOTS = 8, 12
PREFIXES = {"layer1": "spatial", "layer2": "channel"}
PARTS = ("base_weight", "spline_weight", "spline_scaler", "grid")


def official_widths(bands: int, patch: int) -> dict[str, list[int]]:
    """The widths of the reference model's two ``WKAN`` stacks."""
    return {"layer1": [patch * patch, 16, 1], "layer2": [bands, 2]}


def official_shapes(bands: int, patch: int = 5) -> dict[str, tuple]:
    """Every key of the reference model's state dict and its shape."""
    shapes = {}
    for prefix, widths in official_widths(bands, patch).items():
        for i, (m, n) in enumerate(zip(widths[:-1], widths[1:])):
            stem = f"{prefix}.layers.{i}."
            shapes.update({stem + "base_weight": (n, m), stem + "spline_weight": (1, m, N_BASIS),
                           stem + "spline_scaler": (n, m), stem + "grid": (m, N_KNOTS)})
    return shapes


def our_key(official: str) -> str:
    """``layer1.layers.0.base_weight`` -> ``spatial.0.base_weight``; ``grid`` -> ``knots``."""
    prefix, _, index, part = official.split(".")
    return f"{PREFIXES[prefix]}.{index}.{'knots' if part == 'grid' else part}"


def is_official_state(blob) -> bool:
    """Whether ``blob`` looks like a reference-code state dict (a flat dict with ``layer1.layers.*`` keys)."""
    return (isinstance(blob, dict) and "train_config" not in blob
            and any(isinstance(k, str) and k.startswith(("layer1.layers.", "layer2.layers.")) for k in blob))


def _infer_sizes(state: dict, source: str) -> tuple[int, int]:
    """``(bands, patch)`` from the first layers' input widths."""
    try:
        area = int(state["layer1.layers.0.base_weight"].shape[1])
        bands = int(state["layer2.layers.0.base_weight"].shape[1])
    except (KeyError, IndexError, AttributeError):
        raise InputError(f"{source}: not a SpectralKAN reference checkpoint: it lacks layer1.layers.0.base_weight "
                         "or layer2.layers.0.base_weight") from None
    patch = math.isqrt(area)
    if patch * patch != area or patch % 2 == 0:
        raise InputError(f"{source}: layer1 takes {area} inputs per band, not an odd square patch (5x5 = 25)")
    return bands, patch


def _names(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")


def _check_keys(state: dict, expected: dict, source: str) -> None:
    missing, unexpected = set(expected) - set(state), set(state) - set(expected)
    if missing or unexpected:
        parts = ([f"missing {_names(missing)}"] if missing else []) + ([f"unexpected {_names(unexpected)}"] if unexpected else [])
        raise InputError(f"{source}: not the SpectralKAN reference model ([25, 16, 1] + [bands, 2]): {'; '.join(parts)}")
    for key, shape in expected.items():
        if not isinstance(state[key], torch.Tensor) or tuple(state[key].shape) != shape:
            found = tuple(state[key].shape) if isinstance(state[key], torch.Tensor) else type(state[key]).__name__
            raise InputError(f"{source}: {key} has shape {found}, expected {shape}")
        if not bool(torch.isfinite(state[key]).all()):
            raise InputError(f"{source}: {key} holds NaN or infinite values")


def _check_grid(key: str, grid: torch.Tensor, source: str) -> None:
    knots = uniform_knots().to(grid.dtype)
    worst = float((grid - knots).abs().max())
    if worst > 1e-5:
        raise InputError(f"{source}: {key} is not the uniform grid -2.2..2.2 (off by up to {worst:.3g}); "
                         "checkpoints trained with update_grid are not supported")


def convert_official_state(state: dict, source: str = "checkpoint") -> tuple[dict, int, int]:
    """Reference state dict -> ``(our state dict, bands, patch)`` for ``SpectralKAN(bands, patch, "b")``.

    One :class:`InputError` line names missing or unexpected keys, a wrong shape or a non-uniform grid.
    """
    bands, patch = _infer_sizes(state, source)
    expected = official_shapes(bands, patch)
    _check_keys(state, expected, source)
    ours = {}
    for key in expected:
        tensor = state[key].detach().to(torch.float32).clone()
        if key.endswith(".grid"):
            _check_grid(key, tensor, source)
            ours[our_key(key)] = uniform_knots()
            continue
        if key.endswith(".spline_weight"):
            tensor = tensor[0]
        if key.startswith("layer2.") and key.split(".")[-1] in ("base_weight", "spline_scaler"):
            tensor = tensor[[1, 0]]                       # reference class 0 = changed; ours class 1
        ours[our_key(key)] = tensor
    return ours, bands, patch


def build_from_official(state: dict, source: str = "checkpoint", basis: str = "fast") -> nn.Module:
    """Our ``SpectralKAN`` (config b) holding the reference checkpoint's weights."""
    ours, bands, patch = convert_official_state(state, source)
    model = SpectralKAN(bands, patch, "b", "wkan", basis)
    model.load_state_dict(ours, strict=True)
    return model.eval()


def read_official(path) -> dict:
    """The reference checkpoint at ``path``, loaded with ``weights_only=True`` (one line on any failure)."""
    from visionlens.io import load_checkpoint

    blob = load_checkpoint(Path(path), "SpectralKAN checkpoint")
    if not is_official_state(blob):
        keys = _names(map(str, blob)) if isinstance(blob, dict) else type(blob).__name__
        raise InputError(f"{path}: not a SpectralKAN reference state dict (keys layer1.*, layer2.*); found {keys}")
    return dict(blob)
