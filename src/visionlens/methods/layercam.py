"""LayerCAM (Jiang et al., TIP 2021): ``M = ReLU(sum_k ReLU(d y^c / d A^k) * A^k)``, a weight per
channel *and position*, so it stays sharp at early layers."""

from __future__ import annotations

import torch

from ..core.hooks import ActivationCapture
from ..core.targets import ClassTargets
from .base import ClassActivationMethod


class LayerCAM(ClassActivationMethod):
    name = "layercam"
    needs_gradients = True

    def channel_weights(self, activation: torch.Tensor, targets: ClassTargets, output: torch.Tensor,
                        capture: ActivationCapture) -> torch.Tensor:
        (g,) = capture.gradients(targets.scores, [self._resolved[0]])
        return g.clamp_min(0)
