"""Referring-segmentation metrics: oIoU (overall / cumulative IoU), mIoU and Pr@{0.5..0.9}.

Conventions follow Global-Local CLIP's ``Compute_IoU``: oIoU = sum(I) / sum(U) over samples,
mIoU = mean of per-sample I/U with IoU 0 for an empty union, Pr@t = fraction with IoU > t.
"""

from __future__ import annotations

import numpy as np

from ..masks import mask_iou

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


class ReferMetrics:
    """Streaming accumulator: ``add(pred, gt)`` per sample, then ``summary()``."""

    def __init__(self, empty: float = 0.0):
        self.empty = empty
        self.ious: list[float] = []
        self.inter = 0
        self.union = 0

    def add(self, pred: np.ndarray, gt: np.ndarray) -> float:
        iou, inter, union = mask_iou(pred, gt, self.empty)
        self.ious.append(iou)
        self.inter += inter
        self.union += union
        return iou

    def summary(self) -> dict:
        ious = np.asarray(self.ious, dtype=np.float64)
        out = {"n": int(ious.size),
               "oIoU": self.inter / self.union if self.union else float(self.empty),
               "mIoU": float(ious.mean()) if ious.size else 0.0}
        for t in THRESHOLDS:
            out[f"Pr@{t}"] = float((ious > t).mean()) if ious.size else 0.0
        return out
