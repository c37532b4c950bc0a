"""LGD's three region-text scores and their fusion, as pure functions on unit feature tensors.

For masks m with global-context features f_G and local features f_L (unit vectors):
f_m = normalise(a * f_G + (1 - a) * f_L); S_x(m) = cos(feature_x(m), t_x) for x in
{van, att, sur}; S = S_van + alpha * S_att + beta * S_sur; the answer is argmax S (ties: lowest
index). Which feature pairs with which text is configurable (default van/att -> fused, sur ->
global: the surrounding sentence describes context).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from visionlens.checks import check_number
from visionlens.errors import InputError

FEATURES = ("fused", "global", "local")
TERMS = ("van", "att", "sur")


@dataclass(frozen=True)
class LGDConfig:
    """Fusion weights and ablation switches. ``alpha`` / ``beta`` weight S_att / S_sur;
    ``use_att`` / ``use_sur`` switch the terms off (and skip their MLLM calls); ``mix`` is a,
    the global share of the fused region feature; ``pairing`` maps each term to a feature;
    ``logit_scale`` multiplies every cosine (CLIP uses 100; it does not change the argmax)."""

    alpha: float = 0.5
    beta: float = 0.5
    use_att: bool = True
    use_sur: bool = True
    mix: float = 0.5
    pairing: dict = field(default_factory=lambda: {"van": "fused", "att": "fused", "sur": "global"})
    logit_scale: float = 1.0

    def __post_init__(self):
        check_number("alpha", self.alpha, minimum=0)
        check_number("beta", self.beta, minimum=0)
        check_number("mix", self.mix, minimum=0, maximum=1)
        check_number("logit_scale", self.logit_scale, above=0)

    def with_(self, **changes) -> "LGDConfig":
        return replace(self, **changes)

    @classmethod
    def ablation(cls, name: str, alpha: float = 0.5, beta: float = 0.5, **kw) -> "LGDConfig":
        """``vanilla``, ``+attribute``, ``+surrounding`` or ``all``."""
        table = {"vanilla": (False, False), "+attribute": (True, False), "+surrounding": (False, True), "all": (True, True)}
        if name not in table:
            raise InputError(f"unknown ablation {name!r}; choose from {', '.join(table)}")
        att, sur = table[name]
        return cls(alpha=alpha, beta=beta, use_att=att, use_sur=sur, **kw)


def region_features(f_global: torch.Tensor, f_local: torch.Tensor, mix: float) -> dict[str, torch.Tensor]:
    """``{"global", "local", "fused"}`` unit features, (N, D) each."""
    if f_global.shape != f_local.shape:
        raise InputError(f"global {tuple(f_global.shape)} and local {tuple(f_local.shape)} features differ in shape")
    fused = F.normalize(mix * F.normalize(f_global, dim=-1) + (1 - mix) * F.normalize(f_local, dim=-1), dim=-1)
    return {"global": F.normalize(f_global, dim=-1), "local": F.normalize(f_local, dim=-1), "fused": fused}


def term_scores(features: dict[str, torch.Tensor], texts: dict[str, torch.Tensor | None], config: LGDConfig) -> dict[str, torch.Tensor]:
    """``S_van``, ``S_att``, ``S_sur`` (N,) each; a missing text (None) gives zeros."""
    n = next(iter(features.values())).shape[0]
    out = {}
    for term in TERMS:
        feat = config.pairing.get(term, "fused")
        if feat not in FEATURES:
            raise InputError(f"pairing for {term!r} must be one of {', '.join(FEATURES)}, got {feat!r}")
        t = texts.get(term)
        out[term] = torch.zeros(n) if t is None else config.logit_scale * (features[feat] @ t.reshape(-1))
    return out


def fuse(scores: dict[str, torch.Tensor], config: LGDConfig) -> torch.Tensor:
    """S = S_van + alpha * S_att + beta * S_sur (switched-off terms contribute nothing)."""
    total = scores["van"].clone()
    if config.use_att:
        total = total + config.alpha * scores["att"]
    if config.use_sur:
        total = total + config.beta * scores["sur"]
    return total


def select(total: torch.Tensor) -> int:
    """Index of the best mask; ties go to the lowest index."""
    if total.numel() == 0:
        raise InputError("no mask proposals to choose from")
    best = total.max()
    return int(torch.nonzero(total == best)[0, 0])
