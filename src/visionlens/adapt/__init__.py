"""Source-free domain adaptation: a small framework (source training, target adaptation with
feature/score banks and k-NN, evaluation), EIANet, ProULearn [reconstructed] and peers."""

from .data import DomainShift, load_shift, plant_outliers
from .eianet import NeighbourhoodObjective, SAGANAttention
from .etf import SimplexETF, simplex_etf
from .framework import AdaptConfig, Banks, SourceConfig, adapt, evaluate, predict, prototype_separation, train_source
from .network import AdaptNet
from .peers import AaD, InformationMaximisation, SourceOnly
from .proulearn import ProULearnObjective, homogeneity, select

__all__ = [
    "AaD", "AdaptConfig", "AdaptNet", "Banks", "DomainShift", "InformationMaximisation", "NeighbourhoodObjective",
    "ProULearnObjective", "SAGANAttention", "SimplexETF", "SourceConfig", "SourceOnly", "adapt", "evaluate",
    "homogeneity", "load_shift", "plant_outliers", "predict", "prototype_separation", "select", "simplex_etf",
    "train_source",
]
