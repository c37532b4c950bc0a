"""Relevance-CAM (Lee et al., CVPR 2021): ``M = sum_k w_k A^k`` with ``w_k = mean_ij R^k_ij``, the
LRP relevance at the layer, and ``A`` that layer's forward activation; no ReLU (as the reference).

Relevance comes from :class:`visionlens.lrp.LRP` with the reference's rules and its contrastive
start (``R_t = 1``, ``R_c = -1/C`` for the other classes), on the unmodified model.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..core.hooks import warn_if_reused
from ..core.layers import check_spatial
from ..core.result import Explanation, normalize_maps
from ..core.targets import Target
from ..lrp import LRP, Canonizer, Composite
from .base import ClassActivationMethod, spatial_mean


class RelevanceCAM(ClassActivationMethod):
    """Relevance-weighted class activation map at any layer (intermediate layers included).

    ``composite``/``canonizers`` choose the LRP rules and model rewrites (defaults: the reference's
    rules; see :mod:`visionlens.lrp`); ``contrastive=False`` starts from the one-hot target instead.
    A callable target starts from the gradient of its score with respect to the model output.
    """

    name = "relevance-cam"
    needs_gradients = True
    relu = False
    shares_pass = False  # its own LRP backward pass
    multi_target = False  # one class per image and pass

    def __init__(
        self,
        model: nn.Module,
        layer: str | nn.Module | None = None,
        composite: Composite | None = None,
        canonizers: Sequence[Canonizer] | None = None,
        contrastive: bool = True,
    ):
        super().__init__(model, layer)
        self.engine = LRP(model, composite, canonizers)
        self.contrastive = contrastive

    def explain(self, x: torch.Tensor, target: Target) -> Explanation:
        name, _ = self.resolve(x)
        att = self.engine.attribute(x, target, layers=[name], contrastive=self.contrastive)
        activation, relevance = att.activations[name], att.relevance[name]
        warn_if_reused(name, att.calls.get(name, 1))
        check_spatial(name, activation)
        weights = spatial_mean(relevance)
        raw = torch.einsum("bk,bkhw->bhw", weights.to(activation.dtype), activation)
        maps = normalize_maps(raw, x.shape[-2:], relu=self.relu)
        return Explanation(
            maps=maps,
            raw=raw,
            targets=att.targets.indices,
            scores=att.targets.scores,
            logits=att.output,
            method=self.name,
            layer=name,
        )
