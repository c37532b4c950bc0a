"""DAAM (Liao et al., arXiv:2503.14640, Pattern Recognition 2025): the dynamic accumulated
attention map, an attention flow from the first ViT block to the last.

Per block ``b`` (``U`` = input of ``attn.proj``, ``A^h`` = attention, ``V^h`` = values):

* decomposition of the [class] row: ``U_0 = sum_j F_j``, ``F_j[h*d + t] = A^h_{0j} V^h_{jt}``;
  the patch tokens ``j`` give a ``C x h x w`` feature map ``F^(b)``;
* channel coefficients ``g^(b) = dy/dU^(b)_0``: supervised, ``y`` = the class logit and only
  ``max(g, 0)`` is kept; self-supervised, ``y = w . q`` with ``q`` the [class] embedding and
  ``w`` DINO-style dimension-wise weights from the k-NN memory bank (``k = 20``, ``T = 0.07``:
  ``m_d = mean_{n in S} q^_d n_d`` over the top-k neighbours ``S`` of the voted class,
  ``w = minmax(m / |sum_d m_d|)``), no clamp;
* block map ``M_b = ReLU(sum_c g^(b)_c F^(b)_c)``; accumulation ``S_i = sum_{b <= i} M_b``;
* display: non-linear ``minmax(sigmoid(5 S_i / max S_L) - 0.5)`` (default) or linear
  ``max(0, (S_i - min S_L) / (max S_i - min S_L)) * (max S_i - min S_i) / (max S_L - min S_L)``,
  at the patch grid, then bilinear to the input size.

Follows ``ly9802/DynamicAccumulatedAttentionMap`` (``utils/DAAM.py``, ``utils/SelfSupervisedViT_DAAM.py``,
``DINO_DAAM_Visualization_oneSample.py``), but batched (the reference sums the maps of a batch),
float throughout (no uint8 frames) and with every prefix token dropped from a possibly
non-square grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checks import check_number
from ..core.memory_bank import MemoryBank, knn_vote
from ..core.result import Explanation
from ..core.targets import ClassTargets, Target, resolve_targets
from ..core.vit import AttentionRecorder, finite_model_output, is_headless
from ..errors import InputError, LayerError
from .base import ViTFlowMethod

_EPS = 1e-10


@dataclass
class DAAMTerms:
    """The per-block quantities behind a DAAM flow (batch first): ``features`` ``(B, L, C, h, w)``
    (the decomposed [class] row at the patch tokens), ``gradients`` ``(B, L, C)`` (``dy/dU_0``
    as returned by autograd, before any clamp), ``coefficients`` (what weights the channels),
    ``block_maps`` ``(B, L, h, w)`` and ``accumulated`` ``(B, L, h, w)`` (``S_i``)."""

    features: torch.Tensor
    gradients: torch.Tensor
    coefficients: torch.Tensor
    block_maps: torch.Tensor
    accumulated: torch.Tensor
    targets: ClassTargets
    logits: torch.Tensor
    weights: torch.Tensor | None


def _minmax(t: torch.Tensor, dims) -> torch.Tensor:
    low = t.amin(dim=dims, keepdim=True)
    span = t.amax(dim=dims, keepdim=True) - low
    return torch.where(span > 0, (t - low) / span.clamp_min(_EPS), torch.zeros_like(t))


def dimension_weights(q: torch.Tensor, bank: MemoryBank, k: int = 20, temperature: float = 0.07,
                      target: Target = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Self-supervised DAAM weights: ``(w, classes, votes)`` for embeddings ``q`` ``(B, D)``.

    The class is the k-NN vote (or ``target``); ``S`` are the top-k neighbours with that label
    (for a given target: the k nearest bank entries of that class); ``m = mean_S q^ * n``,
    ``w = m / |sum m|`` min-max normalised per image to [0, 1] (all ones if constant)."""
    votes, _, idx = knn_vote(q, bank, k, temperature)
    proportions = votes / votes.sum(1, keepdim=True)
    if callable(target) and not torch.is_tensor(target):
        raise InputError("self-supervised DAAM explains a k-NN class; give a class index, not a callable")
    classes = resolve_targets(target, proportions, q.shape[0]).indices
    if classes.dim() != 1:
        raise InputError("daam explains one class per image; call it once per class")
    feats = bank.features.to(q.device)
    labels = bank.labels.to(q.device)
    qn = F.normalize(q.float(), dim=1)
    if target is not None:  # the k nearest bank entries of the requested class
        sims = (qn @ feats.t()).masked_fill(labels[None] != classes[:, None], -float("inf"))
        idx = sims.topk(min(k, len(bank)), dim=1).indices
    mask = (labels[idx] == classes[:, None]).float()  # (B, k)
    if bool((mask.sum(1) == 0).any()):
        raise InputError("the memory bank has no entry of the requested class; rebuild it with that class")
    neighbours = feats[idx]  # (B, k, D)
    m = (qn[:, None, :] * neighbours * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    total = m.sum(1, keepdim=True)
    w = torch.where(total != 0, m / total.abs().clamp_min(_EPS), m)
    low, high = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    w = torch.where(high > low, (w - low) / (high - low).clamp_min(_EPS), torch.ones_like(w))
    return w, classes, votes


def accumulate(block_maps: torch.Tensor) -> torch.Tensor:
    """``S_i = sum_{b <= i} M_b`` along dim 1 of ``(B, L, h, w)`` block maps."""
    return block_maps.cumsum(dim=1)


def display_maps(acc: torch.Tensor, nonlinear: bool = True, alpha: float = 5.0) -> torch.Tensor:
    """DAAM's mapping of accumulated maps ``(B, L, h, w)`` to [0, 1] (see the module docstring)."""
    last = acc[:, -1:]
    if nonlinear:
        g = last.amax(dim=(2, 3), keepdim=True)
        z = torch.sigmoid(alpha * acc / torch.where(g > 0, g, torch.ones_like(g))) - 0.5
        return _minmax(z, (2, 3))
    gmin, gmax = last.amin(dim=(2, 3), keepdim=True), last.amax(dim=(2, 3), keepdim=True)
    cmin, cmax = acc.amin(dim=(2, 3), keepdim=True), acc.amax(dim=(2, 3), keepdim=True)
    img = ((acc - gmin) / (cmax - gmin + _EPS)).clamp_min(0)
    ratio = (cmax - cmin) / torch.where(gmax > gmin, gmax - gmin, torch.ones_like(gmax))
    return (img * ratio).clamp(0, 1)


class DAAM(ViTFlowMethod):
    """``DAAM(model, bank=None)(x, target=None) -> Explanation`` with ``flow`` ``(B, L, H, W)``.

    ``mode``: ``"supervised"`` (class logit), ``"self-supervised"`` (k-NN memory ``bank``: a
    :class:`MemoryBank` or a file written by ``visionlens bank``) or ``"auto"`` (self-supervised
    when a bank is given). ``nonlinear`` picks the display mapping; ``block_norm`` min-max
    normalises each block map before accumulation (the reference's ``--norm``, off by default).
    ``alpha`` (> 0) is the non-linear display's sigmoid slope (5 in the paper). ``layer`` may name the block
    container (e.g. ``blocks``); DAAM always uses every block.
    """

    name = "daam"
    uses_bank = True
    reads_class_row = True

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None, bank: MemoryBank | str | Path | None = None,
                 mode: str = "auto", k: int = 20, temperature: float = 0.07, nonlinear: bool = True, alpha: float = 5.0,
                 block_norm: bool = False):
        super().__init__(model, layer)
        if mode not in ("auto", "supervised", "self-supervised"):
            raise InputError(f"mode must be 'auto', 'supervised' or 'self-supervised', got {mode!r}")
        self.bank = MemoryBank.load(bank) if isinstance(bank, (str, Path)) else bank
        self.mode = mode if mode != "auto" else ("self-supervised" if self.bank is not None else "supervised")
        if self.mode == "self-supervised" and self.bank is None:
            raise InputError("self-supervised DAAM needs a k-NN memory bank: build one with "
                             "`visionlens bank --model MODEL --out bank.pt` and pass bank='bank.pt' (CLI: --bank bank.pt)")
        if self.mode == "supervised" and is_headless(self.model, self.adapter):
            raise InputError(f"{type(model).__name__} outputs an embedding (no classifier head): DAAM needs a k-NN memory "
                             "bank for it; build one with `visionlens bank --model MODEL --out bank.pt` and pass --bank bank.pt")
        alpha = check_number("alpha", alpha, above=0)
        self.k, self.temperature, self.nonlinear, self.alpha, self.block_norm = k, temperature, nonlinear, alpha, block_norm

    def compute_terms(self, x: torch.Tensor, target: Target) -> DAAMTerms:
        """Run the model once forward and once backward and return the per-block terms."""
        grid = self.adapter.grid(tuple(x.shape[-2:]))
        with AttentionRecorder(self.adapter, grad=True) as recorder, torch.no_grad():
            output = finite_model_output(self.model(x))
            records = recorder.complete()
            if self.mode == "supervised":
                targets = resolve_targets(target, output, x.shape[0])
                if targets.scores.dim() != 1:  # summed, K classes would give one map of their total
                    raise InputError("daam explains one class per image; call it once per class")
                score, weights, logits = targets.scores, None, output.detach()
            else:
                weights, classes, votes = dimension_weights(output.detach(), self.bank, self.k, self.temperature, target)
                score = (output * weights.to(output.dtype)).sum(1)  # q.backward(gradient=w)
                targets = ClassTargets(classes, score)
                logits = (votes / votes.sum(1, keepdim=True)).clamp_min(1e-12).log()
            if not score.requires_grad:
                raise LayerError("the target score does not depend on the attention blocks")
            grads = torch.autograd.grad(score.sum(), [r.u for r in records], allow_unused=True)
        if any(g is None for g in grads):
            raise LayerError("the model output does not depend on every block's [class] token")
        gradients = torch.stack([g[:, 0] for g in grads], dim=1).detach().float()  # (B, L, C)
        coefficients = gradients.clamp_min(0) if self.mode == "supervised" else gradients
        features = torch.stack([self.adapter.tokens_to_grid(r.features, grid) for r in records], dim=1).float()
        block_maps = torch.einsum("blc,blchw->blhw", coefficients, features).clamp_min(0)
        if self.block_norm:
            block_maps = _minmax(block_maps, (2, 3))
        scores = targets.scores.detach()
        targets = ClassTargets(targets.indices, scores)
        return DAAMTerms(features, gradients, coefficients, block_maps, accumulate(block_maps), targets, logits, weights)

    def flow_explanation(self, x: torch.Tensor, t: DAAMTerms) -> Explanation:
        flow = display_maps(t.accumulated, self.nonlinear, self.alpha)
        flow = self.adapter.resize(flow, tuple(x.shape[-2:])).clamp(0, 1)
        return Explanation(
            maps=flow[:, -1], raw=t.accumulated[:, -1], targets=t.targets.indices, scores=t.targets.scores,
            logits=t.logits, method=self.name, layer=self.layer, flow=flow, flow_raw=t.accumulated,
        )
