"""Regenerate ``src/visionlens/viz/colormaps.json`` (run once by a developer in a clone; matplotlib
is needed only here; not part of the installed package):

    python scripts/make_colormaps.py

Sources of the tables: viridis, inferno and magma are matplotlib's (by Stéfan van der Walt and
Nathaniel Smith, released CC0); RdBu is ColorBrewer's (Cynthia Brewer, Apache-2.0-style licence),
reversed so that negative is blue and positive red; coolwarm is Kenneth Moreland's diverging map as
matplotlib ships it. Each table has 256 sRGB colours, stored as one hex string.
"""

from __future__ import annotations

import json
from pathlib import Path

TABLES = {"viridis": "viridis", "inferno": "inferno", "magma": "magma", "rdbu": "RdBu_r", "coolwarm": "coolwarm"}
SOURCES = {
    "viridis": "matplotlib viridis (CC0)", "inferno": "matplotlib inferno (CC0)", "magma": "matplotlib magma (CC0)",
    "rdbu": "ColorBrewer RdBu, reversed (Apache-2.0-style licence), as sampled by matplotlib",
    "coolwarm": "Moreland's cool-warm diverging map, as sampled by matplotlib",
}


def build() -> dict:
    """``{name: {"source", "colors"}}`` sampled from matplotlib; ``colors``: 256 colours as one
    string of 6-digit hex codes."""
    import matplotlib

    out = {}
    for name, mpl_name in TABLES.items():
        cmap = matplotlib.colormaps[mpl_name].resampled(256)
        rgb = [cmap(i)[:3] for i in range(256)]
        out[name] = {"source": SOURCES[name],
                     "colors": "".join(f"{round(c * 255):02x}" for color in rgb for c in color)}
    return out


if __name__ == "__main__":
    dest = Path(__file__).resolve().parents[1] / "src" / "visionlens" / "viz" / "colormaps.json"
    dest.write_text(json.dumps(build(), indent=1) + "\n", encoding="utf-8")
    print(f"wrote {dest}")
