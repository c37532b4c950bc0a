"""Box and keypoint similarities shared by the criterion (``losses``) and the matcher."""

from __future__ import annotations

import torch

from .metrics import COCO_SIGMAS


def box_cxcywh_to_xyxy(b):
    """(cx, cy, w, h) boxes to (x0, y0, x1, y1)."""
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def generalized_iou(a, b):
    """Element-wise GIoU of broadcastable xyxy boxes."""
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    lt, rb = torch.max(a[..., :2], b[..., :2]), torch.min(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    iou = inter / union.clamp(min=1e-7)
    lt2, rb2 = torch.min(a[..., :2], b[..., :2]), torch.max(a[..., 2:], b[..., 2:])
    hull = (rb2 - lt2).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-7)


def oks_similarity(pred, gt, visible, area):
    """OKS (COCO formula) of normalised keypoints; ``area`` normalised the same way (pixels / S^2)."""
    var = torch.as_tensor((2 * COCO_SIGMAS) ** 2, dtype=pred.dtype, device=pred.device)
    e = ((pred - gt) ** 2).sum(-1) / var / (area[..., None] + 1e-9) / 2
    return (torch.exp(-e) * visible).sum(-1) / visible.sum(-1).clamp(min=1)
