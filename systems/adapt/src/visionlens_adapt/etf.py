"""Fixed simplex equiangular-tight-frame (ETF) classifier, as in EIANet's reference code.

``W = sqrt(K/(K-1)) * U (I_K - 11^T/K)`` with ``U`` (d x K) the left singular vectors of a Gaussian
matrix: unit-norm class vectors whose pairwise cosines all equal ``-1/(K-1)``. The matrix is a
buffer (never trained) and saved in the checkpoint, so source and target share it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from visionlens.errors import InputError


def simplex_etf(dim: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    """The ``(dim, num_classes)`` simplex ETF matrix (columns are the class vectors)."""
    if num_classes < 2:
        raise InputError(f"a simplex ETF needs at least 2 classes, got {num_classes}")
    if dim < num_classes:
        raise InputError(f"ETF feature size {dim} must be >= the number of classes {num_classes}; raise --bottleneck")
    gen = torch.Generator().manual_seed(int(seed))
    u, _, _ = torch.linalg.svd(torch.randn(dim, num_classes, generator=gen, dtype=torch.float64), full_matrices=False)
    k = num_classes
    centre = torch.eye(k, dtype=torch.float64) - torch.full((k, k), 1.0 / k, dtype=torch.float64)
    return (math.sqrt(k / (k - 1)) * u @ centre).float()


class SimplexETF(nn.Module):
    """``logits = f @ W`` with a fixed simplex ETF ``W`` (no bias, no gradient)."""

    def __init__(self, dim: int, num_classes: int, seed: int = 0):
        super().__init__()
        self.register_buffer("weight", simplex_etf(dim, num_classes, seed))

    @property
    def prototypes(self) -> torch.Tensor:
        """Class vectors, ``(K, dim)``."""
        return self.weight.T

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.weight
