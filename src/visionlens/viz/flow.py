"""Attention-flow visuals (DAAM, rollout): a strip with one overlay per block and an animated GIF."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .overlay import overlay
from ..io import save_atomic


def _frames(view: Image.Image, flow: np.ndarray, panel: int, cmap: str | None = None) -> list[Image.Image]:
    flow = np.asarray(flow, dtype=np.float32)
    if flow.ndim != 3:
        raise ValueError(f"flow must be (L, H, W), got {flow.shape}")
    h, w = flow.shape[1:]
    scale = max(1.0, panel / max(h, w))
    size = (round(w * scale), round(h * scale))
    return [overlay(view, m, cmap=cmap).resize(size, Image.BILINEAR) for m in flow]


def flow_strip(view: Image.Image, flow: np.ndarray, panel: int = 128, labels: list[str] | None = None,
               cmap: str | None = None) -> Image.Image:
    """One overlay per block, left to right, each labelled (``block 1`` ... by default); panels
    are at least ``panel`` pixels on their long side."""
    frames = _frames(view, flow, panel, cmap)
    labels = labels or [f"block {i + 1}" for i in range(len(frames))]
    fw, fh = frames[0].size
    strip = Image.new("RGB", (len(frames) * (fw + 4) - 4, fh + 14), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for i, (frame, label) in enumerate(zip(frames, labels)):
        strip.paste(frame, (i * (fw + 4), 0))
        draw.text((i * (fw + 4) + 2, fh + 1), label, fill=(0, 0, 0))
    return strip


def save_flow_gif(view: Image.Image, flow: np.ndarray, dest: str | Path, panel: int = 128, duration_ms: int = 500,
                  cmap: str | None = None) -> Path:
    """An animated GIF (looping) of the flow, one frame per block, each frame labelled."""
    frames = []
    for i, frame in enumerate(_frames(view, flow, panel, cmap)):
        ImageDraw.Draw(frame).text((3, 2), f"block {i + 1}", fill=(255, 255, 255))
        frames.append(frame)

    def write(tmp):
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=duration_ms, loop=0)

    save_atomic(write, Path(dest))
    return Path(dest)
