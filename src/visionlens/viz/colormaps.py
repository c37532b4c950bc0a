"""Colormaps as lookup tables (no matplotlib at run time): perceptually uniform ones for maps in
[0, 1] (``viridis``, the default, ``inferno``, ``magma``), diverging ones centred at zero for signed
maps (``rdbu``, the signed default, ``coolwarm``) and the classic ``jet``.

The tables live in ``colormaps.json`` (sources and licences named there and in
``scripts/make_colormaps.py`` in the repository, which generated them)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import InputError

DEFAULT_CMAP = "viridis"
DEFAULT_SIGNED_CMAP = "rdbu"
DIVERGING = ("rdbu", "coolwarm")
CMAPS = ("viridis", "inferno", "magma", "rdbu", "coolwarm", "jet")


def _jet_table() -> np.ndarray:
    """The classic JET colormap (blue low, red high) as a 256-entry table."""
    v = np.linspace(0.0, 1.0, 256, dtype=np.float32)
    channels = [np.clip(1.5 - np.abs(4.0 * v - c), 0.0, 1.0) for c in (3.0, 2.0, 1.0)]
    return np.round(np.stack(channels, axis=-1) * 255).astype(np.uint8)


@lru_cache(maxsize=None)
def _tables() -> dict:
    data = json.loads(Path(__file__).with_name("colormaps.json").read_text(encoding="utf-8"))
    tables = {name: np.frombuffer(bytes.fromhex(entry["colors"]), dtype=np.uint8).reshape(-1, 3)
              for name, entry in data.items()}
    return tables | {"jet": _jet_table()}


def check_cmap(name: str) -> str:
    """``name`` lower-cased if it is a known colormap; otherwise one :class:`InputError` line."""
    key = str(name).strip().lower()
    if key not in CMAPS:
        raise InputError(f"unknown colormap '{name}'; choose from: {', '.join(CMAPS)}")
    return key


def is_diverging(name: str) -> bool:
    return check_cmap(name) in DIVERGING


def table(name: str) -> np.ndarray:
    """The ``(256, 3)`` uint8 lookup table of colormap ``name``."""
    return _tables()[check_cmap(name)]


def apply(positions: np.ndarray, name: str = DEFAULT_CMAP) -> np.ndarray:
    """Colours of ``positions`` in [0, 1] (clipped) along colormap ``name``, linearly interpolated
    between table entries: ``(...)`` -> ``(..., 3)`` uint8."""
    lut = table(name).astype(np.float32)
    x = np.clip(np.nan_to_num(np.asarray(positions, dtype=np.float32)), 0.0, 1.0) * (len(lut) - 1)
    low = np.floor(x).astype(np.int64)
    high = np.minimum(low + 1, len(lut) - 1)
    frac = (x - low)[..., None]
    return np.round(lut[low] * (1.0 - frac) + lut[high] * frac).astype(np.uint8)


def display_cmap(cmap: str | None, signed: bool) -> str:
    """The colormap a map is drawn with: a signed map needs a diverging one (``cmap`` if it is
    diverging, else :data:`DEFAULT_SIGNED_CMAP`); a normalised map uses ``cmap`` (default viridis)."""
    name = check_cmap(cmap or DEFAULT_CMAP)
    if signed and name not in DIVERGING:
        return DEFAULT_SIGNED_CMAP
    return name


def positions(values: np.ndarray, cmap: str, signed: bool) -> np.ndarray:
    """Where values fall on the colormap: a signed map is scaled by its largest magnitude so that
    zero sits at the centre (0.5); a normalised map in [0, 1] spans a sequential map, or the upper
    half (neutral to high) of a diverging one."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float32))
    if signed:
        peak = float(np.abs(v).max()) if v.size else 0.0
        return 0.5 + 0.5 * (v / peak if peak > 0 else v)
    v = np.clip(v, 0.0, 1.0)
    return 0.5 + 0.5 * v if is_diverging(cmap) else v


def colorize(values: np.ndarray, cmap: str | None = None, signed: bool = False) -> np.ndarray:
    """``(H, W)`` map -> ``(H, W, 3)`` uint8 with :func:`display_cmap` and :func:`positions`."""
    name = display_cmap(cmap, signed)
    return apply(positions(values, name, signed), name)


def css_gradient(cmap: str | None = None, signed: bool = False, stops: int = 11) -> str:
    """A CSS ``linear-gradient`` (left to right) of the colours a map is drawn with, for a colour bar."""
    name = display_cmap(cmap, signed)
    ends = (0.0, 1.0) if signed or not is_diverging(name) else (0.5, 1.0)
    colors = apply(np.linspace(*ends, stops), name)
    return "linear-gradient(to right, " + ", ".join("#%02x%02x%02x" % tuple(int(c) for c in rgb) for rgb in colors) + ")"


def bar_labels(signed: bool) -> tuple[str, ...]:
    """The end labels of a colour bar: ``low``/``high`` for normalised maps, ``-max``/``0``/``+max``
    for signed maps (each map scaled by its own largest magnitude)."""
    return ("−max", "0", "+max") if signed else ("low", "high")
