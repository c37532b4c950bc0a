"""Attention rollout (Abnar & Zuidema, ACL 2020): ``R_i = A~_i R_{i-1}``, ``R_0 = I``, with
``A~_b = rownorm((1 - r) mean_h A^h_b + r I)`` (``r = 0.5`` models the residual connection); the
map of block ``i`` is the [class] row of ``R_i`` at the patch tokens (all prefix tokens dropped).

Batched, with attention recomputed explicitly (fused kernels included; see :mod:`visionlens.core.vit`).
Class-agnostic: the target only labels the result.
"""

from __future__ import annotations

import torch
from torch import nn

from ..checks import check_number
from ..core.layers import eager_module
from ..core.result import Explanation
from ..core.targets import ClassTargets, Target, resolve_targets
from ..core.vit import AttentionRecorder, finite_model_output, is_headless
from ..errors import InputError
from .base import ViTFlowMethod


class AttentionRollout(ViTFlowMethod):
    """``AttentionRollout(model)(x) -> Explanation`` with ``flow`` ``(B, L, H, W)`` (rollout up to each block).

    ``head_fusion``: ``mean`` (the paper), ``max`` or ``min`` over heads; ``residual``: weight of
    the identity added to the attention, in [0, 1]. Class-agnostic: on a model without a
    classifier head (an embedding) ``targets`` is None unless a callable target scores the output."""

    name = "rollout"
    reads_class_row = True

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None, head_fusion: str = "mean",
                 residual: float = 0.5):
        eager_module(model)
        if head_fusion not in ("mean", "max", "min"):
            raise InputError(f"head_fusion must be 'mean', 'max' or 'min', got {head_fusion!r}")
        residual = check_number("residual", residual, minimum=0, maximum=1)
        super().__init__(model, layer)
        self.head_fusion, self.residual = head_fusion, residual
        self.headless = is_headless(self.model, self.adapter)

    def compute_terms(self, x: torch.Tensor, target: Target) -> tuple[torch.Tensor, ClassTargets, torch.Tensor]:
        """``(flow_raw (B, L, h, w), targets, logits)``: the rollout's [class] row up to each block."""
        grid = self.adapter.grid(tuple(x.shape[-2:]))
        with AttentionRecorder(self.adapter) as recorder, torch.no_grad():
            output = finite_model_output(self.model(x))
            records = recorder.complete()
        targets = self._targets(target, output.detach(), x.shape[0])
        n = records[0].attn.shape[-1]
        prefix = self.adapter.prefix_tokens(n, grid)
        eye = torch.eye(n, device=x.device, dtype=torch.float32)
        rollout = eye.expand(x.shape[0], n, n)
        rows = []
        for r in records:
            a = r.attn.float()
            a = a.mean(1) if self.head_fusion == "mean" else (a.amax(1) if self.head_fusion == "max" else a.amin(1))
            a = (1 - self.residual) * a + self.residual * eye
            a = a / a.sum(-1, keepdim=True)
            rollout = a @ rollout
            rows.append(rollout[:, 0, prefix:])
        return torch.stack(rows, 1).reshape(x.shape[0], len(rows), *grid), targets, output.detach()

    def _targets(self, target: Target, output: torch.Tensor, batch: int) -> ClassTargets:
        """The labels of the result; none for an embedding (no class to predict) without a callable target."""
        if not self.headless or (callable(target) and not torch.is_tensor(target)):
            return resolve_targets(target, output, batch)
        if target is not None:
            raise InputError(f"{type(self.model).__name__} outputs an embedding (no classifier head), so it has no "
                             "classes; rollout is class-agnostic: leave the target out")
        return ClassTargets(None, torch.zeros(batch, device=output.device))

    def flow_explanation(self, x: torch.Tensor, terms) -> Explanation:
        flow_raw, targets, logits = terms
        b, l = flow_raw.shape[:2]
        flow = self.adapter.normalize(flow_raw.reshape(b * l, *flow_raw.shape[2:]), x.shape[-2:], relu=False)
        flow = flow.reshape(b, l, *x.shape[-2:])
        return Explanation(
            maps=flow[:, -1], raw=flow_raw[:, -1], targets=targets.indices.detach() if targets.indices is not None else None,
            scores=targets.scores.detach(), logits=logits, method=self.name, layer=self.layer,
            flow=flow, flow_raw=flow_raw,
        )
