"""Change-map rendering: ground truth | prediction | errors, as one PIL image."""

from __future__ import annotations

import numpy as np
from PIL import Image

from .data import CHANGED, UNKNOWN


def change_map_image(pred: np.ndarray, labels: np.ndarray, min_side: int = 240) -> Image.Image:
    """White = changed, black = unchanged, grey = unknown; errors: red = false alarm, green = missed."""
    truth = np.where(labels == CHANGED, 255, 0).astype(np.uint8)
    truth = np.stack([truth] * 3, -1)
    truth[labels == UNKNOWN] = 128
    shown = np.stack([np.where(pred == CHANGED, 255, 0).astype(np.uint8)] * 3, -1)
    errors = shown.copy()
    known = labels != UNKNOWN
    errors[known & (pred == CHANGED) & (labels != CHANGED)] = (220, 40, 40)
    errors[known & (pred != CHANGED) & (labels == CHANGED)] = (40, 200, 40)
    errors[~known] = 128
    gap = np.full((labels.shape[0], 4, 3), 96, dtype=np.uint8)
    panel = np.concatenate([truth, gap, shown, gap, errors], axis=1)
    scale = max(1, -(-min_side // min(labels.shape)))
    return Image.fromarray(panel).resize((panel.shape[1] * scale, panel.shape[0] * scale), Image.NEAREST)
