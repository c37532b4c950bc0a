"""What to explain: a class per sample, one class for the whole batch, the argmax, or a callable
that turns the model output into one score per sample."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch

from ..errors import InputError

Target = Union[None, int, Sequence[int], torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]


@dataclass
class ClassTargets:
    """Resolved targets: ``indices`` (``(B,)`` long, or ``None`` for a callable) and ``scores``
    (``(B,)``, the quantity the explanation is about)."""

    indices: torch.Tensor | None
    scores: torch.Tensor


def _class_logits(output: torch.Tensor) -> torch.Tensor:
    if not torch.is_tensor(output) or output.dim() != 2:
        shape = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
        raise InputError(
            f"class targets need a model output of shape (B, num_classes), got {shape}; pass a callable target"
        )
    return output


def resolve_targets(target: Target, output: torch.Tensor, batch_size: int) -> ClassTargets:
    """Validate ``target`` against the model ``output`` and return indices and scores.

    A list or tensor must have exactly one entry per sample (never silently truncated or
    broadcast); one integer is broadcast to the whole batch; ``None`` means the predicted class.
    A ``(B, K)`` list or tensor asks for ``K`` classes per image (indices and scores ``(B, K)``).
    """
    if callable(target) and not torch.is_tensor(target):
        scores = target(output)
        if not torch.is_tensor(scores) or scores.shape != (batch_size,):
            shape = tuple(scores.shape) if torch.is_tensor(scores) else type(scores).__name__
            raise InputError(f"a callable target must return one score per sample, shape ({batch_size},), got {shape}")
        return ClassTargets(None, scores)
    logits = _class_logits(output)
    num_classes = logits.shape[1]
    if target is None:
        indices = logits.argmax(dim=1)
    elif isinstance(target, bool):
        raise InputError(f"target must be a class index, a list of indices or a callable, got {target!r}")
    elif isinstance(target, int) or (torch.is_tensor(target) and target.dim() == 0):
        if not 0 <= int(target) < num_classes:
            raise InputError(f"target class {int(target)} is out of range for a model with {num_classes} classes")
        indices = torch.full((batch_size,), int(target), dtype=torch.long, device=logits.device)
    else:
        try:
            indices = torch.as_tensor(list(target) if not torch.is_tensor(target) else target)
        except (TypeError, ValueError, RuntimeError):
            raise InputError(f"target must be a class index, a list of indices or a callable, got {target!r}") from None
        if indices.dim() not in (1, 2) or indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise InputError(f"target indices must be a 1-D list of integers, got {tuple(indices.shape)} {indices.dtype}")
        if indices.shape[0] != batch_size or indices.numel() == 0:
            raise InputError(
                f"got {indices.shape[0]} targets for a batch of {batch_size} images; give one class per image "
                "(or a row of classes per image) or a single int"
            )
        bad = (indices < 0) | (indices >= num_classes)  # checked where the indices are (a CPU list: no device sync)
        if bool(bad.any()):
            raise InputError(f"target class {int(indices[bad][0])} is out of range for a model with {num_classes} classes")
        indices = indices.to(device=logits.device, dtype=torch.long)
    if indices.dim() == 2:  # several classes per image: (B, K) indices and scores
        return ClassTargets(indices, logits.gather(1, indices))
    scores = logits.gather(1, indices[:, None])[:, 0]
    return ClassTargets(indices, scores)
