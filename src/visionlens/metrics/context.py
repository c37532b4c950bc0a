"""What a metric's ``compute`` is given: one method's maps on one batch, with everything any metric
of the registry may need (the model and the module that scores, the inputs, targets, ground truth
and settings). ``compute(context) -> (B,) tensor`` is the one signature of every metric."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .faithfulness import Confidence


@dataclass
class MetricContext:
    """One method's explanation of one batch, as the metrics see it.

    ``scorer`` runs the forward passes of the perturbation metrics (the model itself, or its
    BatchNorm-folded inference copy); ``module`` is the model itself (randomisation perturbs a copy
    of its weights). Ground truth the data lacks (``masks``, ``boxes``) is None: a metric that
    needs it is not computed. ``ends_cache`` is shared by the methods of one batch (the
    map-independent ends of the softmax deletion/insertion curves); ``shared`` by the metrics of
    one context (one computation behind two metrics, e.g. Average Drop and Increase in Confidence)."""

    module: nn.Module
    scorer: nn.Module
    x: torch.Tensor                                   # (B, 3, H, W) normalised, on the model's device
    maps: torch.Tensor                                # (B, H, W)
    target: torch.Tensor                              # (B,) explained class, or index of the reference
    labels: torch.Tensor                              # (B,) ground-truth labels (-1: unknown), on the CPU
    mean: tuple[float, ...]                           # the model's input normalisation
    std: tuple[float, ...]
    explain_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # (x, target) -> maps
    masks: torch.Tensor | None = None                 # (B, H, W) object masks, on the maps' device
    boxes: torch.Tensor | None = None                 # (B, 4) object boxes, on the maps' device
    step: int | None = None                           # pixels per deletion/insertion step (None: RISE's)
    batch_size: int = 64                              # images per forward pass of the scoring
    confidence: Confidence | None = None              # None: softmax probability of the target
    correct: torch.Tensor | None = None               # (B,) whether the decision was right (None: target == label)
    ends_cache: dict | None = None
    seed: int = 0                                     # the randomisation metric's random weights
    shared: dict = field(default_factory=dict)

    def has(self, need: str) -> bool:
        """Whether this context provides what a metric ``needs`` ("model", "masks", "boxes")."""
        return need == "model" or getattr(self, need, None) is not None

    def once(self, key: str, compute: Callable[[], object]):
        """``compute()`` the first time ``key`` is asked for in this context, its result after that."""
        if key not in self.shared:
            self.shared[key] = compute()
        return self.shared[key]

    @property
    def scoring(self) -> dict:
        """The keyword arguments of the perturbation metrics: confidence and forward-pass batch size."""
        return {"confidence": self.confidence, "batch_size": self.batch_size}
