"""Source-free domain adaptation: a small framework (source training, target adaptation with
feature/score banks and k-NN, evaluation), EIANet, ProULearn [reconstructed] and peers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from visionlens._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["DomainShift", "load_shift", "plant_outliers"], "data"),
    **dict.fromkeys(["NeighbourhoodObjective", "SAGANAttention"], "eianet"),
    **dict.fromkeys(["SimplexETF", "simplex_etf"], "etf"),
    **dict.fromkeys(["AdaptConfig", "Banks", "SourceConfig", "adapt", "evaluate", "predict", "prototype_separation",
                     "train_source"], "framework"),
    "AdaptNet": "network",
    **dict.fromkeys(["AaD", "InformationMaximisation", "SourceOnly"], "peers"),
    **dict.fromkeys(["ProULearnObjective", "homogeneity", "select"], "proulearn"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)  # imported on first use: the CLI stays fast

if TYPE_CHECKING:
    from .data import DomainShift, load_shift, plant_outliers
    from .eianet import NeighbourhoodObjective, SAGANAttention
    from .etf import SimplexETF, simplex_etf
    from .framework import (AdaptConfig, Banks, SourceConfig, adapt, evaluate, predict, prototype_separation,
                            train_source)
    from .network import AdaptNet
    from .peers import AaD, InformationMaximisation, SourceOnly
    from .proulearn import ProULearnObjective, homogeneity, select

__all__ = [
    "AaD", "AdaptConfig", "AdaptNet", "Banks", "DomainShift", "InformationMaximisation", "NeighbourhoodObjective",
    "ProULearnObjective", "SAGANAttention", "SimplexETF", "SourceConfig", "SourceOnly", "adapt", "evaluate",
    "homogeneity", "load_shift", "plant_outliers", "predict", "prototype_separation", "select", "simplex_etf",
    "train_source",
]
