"""Cheap change-detection peers: change-vector analysis + Otsu, PCA + k-means (unsupervised), and
an MLP and a small CNN on patch pairs (trained like SpectralKAN)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .data import Scene, normalize_pair


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """The threshold maximising the between-class variance of a 1-D sample."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[np.argmax(between[:-1])])           # skimage's convention: the last bin of class 0


def cva_otsu(scene: Scene) -> np.ndarray:
    """Change-vector magnitude of the normalised dates, thresholded by Otsu: an ``(H, W)`` 0/1 map."""
    a, b = normalize_pair(scene.t1, scene.t2)
    magnitude = np.linalg.norm(a - b, axis=-1)
    return (magnitude > otsu_threshold(magnitude.ravel())).astype(np.int64)


def pca_kmeans(scene: Scene, components: int = 3, seed: int = 0, iterations: int = 50) -> np.ndarray:
    """PCA of the difference image, then 2-means; the cluster with the larger change magnitude is "changed"."""
    a, b = normalize_pair(scene.t1, scene.t2)
    diff = (a - b).reshape(-1, scene.bands).astype(np.float64)
    centred = diff - diff.mean(0)
    _, _, vt = np.linalg.svd(centred[:: max(1, len(centred) // 20000)], full_matrices=False)
    z = centred @ vt[:components].T
    rng = np.random.default_rng(seed)
    centres = z[rng.choice(len(z), 2, replace=False)]
    for _ in range(iterations):
        assign = ((z[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        new = np.stack([z[assign == k].mean(0) if (assign == k).any() else centres[k] for k in range(2)])
        if np.allclose(new, centres):
            break
        centres = new
    magnitude = np.linalg.norm(diff, axis=1)
    means = [magnitude[assign == k].mean() if (assign == k).any() else -1.0 for k in range(2)]
    return (assign == int(np.argmax(means))).astype(np.int64).reshape(scene.t1.shape[:2])


class PatchMLP(nn.Module):
    """An MLP on the flattened difference patch."""

    def __init__(self, bands: int, patch: int = 5, hidden: int = 64):
        super().__init__()
        self.inputs, self.hidden = bands * patch * patch, hidden
        self.net = nn.Sequential(nn.Linear(self.inputs, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x[:, 0] - x[:, 1]).reshape(x.shape[0], -1))

    def cost(self) -> dict:
        macs = self.inputs * self.hidden + self.hidden * 2
        return {"flops": 2 * macs + self.hidden, "base_macs": macs}


class PatchCNN(nn.Module):
    """Two 3x3 convolutions over the bands-as-channels difference patch, then a linear head."""

    def __init__(self, bands: int, patch: int = 5, width: int = 32):
        super().__init__()
        self.bands, self.patch, self.width = bands, patch, width
        self.net = nn.Sequential(nn.Conv2d(bands, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        diff = (x[:, 0] - x[:, 1]).reshape(x.shape[0], self.bands, self.patch, self.patch)
        return self.net(diff)

    def cost(self) -> dict:
        area = self.patch * self.patch
        macs = area * 9 * (self.bands * self.width + self.width * self.width) + self.width * 2
        return {"flops": 2 * macs + 2 * area * self.width, "base_macs": macs}


SUPERVISED_PEERS = {"mlp": PatchMLP, "cnn": PatchCNN}
UNSUPERVISED_PEERS = {"cva-otsu": cva_otsu, "pca-kmeans": pca_kmeans}
