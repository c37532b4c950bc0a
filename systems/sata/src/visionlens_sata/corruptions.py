"""A small ImageNet-C-style corruption suite generated in the project (torch; JPEG through PIL):
10 corruptions x 5 severities for float images ``(B, 3, H, W)`` in [0, 1].

Random corruptions draw one base noise per image from a generator seeded by ``(seed,
corruption, image id)`` and scale it with the severity, so a corrupted image does not depend on
the batch it is generated in, is reproducible from the seed and moves further from the clean
image as the severity grows. Parameters are chosen for the 64-px synthetic world, whose ViT
shrugs off ImageNet-C-like mild levels: at severity 5 the plain world-vit keeps roughly 40 % (noise,
contrast, brightness) to 95 % (blur, JPEG) accuracy. They are not ImageNet-C's values.
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F

from visionlens.errors import InputError

SEVERITY_PARAMS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.3, 0.4, 0.5, 0.6, 0.8),
    "shot_noise": (5.0, 3.0, 2.0, 1.5, 1.0),              # photons per unit intensity
    "impulse_noise": (0.2, 0.3, 0.4, 0.5, 0.6),           # fraction of salt-and-pepper pixels
    "speckle_noise": (0.6, 0.8, 1.0, 1.3, 1.6),
    "gaussian_blur": (2.0, 3.0, 4.0, 5.0, 6.0),           # sigma (pixels)
    "defocus_blur": (3.0, 4.0, 5.0, 6.0, 8.0),            # disk radius (pixels)
    "contrast": (0.45, 0.3, 0.2, 0.15, 0.1),              # kept fraction of contrast
    "brightness": (0.1, 0.15, 0.2, 0.25, 0.3),            # added intensity
    "pixelate": (6, 8, 10, 12, 16),                       # block size (pixels)
    "jpeg": (10, 7, 5, 3, 1),                             # JPEG quality
}
CORRUPTIONS = tuple(SEVERITY_PARAMS)
SEVERITIES = (1, 2, 3, 4, 5)


def _noise(shape: tuple[int, ...], seed: int, corruption: str, ids: torch.Tensor, uniform: bool = False) -> torch.Tensor:
    """One base noise tensor per image, from its own generator."""
    salt = CORRUPTIONS.index(corruption)
    out = []
    for i in ids.tolist():
        g = torch.Generator().manual_seed((int(seed) * 1_000_003 + salt * 7_919 + int(i)) % (2**63))
        out.append(torch.rand(shape, generator=g) if uniform else torch.randn(shape, generator=g))
    return torch.stack(out)


def _blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    k = kernel / kernel.sum()
    pad = k.shape[-1] // 2
    weight = k.expand(x.shape[1], 1, *k.shape)
    return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="reflect"), weight, groups=x.shape[1])


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    r = max(1, int(round(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    return g[:, None] * g[None, :]


def _disk_kernel(radius: float) -> torch.Tensor:
    r = int(np.ceil(radius))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    return ((t[:, None] ** 2 + t[None, :] ** 2) <= radius**2 + 1e-6).float()


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    from PIL import Image

    out = []
    for img in x:
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        out.append(torch.from_numpy(np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1))
    return torch.stack(out)


def corrupt(images: torch.Tensor, corruption: str, severity: int, seed: int = 0, ids=None) -> torch.Tensor:
    """``images`` ``(B, 3, H, W)`` in [0, 1] with ``corruption`` at ``severity`` (1-5); ``ids``
    (default ``0..B-1``) names each image's noise stream."""
    if corruption not in SEVERITY_PARAMS:
        raise InputError(f"unknown corruption {corruption!r}; choose from: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise InputError(f"severity must be one of 1-5, got {severity}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    x = images.detach().float().cpu().clamp(0, 1)
    ids = torch.arange(x.shape[0]) if ids is None else torch.as_tensor(ids)
    c = SEVERITY_PARAMS[corruption][severity - 1]
    shape = tuple(x.shape[1:])
    if corruption == "gaussian_noise":
        out = x + c * _noise(shape, seed, corruption, ids)
    elif corruption == "shot_noise":  # Gaussian approximation of Poisson noise: sd sqrt(x / c)
        out = x + (x / c).sqrt() * _noise(shape, seed, corruption, ids)
    elif corruption == "impulse_noise":  # nested salt/pepper sets as the severity grows
        u = _noise(shape[1:], seed, corruption, ids, uniform=True).unsqueeze(1)
        out = torch.where(u < c / 2, torch.zeros_like(x), torch.where(u > 1 - c / 2, torch.ones_like(x), x))
    elif corruption == "speckle_noise":
        out = x + x * c * _noise(shape, seed, corruption, ids)
    elif corruption == "gaussian_blur":
        out = _blur(x, _gaussian_kernel(c))
    elif corruption == "defocus_blur":
        out = _blur(x, _disk_kernel(c))
    elif corruption == "contrast":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        out = (x - mean) * c + mean
    elif corruption == "brightness":
        out = x + c
    elif corruption == "pixelate":
        h, w = shape[1:]
        small = F.interpolate(x, size=(max(1, round(h / c)), max(1, round(w / c))), mode="area")
        out = F.interpolate(small, size=(h, w), mode="nearest")
    else:
        out = _jpeg(x, int(c))
    return out.clamp(0, 1)
