"""Hyperspectral change detection: SpectralKAN (KAN / WKAN layers, spatial-then-channel model), the
public bi-temporal ``.mat`` datasets, a synthetic scene generator, peers and metrics."""

from .data import DATASETS, PatchPairs, Scene, load_dataset, normalize_pair, stratified_split, symmetric_pad
from .kan import KANLinear, KANStack, WKANLinear, bspline_basis_recursive, cubic_bspline_basis_fast
from .metrics import scores
from .spectralkan import DualBranchSpectralKAN, FlatKAN, SpectralKAN, build_model
from .synthetic import SyntheticConfig, make_scene

__all__ = ["DATASETS", "PatchPairs", "Scene", "load_dataset", "normalize_pair", "stratified_split", "symmetric_pad",
           "KANLinear", "KANStack", "WKANLinear", "bspline_basis_recursive", "cubic_bspline_basis_fast", "scores",
           "DualBranchSpectralKAN", "FlatKAN", "SpectralKAN", "build_model", "SyntheticConfig", "make_scene"]
