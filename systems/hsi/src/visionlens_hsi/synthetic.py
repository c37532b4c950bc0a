"""A synthetic bi-temporal hyperspectral scene (spec §4.9), so change detection runs without data.

Smooth endmember spectra are linearly mixed by smooth sum-to-one abundance maps. Real changes are
discs where the abundances are rolled to another dominant endmember (some only partially mixed
toward it); pseudo-changes that keep the "unchanged" label are a global illumination gain, a
per-band offset, a few "seasonal" discs that rescale one endmember and (optionally, ``shading``, not in
the spec) a smooth gain field such as haze or relief shading; both dates get Gaussian noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from visionlens.errors import InputError

from .data import CHANGED, UNCHANGED, UNKNOWN, Scene


@dataclass(frozen=True)
class SyntheticConfig:
    size: int = 80
    bands: int = 64
    endmembers: int = 6
    changes: tuple[int, int] = (5, 10)
    change_cover: tuple[float, float] = (0.10, 0.30)
    subtle: float = 0.3                 # fraction of change discs that only partially mix
    gain: tuple[float, float] = (0.93, 1.07)
    band_offset: float = 0.01
    seasonal_blobs: int = 3
    seasonal_scale: float = 0.10
    shading: float = 0.0                # [addition] amplitude of a smooth multiplicative gain field at t2
    noise: float = 0.02
    smoothing: float = 6.0
    unknown: float = 0.0                # fraction of pixels marked unknown (Bay Area style)

    def to_dict(self) -> dict:
        return asdict(self)


def _endmembers(rng, count: int, bands: int) -> np.ndarray:
    w = np.linspace(0.0, 1.0, bands)
    spectra = []
    for _ in range(count):
        s = rng.uniform(-0.3, 0.3) * w + rng.uniform(0.1, 0.4)
        for _ in range(rng.integers(3, 6)):
            s = s + rng.uniform(0.2, 1.0) * np.exp(-0.5 * ((w - rng.uniform(0, 1)) / rng.uniform(0.03, 0.15)) ** 2)
        spectra.append(np.clip(s, 0.02, None))
    return np.stack(spectra)                                                # (M, bands)


def _smooth_fields(rng, count: int, size: int, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise (periodic, via FFT), standardised per field."""
    f = np.fft.fftfreq(size)
    transfer = np.exp(-2 * (np.pi * sigma) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    z = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((count, size, size))) * transfer))
    return (z - z.mean(axis=(1, 2), keepdims=True)) / (z.std(axis=(1, 2), keepdims=True) + 1e-12)


def _disc(size: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def make_scene(config: SyntheticConfig = SyntheticConfig(), seed: int = 0) -> Scene:
    """A deterministic (given ``seed``) bi-temporal scene with ground truth."""
    if config.size < 8 or config.bands < 2 or config.endmembers < 2:
        raise InputError(f"synthetic scene too small: size {config.size} (>= 8), bands {config.bands} (>= 2), "
                         f"endmembers {config.endmembers} (>= 2)")
    rng = np.random.default_rng(seed)
    n, m = config.size, config.endmembers
    spectra = _endmembers(rng, m, config.bands)
    z = 3.0 * _smooth_fields(rng, m, n, config.smoothing)
    a1 = np.exp(z - z.max(axis=0)) / np.exp(z - z.max(axis=0)).sum(axis=0)   # (M, n, n), sum to one
    a2 = a1.copy()

    changed = np.zeros((n, n), dtype=bool)
    count = int(rng.integers(config.changes[0], config.changes[1] + 1))
    cover = rng.uniform(*config.change_cover)
    radius = np.sqrt(cover * n * n / (count * np.pi))
    for _ in range(count):
        disc = _disc(n, rng.uniform(0, n), rng.uniform(0, n), radius * rng.uniform(0.6, 1.4)) & ~changed
        if not disc.any():
            continue
        rolled = np.roll(a1[:, disc], int(rng.integers(1, m)), axis=0)
        if rng.uniform() < config.subtle:                                   # partial mixing toward the new mix
            alpha = rng.uniform(0.5, 0.8)
            rolled = (1 - alpha) * a1[:, disc] + alpha * rolled
        a2[:, disc] = rolled
        changed |= disc

    scale = np.ones((m, n, n))
    for _ in range(config.seasonal_blobs):                                  # pseudo-change: one endmember +-10 %
        disc = _disc(n, rng.uniform(0, n), rng.uniform(0, n), rng.uniform(0.05, 0.15) * n)
        scale[int(rng.integers(m)), disc] *= 1 + rng.choice([-1, 1]) * config.seasonal_scale

    x1 = np.einsum("mhw,mb->hwb", a1, spectra)
    x2 = np.einsum("mhw,mb->hwb", a2 * scale, spectra)
    x2 = rng.uniform(*config.gain) * x2 + rng.normal(0, config.band_offset, config.bands)
    if config.shading > 0:                                                   # haze / topographic shading
        x2 = x2 * (1 + config.shading * _smooth_fields(rng, 1, n, 2 * config.smoothing)[0])[..., None]
    x1 = x1 + rng.normal(0, config.noise, x1.shape)
    x2 = x2 + rng.normal(0, config.noise, x2.shape)

    labels = np.where(changed, CHANGED, UNCHANGED).astype(np.int64)
    if config.unknown > 0:
        field = _smooth_fields(rng, 1, n, config.smoothing)[0]
        labels[field > np.quantile(field, 1 - config.unknown)] = UNKNOWN
    return Scene(x1.astype(np.float32), x2.astype(np.float32), labels, name=f"synthetic{n}x{n}x{config.bands}")
