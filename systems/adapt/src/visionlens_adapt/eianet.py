"""EIANet (Pan et al., BMVC 2024, arXiv:2407.16189): ETF-informed attention for source-free DA.

Follows the public code (zichengpan/EIANet; re-derived, not copied):

* :class:`SAGANAttention` on the last feature map: ``F' = F + tau * O`` with ``O`` the SAGAN
  self-attention output (1x1 convs: q, k to C/8 channels, v to C; ``softmax(q^T k)`` unscaled).
  ``tau`` is a fixed "temperature": 0 at source time in the reference (the attention convs stay at
  their random initialisation), ``--temperature`` (0.01 default, 0.1 for Office-31) at target
  time. ``learned=True`` is the reference's ``--mode`` (a learnable gain initialised at 0).
* The fixed simplex ETF head (:mod:`.etf`) on an un-normalised BatchNorm bottleneck feature.
* :class:`NeighbourhoodObjective`: the AaD-style loss of ``tar_adapt.py`` with ``K = 4``
  neighbours and a fixed ``alpha = 0.4``: ``mean_i sum_k KL-form(s_nk, p_i) + alpha * mean_i
  sum_{j != i} <p_i, p_j>``. The first term passes probabilities to ``kl_div`` where log-probs are
  expected, exactly as the reference; it equals ``-sum_k <p_i, s_nk>`` plus a constant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from visionlens.errors import InputError

from .framework import AdaptConfig, Banks, Objective

# Reference defaults (tar_adapt.py / src_pretrain.py / office31.sh).
REFERENCE = {
    "knn": 4,
    "alpha": 0.4,
    "temperature": 0.01,  # tar_adapt.py default; office31.sh passes 0.1
    "source_temperature": 0.0,  # set_temperature is never called in src_pretrain.py
    "lr": 1e-3,
    "lr_encoder": 0.2,  # 0.5 in office_home.sh and cub.sh
    "bottleneck_lr_mult": 2.0,
    "smoothing": 0.1,
    "bottleneck": 256,
    "max_epoch": 60,
}


class SAGANAttention(nn.Module):
    """Residual SAGAN self-attention: ``x + tau * attn(x)`` (or ``x + gamma * attn(x)`` with a
    learnable ``gamma`` initialised at 0 when ``learned``). ``tau == 0`` is an exact identity."""

    def __init__(self, channels: int, reduction: int = 8, temperature: float = 0.0, learned: bool = False):
        super().__init__()
        inner = max(1, channels // reduction)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1), requires_grad=learned)  # used only when learned
        self.temperature = float(temperature)
        self.learned = learned

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The attention output ``O`` (before the residual)."""
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, N, C/8)
        k = self.key(x).flatten(2)  # (B, C/8, N)
        attn = torch.bmm(q, k).softmax(dim=-1)  # (B, N, N): row i attends over j
        v = self.value(x).flatten(2)  # (B, C, N)
        return torch.bmm(v, attn.transpose(1, 2)).view(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gain = self.gamma if self.learned else self.temperature
        if not self.learned and gain == 0.0:
            return x + 0.0 * self.attend(x)  # exact identity, attention still in the graph
        return x + gain * self.attend(x)


def attraction_dispersion(p: torch.Tensor, neighbour_scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """The reference adaptation loss. ``p``: (B, K) batch probabilities; ``neighbour_scores``:
    (B, k, K) bank scores of each sample's neighbours."""
    expanded = p[:, None, :].expand_as(neighbour_scores)
    attract = F.kl_div(expanded, neighbour_scores, reduction="none").sum(-1).sum(1).mean()
    gram = p @ p.T
    disperse = (gram.sum(1) - gram.diagonal()).mean()
    return attract + alpha * disperse


class NeighbourhoodObjective(Objective):
    """AaD / EIANet target objective over feature and score banks. ``alpha_decay`` > 0 gives AaD's
    schedule ``alpha * (1 + 10 t)^-alpha_decay`` (t = training progress); 0 is EIANet's fixed alpha."""

    name = "neighbourhood"

    def __init__(self, knn: int = REFERENCE["knn"], alpha: float = REFERENCE["alpha"], alpha_decay: float = 0.0):
        if knn < 1:
            raise InputError(f"knn must be >= 1, got {knn}")
        self.knn, self.alpha, self.alpha_decay = knn, alpha, alpha_decay
        self.banks: Banks | None = None

    def start(self, net, x):
        self.banks = Banks.from_model(net, x)

    def loss(self, net, xb, idx, progress):
        f = net.embed(xb)
        p = net.head(f).softmax(1)
        self.banks.update(idx, f, p)
        near = self.banks.neighbours(f, idx, self.knn)
        alpha = self.alpha * (1 + 10 * progress) ** (-self.alpha_decay)
        return attraction_dispersion(p, self.banks.scores[near].to(p.device), alpha)


@dataclass
class EIANetSetup:
    """How EIANet's network is built and adapted. ``temperature``: attention gain at target time;
    ``source_temperature``: at source time (0 = the reference; > 0 = the variant with attention
    trained at source time)."""

    temperature: float = REFERENCE["temperature"]
    source_temperature: float = REFERENCE["source_temperature"]
    knn: int = REFERENCE["knn"]
    alpha: float = REFERENCE["alpha"]


def eianet_adapt_config(base: AdaptConfig) -> AdaptConfig:
    """The adaptation optimiser of the reference (ratios kept; ``base.lr`` scaled for the backbone)."""
    return AdaptConfig(**{**base.__dict__, "lr_encoder": REFERENCE["lr_encoder"],
                          "bottleneck_lr_mult": REFERENCE["bottleneck_lr_mult"]})
