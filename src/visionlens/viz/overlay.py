"""Heat-map overlays in numpy + PIL (no matplotlib needed): a normalised map in [0, 1] on a
perceptually uniform colormap (viridis by default), a signed map on a diverging one centred at
zero, and optionally a colour-bar strip under the picture (for figures)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ..errors import InputError
from .colormaps import apply, bar_labels, colorize, display_cmap, is_diverging


def jet(values: np.ndarray) -> np.ndarray:
    """The classic JET colormap: ``(H, W)`` in [0, 1] -> ``(H, W, 3)`` uint8 (blue low, red high)."""
    return apply(values, "jet")


def _resized_map(saliency: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``saliency`` bilinearly resized to ``size`` (width, height)."""
    if saliency.shape[::-1] == tuple(size):
        return saliency
    return np.asarray(Image.fromarray(saliency, mode="F").resize(size, Image.BILINEAR), dtype=np.float32)


def _picture(image) -> Image.Image:
    """``image`` as an RGB ``PIL.Image``: a PIL image, or an ``(H, W, 3)`` / ``(H, W)`` NumPy array,
    uint8 or float in [0, 1] (what pytorch-grad-cam's ``show_cam_on_image`` takes)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim not in (2, 3) or array.ndim == 3 and array.shape[-1] not in (1, 3, 4):
        raise InputError(f"image must be a PIL image or an (H, W, 3) array, got shape {array.shape}")
    if array.dtype != np.uint8:
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise InputError("a float image array must hold values in [0, 1] (or give uint8)")
        array = np.round(array * 255).astype(np.uint8)
    return Image.fromarray(array.squeeze(-1) if array.ndim == 3 and array.shape[-1] == 1 else array).convert("RGB")


def overlay(image, saliency: np.ndarray, alpha: float = 0.5, cmap: str | None = None,
            signed: bool = False, colorbar: bool = False) -> Image.Image:
    """Blend the coloured ``saliency`` over ``image`` (a PIL image or an ``(H, W, 3)`` array, uint8
    or float in [0, 1]), at the image's size: a map of another size is resized to it (bilinear).

    A normalised map (values in [0, 1]) is blended with weight ``alpha``. A ``signed`` map (e.g.
    Relevance-CAM's raw map) is scaled by its largest magnitude onto a diverging colormap (zero is
    the neutral centre) and blended with weight ``min(1.6 alpha sqrt(|value| / max), 0.8)``, so
    that the photo shows where the map is near zero. ``colorbar`` adds a labelled colour-bar strip
    under the picture. A torch tensor is taken as it is (detached, from any device)."""
    if hasattr(saliency, "detach"):  # a torch tensor, e.g. exp.maps[0], also one that requires grad or is on a GPU
        saliency = saliency.detach().float().cpu().numpy()
    saliency = np.asarray(saliency, dtype=np.float32)
    if saliency.ndim != 2:
        raise InputError(f"saliency must be one map (H, W), got shape {saliency.shape}")
    rgb = _picture(image)
    saliency = _resized_map(saliency, rgb.size)
    if signed:
        peak = float(np.abs(saliency).max()) or 1.0
        weight = np.minimum(1.6 * alpha * np.sqrt(np.abs(saliency) / peak), 0.8)[..., None]
    else:
        weight = alpha
    base = np.asarray(rgb, dtype=np.float32)
    mixed = (1.0 - weight) * base + weight * colorize(saliency, cmap, signed).astype(np.float32)
    picture = Image.fromarray(np.clip(np.round(mixed), 0, 255).astype(np.uint8))
    return with_colorbar(picture, cmap, signed) if colorbar else picture


def colorbar_strip(width: int, cmap: str | None = None, signed: bool = False, height: int = 26) -> Image.Image:
    """A ``width``-pixel strip: the colour gradient a map is drawn with and its end labels under it."""
    name = display_cmap(cmap, signed)
    ends = (0.0, 1.0) if signed or not is_diverging(name) else (0.5, 1.0)
    bar = apply(np.linspace(*ends, max(width - 8, 2)), name)
    strip = Image.new("RGB", (width, height), (255, 255, 255))
    strip.paste(Image.fromarray(np.repeat(bar[None], 10, axis=0)), (4, 2))
    draw = ImageDraw.Draw(strip)
    labels = [label.replace("−", "-") for label in bar_labels(signed)]  # the bitmap font is ASCII
    for i, label in enumerate(labels):
        text_w = draw.textlength(label)
        x = 4 + i * (width - 8) / (len(labels) - 1) - text_w * i / (len(labels) - 1)
        draw.text((round(x), 13), label, fill=(0, 0, 0))
    return strip


def with_colorbar(picture: Image.Image, cmap: str | None = None, signed: bool = False) -> Image.Image:
    """``picture`` with :func:`colorbar_strip` under it (same width)."""
    strip = colorbar_strip(picture.width, cmap, signed)
    out = Image.new("RGB", (picture.width, picture.height + strip.height), (255, 255, 255))
    out.paste(picture.convert("RGB"), (0, 0))
    out.paste(strip, (0, picture.height))
    return out
