"""Heat-map overlays in numpy + PIL (no matplotlib needed)."""

from __future__ import annotations


import numpy as np
from PIL import Image


def jet(values: np.ndarray) -> np.ndarray:
    """The classic JET colormap: ``(H, W)`` in [0, 1] -> ``(H, W, 3)`` uint8 (blue low, red high)."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4.0 * v - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * v - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * v - 1.0), 0.0, 1.0)
    return np.round(np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def overlay(image: Image.Image, saliency: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """Blend ``jet(saliency)`` over ``image`` (resized to the map's size if they differ)."""
    saliency = np.asarray(saliency, dtype=np.float32)
    if saliency.ndim != 2:
        raise ValueError(f"saliency must be (H, W), got {saliency.shape}")
    h, w = saliency.shape
    base = np.asarray(image.convert("RGB").resize((w, h), Image.BILINEAR) if image.size != (w, h) else image.convert("RGB"), dtype=np.float32)
    mixed = (1.0 - alpha) * base + alpha * jet(saliency).astype(np.float32)
    return Image.fromarray(np.clip(np.round(mixed), 0, 255).astype(np.uint8))


