"""Grad-CAM (Selvaraju et al., ICCV 2017): ``M = ReLU(sum_k alpha_k A^k)`` with
``alpha_k = mean_ij d y^c / d A^k_ij``, the gradient of the target score (pre-softmax logit)."""

from __future__ import annotations

import torch

from ..core.hooks import ActivationCapture
from ..core.targets import ClassTargets
from .base import ClassActivationMethod, spatial_mean


class GradCAM(ClassActivationMethod):
    """Gradient-weighted class activation map; batched, one backward pass for the whole batch."""

    name = "gradcam"
    needs_gradients = True

    def channel_weights(
        self, activation: torch.Tensor, targets: ClassTargets, output: torch.Tensor, capture: ActivationCapture
    ) -> torch.Tensor:
        (grad,) = capture.gradients(targets.scores, [self._resolved[0]])
        return spatial_mean(grad)
