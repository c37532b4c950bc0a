"""Prediction overlay: the mask tinted over the image, the COCO skeleton and the keypoints, and the
prompt (point/scribble) drawn as white-ringed dots."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .data import SKELETON


def draw_overlay(image: np.ndarray, keypoints: np.ndarray, mask: np.ndarray, prompt_points=None, scale: int = 1) -> Image.Image:
    base = image.astype(np.float32)
    tint = np.array([40, 220, 255], np.float32)
    base[mask] = 0.5 * base[mask] + 0.5 * tint
    img = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(img)
    kp = np.asarray(keypoints)[:, :2] * scale + (scale - 1) / 2
    for a, b in SKELETON:
        draw.line([tuple(kp[a]), tuple(kp[b])], fill=(255, 60, 160), width=max(1, scale // 2))
    r = max(1.5, scale * 0.8)
    for x, y in kp:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=(255, 255, 0))
    for x, y in (np.asarray(prompt_points) * scale + (scale - 1) / 2 if prompt_points is not None else []):
        draw.ellipse([x - r - 1, y - r - 1, x + r + 1, y + r + 1], outline=(255, 255, 255), fill=(255, 0, 0))
    return img
