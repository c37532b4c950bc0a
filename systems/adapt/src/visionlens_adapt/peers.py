"""Peers run in the same harness: source-only, SHOT-IM and the neighbourhood baseline (AaD).

* ``source-only``: the source model, unchanged.
* ``shot-im``: SHOT's information maximisation (Liang et al., ICML 2020) without its pseudo-label
  term: ``mean_i H(p_i) - H(mean_i p_i)`` with the classifier frozen.
* ``aad``: the neighbourhood objective EIANet builds on (Yang et al., NeurIPS 2022), on the same
  network with a linear head and no attention; EIANet's fixed ``alpha = 0.4`` (AaD's decaying
  schedule is ``NeighbourhoodObjective(alpha_decay=...)``).
"""

from __future__ import annotations

import torch

from .eianet import NeighbourhoodObjective
from .framework import Objective


class SourceOnly(Objective):
    name = "source-only"
    trains = False


def information_maximisation(p: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``mean_i H(p_i) - H(mean_i p_i)``: confident and diverse predictions."""
    entropy = -(p * (p + eps).log()).sum(1).mean()
    mean = p.mean(0)
    diversity = -(mean * (mean + eps).log()).sum()
    return entropy - diversity


class InformationMaximisation(Objective):
    name = "shot-im"

    def loss(self, net, xb, idx, progress):
        return information_maximisation(net(xb).softmax(1))


class AaD(NeighbourhoodObjective):
    name = "aad"
