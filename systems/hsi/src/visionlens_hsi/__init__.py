"""Hyperspectral change detection: SpectralKAN (KAN / WKAN layers, spatial-then-channel model), the
public bi-temporal ``.mat`` datasets, a synthetic scene generator, peers and metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

from visionlens._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["DATASETS", "PatchPairs", "Scene", "load_dataset", "normalize_pair", "stratified_split",
                     "symmetric_pad"], "data"),
    **dict.fromkeys(["KANLinear", "KANStack", "WKANLinear", "bspline_basis_recursive", "cubic_bspline_basis_fast"],
                    "kan"),
    "scores": "metrics",
    **dict.fromkeys(["DualBranchSpectralKAN", "FlatKAN", "SpectralKAN", "build_model"], "spectralkan"),
    **dict.fromkeys(["SyntheticConfig", "make_scene"], "synthetic"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)  # imported on first use: the CLI stays fast

if TYPE_CHECKING:
    from .data import DATASETS, PatchPairs, Scene, load_dataset, normalize_pair, stratified_split, symmetric_pad
    from .kan import KANLinear, KANStack, WKANLinear, bspline_basis_recursive, cubic_bspline_basis_fast
    from .metrics import scores
    from .spectralkan import DualBranchSpectralKAN, FlatKAN, SpectralKAN, build_model
    from .synthetic import SyntheticConfig, make_scene

__all__ = ["DATASETS", "PatchPairs", "Scene", "load_dataset", "normalize_pair", "stratified_split", "symmetric_pad",
           "KANLinear", "KANStack", "WKANLinear", "bspline_basis_recursive", "cubic_bspline_basis_fast", "scores",
           "DualBranchSpectralKAN", "FlatKAN", "SpectralKAN", "build_model", "SyntheticConfig", "make_scene"]
