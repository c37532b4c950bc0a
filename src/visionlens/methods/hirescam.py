"""HiResCAM (Draelos & Carin, 2020): ``M = ReLU(sum_k (d y^c / d A^k) * A^k)``, the element-wise
product (no spatial averaging of the gradient), which provably reflects the locations the model
used when a single fully connected layer follows the feature maps."""

from __future__ import annotations

import torch

from ..core.hooks import ActivationCapture
from ..core.targets import ClassTargets
from .base import ClassActivationMethod


class HiResCAM(ClassActivationMethod):
    name = "hirescam"
    needs_gradients = True

    def channel_weights(self, activation: torch.Tensor, targets: ClassTargets, output: torch.Tensor,
                        capture: ActivationCapture) -> torch.Tensor:
        (g,) = capture.gradients(targets.scores, [self._resolved[0]])
        return g
