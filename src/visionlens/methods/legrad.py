"""LeGrad (Bousselham et al., 2024, "LeGrad: An Explainability Method for Vision Transformers via
Feature Formation Sensitivity"): the sensitivity of every block's own class score to its attention.

Per selected block ``l`` with output tokens ``z_l`` (``(N, C)``) and attention probabilities
``A_l`` (``(heads, N, N)``, after the softmax):

* block score ``s_l = head(norm(mean_n z_l))``: the model's final norm and classifier applied to
  the mean over all tokens (prefix tokens included), for the target class;
* block map ``E_l = mean_{h, i} max(0, ds_l / dA_l)`` over heads ``h`` and query tokens ``i``, at
  the patch keys (prefix keys dropped); the attention itself is not multiplied in;
* map ``E = mean_l E_l`` over the selected blocks, bilinear-resized and min-max normalised.

The semantics of TorchCAM 0.5.0's ``torchcam.methods.LeGrad`` (which takes torchvision ViTs), here
for every ViT :func:`~visionlens.core.vit.find_vit` recognises, batched, with the attention
recomputed explicitly (fused kernels included). ``flow`` holds the running mean of ``E_l`` over
the selected blocks (its last entry is ``E``).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..core.result import Explanation
from ..core.targets import ClassTargets, Target, resolve_targets
from ..core.vit import AttentionRecorder, BlockRecord, ViTAdapter, finite_model_output, is_headless
from ..errors import InputError, LayerError
from .base import ViTFlowMethod
from .chefer import ValueTap, attention_gradient, flow_result


def _apply(modules: list[nn.Module | None], t: torch.Tensor) -> torch.Tensor:
    for m in modules:
        if isinstance(m, nn.Module):
            t = m(t)
    return t


class _MeanOfHeads(nn.Module):
    """Distilled DeiT's logits: the mean of its [class] and distillation heads."""

    def __init__(self, *heads: nn.Module):
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return sum(h(t) for h in self.heads) / len(self.heads)


def _hf_head(model: nn.Module) -> nn.Module:
    """A Hugging Face ViT's classifier (distilled DeiT's two heads averaged, as its logits are)."""
    if isinstance(getattr(model, "cls_classifier", None), nn.Module):
        return _MeanOfHeads(model.cls_classifier, model.distillation_classifier)
    return model.classifier


def block_scorer(model: nn.Module, adapter: ViTAdapter) -> Callable[[torch.Tensor], torch.Tensor]:
    """``tokens (B, N, C) -> logits (B, K)``: the model's final norm and classifier on the token mean."""
    if adapter.family == "torchvision":
        tail = [model.encoder.ln, model.heads]
    elif adapter.family == "huggingface":
        head = _hf_head(model)
        width = getattr(getattr(model.base_model, "config", None), "hidden_size", None)
        if isinstance(head, nn.Linear) and width is not None and head.in_features != width:
            raise LayerError(f"{type(model).__name__}'s classifier reads {head.in_features} features, not one token's "
                             f"{width}, so legrad cannot score the token mean with it; use chefer or daam")
        tail = [getattr(model.base_model, "layernorm", None), head]
    else:
        if getattr(model, "attn_pool", None) is not None:
            raise LayerError(f"{type(model).__name__} pools its tokens with attention; legrad supports [class]-token "
                             "and average-pooled ViTs")
        tail = [getattr(model, "norm", None), getattr(model, "fc_norm", None), model.head]
    return lambda tokens: _apply(tail, tokens.mean(dim=1))


def _keep_output(store: dict, index: int):
    def hook(module, args, output):
        store[index] = output[0] if isinstance(output, tuple) else output

    return hook


class LeGrad(ViTFlowMethod):
    """``LeGrad(model, last_blocks=None)(x, target=None) -> Explanation``: ``last_blocks`` blocks
    (all when ``None``) are averaged; ``flow`` ``(B, L, H, W)`` holds the running mean over them.
    ``target``: class indices, ``None`` for the predicted class (each block scores that class)."""

    name = "legrad"

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None, last_blocks: int | None = None):
        super().__init__(model, layer)
        depth = len(self.adapter.blocks)
        if last_blocks is not None and (isinstance(last_blocks, bool) or not isinstance(last_blocks, int)
                                        or not 1 <= last_blocks <= depth):
            raise InputError(f"last_blocks must be an integer from 1 to {depth} (the model's blocks), got {last_blocks!r}")
        if is_headless(self.model, self.adapter):
            raise InputError(f"{type(model).__name__} outputs an embedding (no classifier head): legrad scores a class "
                             "at every block and needs the classifier")
        self.start = depth - (last_blocks or depth)
        self.score_tokens = block_scorer(model, self.adapter)

    @property
    def layer(self) -> str:
        return f"{self.adapter.blocks_name}[{self.start}:{len(self.adapter.blocks)}]"

    def compute_terms(self, x: torch.Tensor, target: Target) -> tuple[torch.Tensor, ClassTargets, torch.Tensor]:
        """``(flow_raw (B, L, h, w), targets, logits)``: the running mean of ``E_l`` over the selected blocks."""
        if callable(target) and not torch.is_tensor(target):
            raise InputError("legrad scores a class at every block; give class indices, not a callable target")
        grid = self.adapter.grid(tuple(x.shape[-2:]))
        selected = self.adapter.blocks[self.start:]
        tap, tokens = ValueTap(self.adapter), {}
        hooks = [self.model.get_submodule(b.name).register_forward_hook(_keep_output(tokens, b.index)) for b in selected]
        try:
            with AttentionRecorder(tap, grad=True) as recorder, torch.no_grad():
                output = finite_model_output(self.model(x))
                records = recorder.complete()
                targets = resolve_targets(target, output.detach(), x.shape[0])
                if targets.indices.dim() != 1:
                    raise InputError("legrad explains one class per image; call it once per class")
                maps = [self._block_map(records[b.index], tap.values[b.index], tokens[b.index], targets.indices, grid)
                        for b in selected]
        finally:
            for h in hooks:
                h.remove()
        maps = torch.stack(maps, 1)
        counts = torch.arange(1, maps.shape[1] + 1, device=maps.device, dtype=maps.dtype)
        return maps.cumsum(1) / counts[None, :, None, None], targets, output.detach()

    def _block_map(self, record: BlockRecord, values: torch.Tensor, tokens: torch.Tensor, classes: torch.Tensor,
                   grid: tuple[int, int]) -> torch.Tensor:
        """``E_l`` ``(B, h, w)`` of one block."""
        score = self.score_tokens(tokens).gather(1, classes[:, None])[:, 0]
        if not score.requires_grad:
            raise LayerError("the block scores do not depend on the attention")
        (grad_u,) = torch.autograd.grad(score.sum(), record.u, retain_graph=True)
        relevance = attention_gradient(values, grad_u).clamp_min(0).mean(dim=(1, 2))
        prefix = self.adapter.prefix_tokens(relevance.shape[-1], grid)
        return relevance[:, prefix:].reshape(relevance.shape[0], *grid)

    def flow_explanation(self, x: torch.Tensor, terms) -> Explanation:
        flow_raw, targets, logits = terms
        return flow_result(self.name, self.layer, x, flow_raw, targets, logits, self.adapter)
