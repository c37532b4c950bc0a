"""CAM (Zhou et al., CVPR 2016): ``M^c = sum_k W[c, k] A^k`` for networks that end in global
average pooling followed by a linear classifier ``W``.

The classifier is found (or checked, when given) numerically: its weights applied to the
spatial mean of the layer's output must reproduce the model's logits, so CAM is never silently
computed on a layer that does not feed GAP + linear.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.hooks import ActivationCapture
from ..core.layers import resolve_layer
from ..core.targets import ClassTargets, Target
from ..errors import InputError, LayerError
from .base import ClassActivationMethod, spatial_mean


class CAM(ClassActivationMethod):
    """Class activation map; ``fc`` (module or name) is the final linear layer, found if omitted."""

    name = "cam"
    needs_gradients = False

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None, fc: str | nn.Module | None = None):
        super().__init__(model, layer)
        self.fc = None if fc is None else resolve_layer(self.model, fc)

    def _candidates(self, channels: int) -> list[tuple[str, nn.Linear]]:
        if self.fc is not None:
            name, module = self.fc
            if not isinstance(module, nn.Linear):
                raise LayerError(f"fc layer '{name}' is a {type(module).__name__}, not nn.Linear")
            return [self.fc]
        linears = [(n, m) for n, m in self.model.named_modules() if isinstance(m, nn.Linear) and m.in_features == channels]
        return linears[::-1]

    def channel_weights(
        self, activation: torch.Tensor, targets: ClassTargets, output: torch.Tensor, capture: ActivationCapture
    ) -> torch.Tensor:
        layer = self._resolved[0]
        pooled = spatial_mean(activation.float())
        for name, fc in self._candidates(activation.shape[1]):
            logits = pooled @ fc.weight.float().t()
            if fc.bias is not None:
                logits = logits + fc.bias.float()
            if logits.shape == output.shape:
                reference = output.detach().float()
                # relative to the largest logit (an absolute 1e-3 let any layer pass on an untrained
                # model whose logits are all below 1e-3), looser for half-precision models' rounding
                relative = max(1e-3, 8 * torch.finfo(output.dtype).eps) if output.dtype.is_floating_point else 1e-3
                tol = relative * reference.abs().max() + 1e-6
                if bool(((logits - reference).abs().max() <= tol)):
                    return fc.weight[targets.indices].to(activation.dtype)
        raise LayerError(
            f"CAM needs layer '{layer}' to feed global average pooling and a final linear classifier, "
            "and it does not; use the last feature layer or method 'gradcam'"
        )

    def __call__(self, x: torch.Tensor, target: Target = None):
        if callable(target) and not torch.is_tensor(target):
            raise InputError("CAM explains a class index; a callable target needs a gradient method such as gradcam")
        return super().__call__(x, target)
