"""Model-randomisation sanity check (Adebayo et al., "Sanity checks for saliency maps", NeurIPS
2018): re-initialise the model's layers one by one from the output towards the input
(cascading), recompute the maps for the same images and targets, and measure the Spearman rank
correlation with the original maps. A method whose maps stay the same (high correlation) does
not depend on what the model learned and fails the check. The model's parameters, buffers,
modes and flags are restored exactly afterwards, also after an error.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row Spearman rank correlation of ``(B, ...)`` tensors (average ranks for ties); NaN
    where a map is constant."""
    def ranks(t):
        t = t.flatten(1).float()
        order = t.argsort(1)
        r = torch.empty_like(t)
        r.scatter_(1, order, torch.arange(t.shape[1], device=t.device, dtype=t.dtype).expand_as(t))
        # average ranks over ties: mean rank within each group of equal values
        out = torch.empty_like(r)
        for i in range(t.shape[0]):
            _, inv, counts = torch.unique(t[i], return_inverse=True, return_counts=True)
            sums = torch.zeros(len(counts), device=t.device, dtype=t.dtype).scatter_add_(0, inv, r[i])
            out[i] = (sums / counts)[inv]
        return out

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    den = ra.norm(dim=1) * rb.norm(dim=1)
    return torch.where(den > 0, (ra * rb).sum(1) / den.clamp_min(1e-30), torch.full_like(den, float("nan")))


def parameter_layers(model: nn.Module) -> list[str]:
    """Names of the modules that hold parameters directly, from the output to the input
    (reverse registration order)."""
    return [name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))][::-1]


def _randomise(module: nn.Module, gen: torch.Generator) -> None:
    for p in module.parameters(recurse=False):
        fan = p[0].numel() if p.ndim > 1 else p.numel()
        std = 1.0 / max(fan, 1) ** 0.5
        p.copy_(torch.randn(p.shape, generator=gen).to(p) * std)


@torch.no_grad()
def _snapshot(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


def model_randomisation(model: nn.Module, explain: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                        x: torch.Tensor, target: torch.Tensor | None = None, layers: list[str] | None = None,
                        seed: int = 0) -> dict:
    """Cascading randomisation. ``explain(x, target) -> maps (B, H, W)`` must use ``model`` (e.g.
    ``lambda x, t: GradCAM(model, "layer3")(x, t).maps``). ``layers``: module names in the order
    to randomise (default :func:`parameter_layers`, top first). The target is the original
    prediction, kept fixed. Returns ``{"layers": names, "correlation": (B, L) tensor}``: row ``i``
    after randomising layers ``0..i`` cumulatively. The model is restored exactly."""
    device = next(model.parameters()).device
    x = x.to(device)
    if target is None:
        with torch.no_grad():
            target = model(x).argmax(1)
    original = explain(x, target).detach()
    layers = parameter_layers(model) if layers is None else list(layers)
    modules = dict(model.named_modules())
    saved = _snapshot(model)
    gen = torch.Generator().manual_seed(seed)
    corr = []
    try:
        for name in layers:
            with torch.no_grad():
                _randomise(modules[name], gen)
            corr.append(spearman(explain(x, target).detach(), original))
    finally:
        with torch.no_grad():
            for k, v in model.state_dict(keep_vars=True).items():
                v.copy_(saved[k])
    return {"layers": layers, "correlation": torch.stack(corr, 1) if corr else torch.empty(x.shape[0], 0)}


def randomisation_score(result: dict) -> torch.Tensor:
    """Per image: the rank correlation with the original after randomising every layer (lower is
    better; a method that ignores the model keeps about 1)."""
    return result["correlation"][:, -1]


def passes(result: dict, threshold: float = 0.5) -> bool:
    """The method passes when the mean fully-randomised correlation is below ``threshold``."""
    return bool(randomisation_score(result).nan_to_num(1.0).mean() < threshold)


__all__ = ["model_randomisation", "parameter_layers", "passes", "randomisation_score", "spearman"]
