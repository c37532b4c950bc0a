"""Machinery every method shares: hooks, layer lookup, targets, results."""

from .hooks import ActivationCapture, preserved_model_state
from .layers import find_last_spatial_layer, layer_name, resolve_layer
from .result import Explanation, normalize_maps
from .targets import ClassTargets, resolve_targets

__all__ = [
    "ActivationCapture",
    "ClassTargets",
    "Explanation",
    "find_last_spatial_layer",
    "layer_name",
    "normalize_maps",
    "preserved_model_state",
    "resolve_layer",
    "resolve_targets",
]
