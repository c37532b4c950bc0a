"""Tight bounding boxes of boolean masks (shared by the synthetic world and the metrics)."""

from __future__ import annotations

import torch


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
