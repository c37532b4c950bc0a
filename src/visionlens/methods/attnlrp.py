"""AttnLRP: attention-aware layer-wise relevance propagation for transformers (Achtibat et al., ICML 2024).

"AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for Transformers": the target logit's
relevance propagated through every block of a ViT.

Rules (:mod:`visionlens.lrp.attention`): epsilon-LRP on linear layers, the identity rule on
elementwise activations and on LayerNorm's normalisation (its standard deviation a constant), the
uniform rule on ``Q K^T`` and ``A V`` and the linearisation rule on the softmax; relevance starts
at the target logit. The map is the relevance ``R = z * g`` at the patch embeddings ``z`` (the
patch convolution's output) summed over channels (``at="patches"``), or at the input pixels summed
over colour channels (``at="pixels"``). ``raw`` keeps the signed relevance; ``maps`` its positive
part, bilinear-resized and min-max normalised. ``variant="cp"`` keeps the attention constant
(CP-LRP, Ali et al., ICML 2022, as ``lxt`` does for torchvision ViTs).
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.result import Explanation, normalize_maps
from ..core.targets import ClassTargets, Target, resolve_targets
from ..core.vit import finite_model_output, is_headless
from ..errors import InputError, LayerError
from ..lrp.attention import VARIANTS, AttnLRPRules
from .base import ViTFlowMethod

PLACES = ("patches", "pixels")


def _capture(store: dict, leaf: bool):
    """Forward hook keeping a module's output (as a fresh leaf when ``leaf``, so nothing before it is recorded)."""
    def hook(module, args, output):
        if leaf:
            output = output.detach().requires_grad_(True)
        store["z"] = output
        return output if leaf else None

    return hook


class AttnLRP(ViTFlowMethod):
    """``AttnLRP(model, at="patches", variant="attnlrp")(x, target=None) -> Explanation``.
    ``target``: class indices (``None``: the predicted class) or a callable scoring the model output.
    ``raw``: signed relevance ``(B, h, w)`` (patch grid) or ``(B, H, W)`` (pixels); no ``flow``."""

    name = "attnlrp"

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None, at: str = "patches",
                 variant: str = "attnlrp"):
        super().__init__(model, layer)
        if at not in PLACES:
            raise InputError(f"at must be one of {', '.join(PLACES)}, got {at!r}")
        if variant not in VARIANTS:
            raise InputError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        self.at, self.variant = at, variant
        self.headless = is_headless(self.model, self.adapter)

    @property
    def layer(self) -> str:
        return "input" if self.at == "pixels" else self.adapter.blocks_name + f"[0:{len(self.adapter.blocks)}]"

    def compute_terms(self, x: torch.Tensor, target: Target) -> tuple[torch.Tensor, ClassTargets, torch.Tensor]:
        """``(relevance, targets, logits)``: the signed relevance map ``(B, h, w)`` or ``(B, H, W)``."""
        if self.headless and not callable(target):
            raise InputError(f"{type(self.model).__name__} outputs an embedding (no classifier head): give attnlrp a "
                             "callable target that turns the embedding into one score per image")
        pixels = self.at == "pixels"
        store: dict = {}
        handle = self.adapter.patch_embed.register_forward_hook(_capture(store, leaf=not pixels))
        try:
            with AttnLRPRules(self.adapter, self.variant), torch.enable_grad():
                inputs = x.detach().requires_grad_(True) if pixels else x
                output = finite_model_output(self.model(inputs))
                targets = resolve_targets(target, output, x.shape[0])
                if targets.scores.dim() != 1:
                    raise InputError("attnlrp explains one score per image; call it once per class")
                if not targets.scores.requires_grad:
                    raise LayerError("the target score does not depend on the patch embeddings")
                start = inputs if pixels else store["z"]
                (grad,) = torch.autograd.grad(targets.scores.sum(), start)
        finally:
            handle.remove()
        relevance = (start.detach() * grad).sum(1)
        return relevance, ClassTargets(targets.indices, targets.scores.detach()), output.detach()

    def flow_explanation(self, x: torch.Tensor, terms) -> Explanation:
        relevance, targets, logits = terms
        normalize = normalize_maps if self.at == "pixels" else self.adapter.normalize
        maps = normalize(relevance, x.shape[-2:], relu=True)
        indices = targets.indices.detach() if targets.indices is not None else None
        return Explanation(maps=maps, raw=relevance, targets=indices, scores=targets.scores, logits=logits,
                           method=self.name, layer=self.layer)
