"""Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): the projection of the (spatially centred)
activations on their first principal component; class-agnostic, no gradients.

Formula choice: the sign of a principal component is arbitrary; visionlens flips it so that
the projection correlates positively with the channel sum of the activations (pytorch-grad-cam
keeps whatever sign its SVD returns).
"""

from __future__ import annotations

import torch

from ..core.hooks import ActivationCapture
from ..core.targets import ClassTargets
from .base import ClassActivationMethod


class EigenCAM(ClassActivationMethod):
    name = "eigencam"
    needs_gradients = False

    def channel_weights(self, activation: torch.Tensor, targets: ClassTargets, output: torch.Tensor,
                        capture: ActivationCapture) -> torch.Tensor:
        flat = activation.float().flatten(2).transpose(1, 2)  # (B, hw, K)
        centred = flat - flat.mean(dim=1, keepdim=True)
        _, _, vh = torch.linalg.svd(torch.nan_to_num(centred), full_matrices=False)
        v = vh[:, 0, :]  # (B, K)
        proj = centred @ v[:, :, None]  # (B, hw, 1)
        total = flat.sum(dim=2, keepdim=True)
        sign = torch.sign(((proj - proj.mean(1, keepdim=True)) * (total - total.mean(1, keepdim=True))).sum(dim=(1, 2)))
        return v * torch.where(sign == 0, torch.ones_like(sign), sign)[:, None]

    @staticmethod
    def combine(weights: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
        centred = activation - activation.mean(dim=(2, 3), keepdim=True)
        return torch.einsum("bk,bkhw->bhw", weights, centred)
