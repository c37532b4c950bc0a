"""Change-detection scores: overall accuracy, Cohen's kappa and average (per-class) accuracy."""

from __future__ import annotations

import numpy as np

from visionlens.errors import InputError


def confusion(y_true, y_pred, classes: int = 2) -> np.ndarray:
    """``(classes, classes)`` counts, rows = truth, columns = prediction."""
    y_true, y_pred = np.asarray(y_true).ravel().astype(np.int64), np.asarray(y_pred).ravel().astype(np.int64)
    if y_true.shape != y_pred.shape or y_true.size == 0:
        raise InputError(f"need equally long, non-empty label vectors, got {y_true.size} and {y_pred.size}")
    if y_true.min() < 0 or y_pred.min() < 0 or max(y_true.max(), y_pred.max()) >= classes:
        raise InputError(f"labels must be in 0..{classes - 1} (drop unknown pixels first)")
    return np.bincount(y_true * classes + y_pred, minlength=classes * classes).reshape(classes, classes)


def scores(y_true, y_pred) -> dict:
    """``{"oa", "kappa", "aa"}``; kappa = (p_o - p_e) / (1 - p_e) with the usual chance agreement."""
    cm = confusion(y_true, y_pred).astype(np.float64)
    total = cm.sum()
    oa = np.trace(cm) / total
    pe = (cm.sum(0) * cm.sum(1)).sum() / total ** 2
    kappa = 0.0 if pe == 1 else (oa - pe) / (1 - pe)
    rows = cm.sum(1)
    aa = np.mean(np.diag(cm)[rows > 0] / rows[rows > 0])
    return {"oa": float(oa), "kappa": float(kappa), "aa": float(aa)}


def boundary_mask(labels: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels within ``width`` (chessboard distance) of a pixel with a different known label."""
    padded = np.pad(labels, width, mode="edge")
    h, w = labels.shape
    near = np.zeros((h, w), dtype=bool)
    for dy in range(2 * width + 1):
        for dx in range(2 * width + 1):
            other = padded[dy:dy + h, dx:dx + w]
            near |= (other != labels) & (other >= 0) & (labels >= 0)
    return near
