"""Boxes: tight bounding boxes of boolean masks (shared by the synthetic world and the metrics) and
the pairwise IoU of two sets of boxes (detection targets)."""

from __future__ import annotations

import torch


def pairwise_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of ``(N, 4)`` and ``(M, 4)`` boxes ``x0 y0 x1 y1``: ``(N, M)``."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    area = lambda t: (t[:, 2:] - t[:, :2]).clamp_min(0).prod(-1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return inter / union.clamp_min(1e-12)


def box_of(mask: torch.Tensor) -> torch.Tensor:
    """``(..., H, W)`` bool -> ``(..., 4)`` tight boxes x0 y0 x1 y1 (exclusive end); zeros if empty."""
    h, w = mask.shape[-2:]
    cols, rows = mask.any(-2), mask.any(-1)
    xs, ys = torch.arange(w, device=mask.device), torch.arange(h, device=mask.device)
    x0 = torch.where(cols, xs, w).min(-1).values
    x1 = torch.where(cols, xs, -1).max(-1).values + 1
    y0 = torch.where(rows, ys, h).min(-1).values
    y1 = torch.where(rows, ys, -1).max(-1).values + 1
    box = torch.stack([x0, y0, x1, y1], -1).float()
    return torch.where(cols.any(-1, keepdim=True), box, torch.zeros_like(box))
