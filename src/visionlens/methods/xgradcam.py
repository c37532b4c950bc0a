"""XGrad-CAM (Fu et al., BMVC 2020): ``w_k = sum_ij (A_ij^k / sum_ab A_ab^k) d y^c / d A_ij^k``,
the gradient weighted by the normalised activation (axioms of sensitivity and conservation)."""

from __future__ import annotations

import torch

from ..core.hooks import ActivationCapture
from ..core.targets import ClassTargets
from .base import ClassActivationMethod

EPS = 1e-7


class XGradCAM(ClassActivationMethod):
    name = "xgradcam"
    needs_gradients = True

    def channel_weights(self, activation: torch.Tensor, targets: ClassTargets, output: torch.Tensor,
                        capture: ActivationCapture) -> torch.Tensor:
        (g,) = capture.gradients(targets.scores, [self._resolved[0]])
        total = activation.sum(dim=(2, 3), keepdim=True)
        return (g * activation / (total + EPS)).sum(dim=(2, 3))
