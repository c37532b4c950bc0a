"""The result every method returns, and the standard post-processing ``P(M)``."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F

def normalize_maps(raw: torch.Tensor, size: tuple[int, int], relu: bool = True) -> torch.Tensor:
    """ReLU (optional), bilinear resize to ``size`` (half-pixel centres, as cv2.INTER_LINEAR),
    then min-max per image to [0, 1] (a constant map becomes all zeros). ``raw`` is ``(B, h, w)``; returns ``(B, H, W)`` float32.

    Resizing before the min-max equals pytorch-grad-cam's min-max, resize, min-max, since bilinear
    interpolation commutes with affine maps; the result spans exactly [0, 1] (all-zero stays zero).
    Whether a map is constant is decided before the resize (to 1e-6 of its magnitude), whose
    rounding would otherwise stretch into a map of noise.
    """
    maps = raw.float()
    if relu:
        maps = maps.clamp_min(0)
    constant = constant_maps(maps)
    maps = F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    flat = maps.flatten(1)
    low = flat.min(dim=1).values[:, None, None]
    maps = maps - low
    high = maps.flatten(1).max(dim=1).values[:, None, None]
    high = torch.where(constant[:, None, None], torch.zeros_like(high), high)
    return torch.where(high > 0, maps / torch.where(high > 0, high, torch.ones_like(high)), torch.zeros_like(maps))


def constant_maps(maps: torch.Tensor) -> torch.Tensor:
    """Per map of ``(..., h, w)`` (flattened over the leading dimensions): whether it is constant to
    1e-6 of its largest magnitude."""
    flat = maps.detach().float().flatten(-2).flatten(0, -2)
    high, low = flat.amax(dim=1), flat.amin(dim=1)
    return (high - low) <= 1e-6 * torch.maximum(high.abs(), low.abs())


@dataclass
class Explanation:
    """Maps for a batch, kept on the model's device.

    ``maps``: ``(B, H, W)`` in [0, 1] at input resolution. ``raw``: ``(B, h, w)`` signed map at the
    layer's resolution (before ReLU and normalisation). ``targets``: explained class per image
    (``None`` for a callable target). ``scores``: the explained score (logit). ``logits``: the
    model output. Flows (DAAM, rollout) carry one map per block: ``flow`` ``(B, L, H, W)`` in
    [0, 1] at input resolution (``maps`` is its last block) and ``flow_raw`` ``(B, L, h, w)``, the
    accumulated maps before normalisation; ``None`` for single-layer methods. ``flow_layers``
    names the layer of each flow map where a method reports it (NAFlow, whose per-layer raw maps
    differ in resolution and so leave ``flow_raw`` as ``None``).
    """

    maps: torch.Tensor
    raw: torch.Tensor
    targets: torch.Tensor | None
    scores: torch.Tensor
    logits: torch.Tensor
    method: str
    layer: str
    flow: torch.Tensor | None = None
    flow_raw: torch.Tensor | None = None
    flow_layers: tuple[str, ...] | None = None
    per_batch: ClassVar[tuple[str, ...]] = ()  # non-tensor fields that hold one entry per batch (see :meth:`cat`)

    def __len__(self) -> int:
        return self.maps.shape[0]

    @property
    def probabilities(self) -> torch.Tensor:
        """Softmax over the model output, ``(B, C)``."""
        return self.logits.float().softmax(dim=1)

    @property
    def predictions(self) -> torch.Tensor:
        """Predicted class per image (argmax of the model output)."""
        return self.logits.argmax(dim=1)

    @staticmethod
    def cat(parts: "Sequence[Explanation]") -> "Explanation":
        """One result of the results of consecutive batches (one method): their tensors joined
        along the batch, the fields named in ``per_batch`` (e.g. NAFlow's solver reports) joined too."""
        first = parts[0]
        if len(parts) == 1:
            return first
        joined = {f.name: torch.cat([getattr(p, f.name) for p in parts]) for f in fields(first)
                  if torch.is_tensor(getattr(first, f.name))}
        joined |= {name: sum((tuple(getattr(p, name)) for p in parts), ()) for name in first.per_batch}
        return replace(first, **joined)

    def to(self, device: str | torch.device) -> "Explanation":
        """The same result (of the same type, every field kept) with its tensors on ``device``."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self) if torch.is_tensor(getattr(self, f.name))}
        return replace(self, **moved)
