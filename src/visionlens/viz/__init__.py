"""Overlays and the HTML report."""

from .overlay import jet, overlay
from ..io import save_atomic
from .report import write_report

__all__ = ["jet", "overlay", "save_atomic", "write_report"]
