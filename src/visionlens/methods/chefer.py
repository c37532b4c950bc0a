"""Gradient-weighted attention rollout (Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model
Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers").

Per block ``b`` with attention probabilities ``A_b`` (``(heads, N, N)``, after the softmax) and
``dA_b`` the gradient of the target logit ``y`` with respect to them:

* ``Abar_b = mean_h max(0, dA_b * A_b)`` (the paper's rule 5: positive part, then the head mean);
* ``R_0 = I``, ``R_b = R_{b-1} + Abar_b R_{b-1}`` (rule 6, self-attention update);
* the map of block ``b`` is the [class] row of ``R_b`` at the patch tokens (every prefix token
  dropped), reshaped to the patch grid; displayed bilinear-resized and min-max normalised.

Follows the authors' ViT code (``hila-chefer/Transformer-MM-Explainability``,
``Transformer_MM_explainability_ViT.ipynb``: ``avg_heads``, ``apply_self_attention_rules``,
``generate_relevance``), but batched (one backward pass for the batch; the reference flattens the
batch into the head mean) and with the attention recomputed explicitly
(:class:`~visionlens.core.vit.AttentionRecorder`), so fused attention kernels are covered.
``dA`` is obtained from the recorded projection input ``U = concat_h(A^h V^h)``:
``dA^h = dU^h (V^h)^T``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.result import Explanation, normalize_maps
from ..core.targets import ClassTargets, Target, resolve_targets
from ..core.vit import AttentionRecorder, ViTAdapter, finite_model_output, is_headless
from ..errors import InputError, LayerError
from .base import ViTFlowMethod


class ValueTap:
    """An adapter stand-in for :class:`AttentionRecorder` that also keeps each block's values
    ``V`` (``(B, heads, N, d)``, detached), which ``dA = dU V^T`` needs."""

    def __init__(self, adapter: ViTAdapter):
        self._adapter = adapter
        self.values: dict[int, torch.Tensor] = {}

    def __getattr__(self, name: str):
        return getattr(self._adapter, name)

    def qkv(self, block, x: torch.Tensor):
        q, k, v, scale = self._adapter.qkv(block, x)
        self.values[block.index] = v.detach()
        return q, k, v, scale


def attention_gradient(values: torch.Tensor, grad_u: torch.Tensor) -> torch.Tensor:
    """``dy/dA`` (``(B, heads, N, N)``) of one block from ``dy/dU`` (``(B, N, heads * d)``) and ``V``."""
    b, heads, n, d = values.shape
    g = grad_u.reshape(b, n, heads, d).transpose(1, 2)
    return g.float() @ values.float().transpose(-2, -1)


def flow_result(name: str, layer: str, x: torch.Tensor, flow_raw: torch.Tensor, targets: ClassTargets,
                logits: torch.Tensor, adapter: ViTAdapter | None = None) -> Explanation:
    """The :class:`Explanation` of a per-block flow ``flow_raw`` ``(B, L, h, w)``: every block's
    map bilinear-resized to the input (a padded grid cropped, :meth:`ViTAdapter.normalize`) and min-max
    normalised; ``maps`` is the last block's."""
    b, blocks = flow_raw.shape[:2]
    normalize = adapter.normalize if adapter is not None else normalize_maps
    flow = normalize(flow_raw.reshape(b * blocks, *flow_raw.shape[2:]), x.shape[-2:], relu=False)
    flow = flow.reshape(b, blocks, *x.shape[-2:])
    indices = targets.indices.detach() if targets.indices is not None else None
    return Explanation(maps=flow[:, -1], raw=flow_raw[:, -1], targets=indices, scores=targets.scores.detach(),
                       logits=logits, method=name, layer=layer, flow=flow, flow_raw=flow_raw)


class CheferRollout(ViTFlowMethod):
    """``CheferRollout(model)(x, target=None) -> Explanation`` with ``flow`` ``(B, L, H, W)`` (the
    relevance ``R_b`` up to each block). ``target``: class indices (``None``: the predicted class)
    or a callable scoring the model's output (the only choice for a model without a classifier)."""

    name = "chefer"
    reads_class_row = True

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None):
        super().__init__(model, layer)
        self.headless = is_headless(self.model, self.adapter)

    def compute_terms(self, x: torch.Tensor, target: Target) -> tuple[torch.Tensor, ClassTargets, torch.Tensor]:
        """``(flow_raw (B, L, h, w), targets, logits)``: the [class] row of ``R_b`` after each block."""
        if self.headless and not callable(target):
            raise InputError(f"{type(self.model).__name__} outputs an embedding (no classifier head): give chefer a "
                             "callable target that turns the embedding into one score per image")
        grid = self.adapter.grid(tuple(x.shape[-2:]))
        tap = ValueTap(self.adapter)
        with AttentionRecorder(tap, grad=True) as recorder, torch.no_grad():
            output = finite_model_output(self.model(x))
            records = recorder.complete()
            targets = resolve_targets(target, output, x.shape[0])
            if targets.scores.dim() != 1:
                raise InputError("chefer explains one class per image; call it once per class")
            if not targets.scores.requires_grad:
                raise LayerError("the target score does not depend on the attention blocks")
            grads = torch.autograd.grad(targets.scores.sum(), [r.u for r in records], allow_unused=True)
        if any(g is None for g in grads):
            raise LayerError("the target score does not depend on every attention block")
        n = records[0].attn.shape[-1]
        prefix = self.adapter.prefix_tokens(n, grid)
        relevance = torch.eye(n, device=x.device, dtype=torch.float32).expand(x.shape[0], n, n)
        rows = []
        for i, (r, g) in enumerate(zip(records, grads)):
            cam = (attention_gradient(tap.values[i], g) * r.attn.float()).clamp_min(0).mean(1)
            relevance = relevance + cam @ relevance
            rows.append(relevance[:, 0, prefix:])
        flow_raw = torch.stack(rows, 1).reshape(x.shape[0], len(rows), *grid)
        return flow_raw, ClassTargets(targets.indices, targets.scores.detach()), output.detach()

    def flow_explanation(self, x: torch.Tensor, terms) -> Explanation:
        flow_raw, targets, logits = terms
        return flow_result(self.name, self.layer, x, flow_raw, targets, logits, self.adapter)
