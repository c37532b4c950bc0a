"""A contact sheet of world samples with their ground truth, for a person to look at."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

# one display colour per part slot and for distractors
_SLOT_TINTS = np.array([(255, 0, 0), (0, 90, 255), (0, 200, 0), (255, 200, 0)], dtype=np.float32)


def _tile(image: torch.Tensor) -> np.ndarray:
    return (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def contact_sheet(batch: dict, class_names: list[str], columns: int = 4, scale: int = 2) -> Image.Image:
    """Per sample: the image, its part masks (one tint per part), object (white) + distractor
    (grey) masks with distractor boxes; the label under each row of tiles."""
    n, _, h, w = batch["image"].shape
    tw, th = w * scale, h * scale
    cell_w, cell_h = 3 * tw + 8, th + 16
    rows = (n + columns - 1) // columns
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        img = _tile(batch["image"][i])
        parts = np.zeros((h, w, 3), dtype=np.float32)
        for k in range(batch["part_masks"].shape[1]):
            parts[batch["part_masks"][i, k].numpy()] = _SLOT_TINTS[k]
        truth = np.zeros((h, w, 3), dtype=np.uint8)
        truth[batch["object_mask"][i].numpy()] = 255
        truth[batch["distractor_masks"][i].any(0).numpy()] = 110
        x0, y0 = (i % columns) * cell_w, (i // columns) * cell_h
        for j, tile in enumerate([img, parts.astype(np.uint8), truth]):
            sheet.paste(Image.fromarray(tile).resize((tw, th), Image.NEAREST), (x0 + j * tw, y0))
        for k in range(batch["distractor_boxes"].shape[1]):
            if bool(batch["distractor_valid"][i, k]) and float(batch["distractor_boxes"][i, k, 2]) > 0:
                bx0, by0, bx1, by1 = (batch["distractor_boxes"][i, k] * scale).tolist()
                draw.rectangle([x0 + 2 * tw + bx0, y0 + by0, x0 + 2 * tw + bx1 - 1, y0 + by1 - 1], outline=(255, 80, 80))
        label = int(batch["label"][i])
        draw.text((x0 + 2, y0 + th + 2), f"{label}: {class_names[label]}", fill=(0, 0, 0))
    return sheet
