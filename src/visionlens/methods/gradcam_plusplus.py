"""Grad-CAM++ (Chattopadhyay et al., WACV 2018): ``w_k = sum_ij alpha_ij^k ReLU(g_ij^k)`` with
``alpha = g^2 / (2 g^2 + sum_ab A_ab^k g^3)`` (0 where ``g = 0``).

Formula choice: the paper's Eq. 19 with the higher-order derivatives written as powers of the
first-order gradient ``g = d y^c / d A`` (exact when the score is ``exp`` of the logit, as the
paper assumes; this is also the authors' code and pytorch-grad-cam's).
"""

from __future__ import annotations

import torch

from ..core.hooks import ActivationCapture
from ..core.targets import ClassTargets
from .base import ClassActivationMethod

EPS = 1e-6


class GradCAMPlusPlus(ClassActivationMethod):
    """Grad-CAM++: positive gradients weighted per position; batched, one backward pass."""

    name = "gradcam++"
    needs_gradients = True

    def channel_weights(self, activation: torch.Tensor, targets: ClassTargets, output: torch.Tensor,
                        capture: ActivationCapture) -> torch.Tensor:
        (g,) = capture.gradients(targets.scores, [self._resolved[0]])
        dtype = torch.promote_types(g.dtype, torch.float32)  # in float16, g^2 and g^3 underflow to 0
        g, activation = g.to(dtype), activation.to(dtype)
        g2 = g * g
        total = activation.sum(dim=(2, 3), keepdim=True)
        alpha = g2 / (2 * g2 + total * g2 * g + EPS)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        return (alpha * g.clamp_min(0)).sum(dim=(2, 3))
