"""Prototype views: ICE's thresholded mask and the TraNCE Bessel-function view (a reconstruction;
spec section 6.2 step 6, low confidence: every constant is a parameter).

Bessel view: with the normalised heatmap ``h`` in [0, 1], ``beta = J_nu(kappa (1 - h))`` where
``J_nu`` is the Bessel function of the first kind. By default ``nu = 0`` and ``kappa = 2.405 /
(1 - lambda)`` puts the first zero of ``J_0`` at ``h = lambda``: pixels with ``beta > 0`` ("what
the CNN saw") keep the image, fading smoothly toward the threshold; pixels in the negative lobe
(``beta < 0``, "what the CNN avoided") are tinted (magenta by default); the rest is dimmed.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

J0_FIRST_ZERO = 2.404825557695773


SERIES_LIMIT = 12.0  # the power series is accurate to ~1e-12 for |x| up to this, torch.special's J_0, J_1 beyond
BESSEL_MAX_ORDER = 12  # the upward recurrence from J_0, J_1 is stable for |x| above the order


def bessel_j(nu: int, x: np.ndarray, terms: int = 60) -> np.ndarray:
    """``J_nu(x)`` for an integer order ``0 <= nu <= 12`` to ~1e-11 at every ``x``: the power series
    for ``|x| <= 12``; beyond it, ``J_0`` and ``J_1`` from ``torch.special`` and the upward
    recurrence from them (stable there, where ``|x| > nu``). The series alone diverged for the
    large arguments of a threshold above 0.9 (``kappa (1 - h)`` up to 240 at 0.99: errors of 1e85)."""
    import torch

    if int(nu) != nu or not 0 <= nu <= BESSEL_MAX_ORDER:
        raise ValueError(f"Bessel order must be an integer from 0 to {BESSEL_MAX_ORDER}, got {nu}")
    x = np.asarray(x, dtype=np.float64)
    near = np.abs(x) <= SERIES_LIMIT
    half = np.where(near, x, 0.0) / 2.0
    series = np.zeros_like(x)
    for m in range(terms):
        coeff = (-1) ** m / math.exp(math.lgamma(m + 1) + math.lgamma(m + nu + 1))
        series = series + coeff * half ** (2 * m + nu)
    if near.all():
        return series
    far = np.where(near, SERIES_LIMIT + 1.0, x)
    previous, current = (f(torch.from_numpy(far)).numpy() for f in (torch.special.bessel_j0, torch.special.bessel_j1))
    if nu == 0:
        current = previous
    for n in range(1, int(nu)):
        previous, current = current, (2 * n / far) * current - previous
    return np.where(near, series, current)


def _upsampled(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``h * 1[h > 0]`` divided by its max, bilinearly resized to ``size`` (W, H)."""
    h = np.clip(np.asarray(heatmap, dtype=np.float32), 0, None)
    h = h / max(float(h.max()), 1e-12)
    return np.asarray(Image.fromarray(h, mode="F").resize(size, Image.BILINEAR), dtype=np.float32).clip(0, 1)


def ice_view(image: Image.Image, heatmap: np.ndarray, threshold: float = 0.5, dim: float = 0.2,
             contour=(255, 0, 0)) -> Image.Image:
    """ICE: ``(h - lambda) / (1 - lambda)`` kept where positive, background dimmed to ``dim``,
    a contour around the kept region."""
    img = np.asarray(image.convert("RGB"), dtype=np.float32)
    h = _upsampled(heatmap, image.size)
    keep = (h - threshold) / (1 - threshold) > 0
    out = img * (keep[..., None] * (1 - dim) + dim)
    inner = keep.copy()
    inner[1:, :] &= keep[:-1, :]
    inner[:-1, :] &= keep[1:, :]
    inner[:, 1:] &= keep[:, :-1]
    inner[:, :-1] &= keep[:, 1:]
    out[keep & ~inner] = contour
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8))


def bessel_view(image: Image.Image, heatmap: np.ndarray, threshold: float = 0.5, nu: int = 0,
                kappa: float | None = None, dim: float = 0.25, tint=(255, 0, 255), tint_strength: float = 0.5) -> Image.Image:
    """TraNCE-style view: ``beta = J_nu(kappa (1 - h))``; seen pixels blend toward the image by
    ``beta``, avoided pixels (``beta < 0``) are tinted by ``(|beta| / max |J_nu|)^2`` (strongest
    at the bottom of the negative lobe, fainter far from the concept)."""
    kappa = J0_FIRST_ZERO / (1 - threshold) if kappa is None else kappa
    img = np.asarray(image.convert("RGB"), dtype=np.float32)
    h = _upsampled(heatmap, image.size)
    beta = bessel_j(nu, kappa * (1.0 - h)).astype(np.float32)
    lobe = bessel_j(nu, np.linspace(0.0, kappa, 512))  # J_nu over the whole range h in [0, 1]
    seen = np.clip(beta, 0, None) / max(float(lobe.max()), 1e-12)
    avoided = (np.clip(-beta, 0, None) / max(float(-lobe.min()), 1e-12)) ** 2  # peaks inside the lobe
    out = img * (dim + (1 - dim) * seen[..., None])
    a = tint_strength * avoided[..., None]
    out = out * (1 - a) + np.asarray(tint, np.float32) * a
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8))
