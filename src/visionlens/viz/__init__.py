"""Overlays, colormaps and the HTML pages."""

from .colormaps import CMAPS, DEFAULT_CMAP, colorize
from .overlay import jet, overlay, with_colorbar
from ..io import save_atomic
from .report import write_report

__all__ = ["CMAPS", "DEFAULT_CMAP", "colorize", "jet", "overlay", "save_atomic", "with_colorbar", "write_report"]
