"""SpectralKAN (arXiv:2407.00949 v2) and the ablation models of its Table 8.

Every model takes a bi-temporal patch pair ``(B, 2, bands, p*p)`` (each band's p*p spatial values
in one vector) and returns 2 logits (class 1 = changed). Single-branch models work on the
difference ``x[:, 0] - x[:, 1]``, as in the paper.

- ``SpectralKAN``: spatial level WKAN ``[p*p, 16, 1]`` shared over bands -> ``(B, bands)``, then a
  channel level WKAN ``[bands, 2]`` (config "b", the paper's stated best) or ``[bands, 16, 2]``
  (config "d", the one that matches the paper's parameter counts). ``layer="kan"`` gives MTSF-KAN.
- ``FlatKAN``: one KAN or WKAN ``[p*p*bands, 16, 2]`` on the flattened difference patch.
- ``DualBranchSpectralKAN``: shared spatial ``[p*p, 16, 1]`` and channel ``[bands, 16]`` WKANs on each
  date, then WKAN ``[16, 2]`` on the difference of the two codes.
"""

from __future__ import annotations

import torch
from torch import nn

from visionlens.errors import InputError

from .kan import KANStack, layer_flops, layer_parameter_count

CHANNEL_CONFIGS = {"b": (), "d": (16,)}


def _check_pair(x: torch.Tensor, bands: int, patch_area: int) -> None:
    if x.dim() != 4 or x.shape[1] != 2 or x.shape[2] != bands or x.shape[3] != patch_area:
        raise InputError(f"expected a patch pair (batch, 2, {bands}, {patch_area}), got {tuple(x.shape)}")


class SpectralKAN(nn.Module):
    """Spatial-level then channel-level KAN (WKAN: SpectralKAN; KAN: MTSF-KAN)."""

    def __init__(self, bands: int, patch: int = 5, channels: str = "b", layer: str = "wkan", basis: str = "fast"):
        super().__init__()
        if channels not in CHANNEL_CONFIGS:
            raise InputError(f"unknown channel config {channels!r}: use 'b' ([bands, 2]) or 'd' ([bands, 16, 2])")
        self.bands, self.patch_area = bands, patch * patch
        self.spatial_widths = [self.patch_area, 16, 1]
        self.channel_widths = [bands, *CHANNEL_CONFIGS[channels], 2]
        self.spatial = KANStack(self.spatial_widths, layer, basis)
        self.channel = KANStack(self.channel_widths, layer, basis)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_pair(x, self.bands, self.patch_area)
        diff = x[:, 0] - x[:, 1]
        codes = self.spatial(diff.reshape(-1, self.patch_area)).reshape(x.shape[0], self.bands)
        return self.channel(codes)

    def stacks(self):
        """(stack, rows per pixel) pairs, for the analytic cost."""
        return [(self.spatial, self.bands), (self.channel, 1)]


class FlatKAN(nn.Module):
    """A plain KAN or WKAN ``[p*p*bands, hidden, 2]`` on the flattened difference patch."""

    def __init__(self, bands: int, patch: int = 5, layer: str = "kan", hidden: int = 16, basis: str = "fast"):
        super().__init__()
        self.bands, self.patch_area = bands, patch * patch
        self.net = KANStack([self.patch_area * bands, hidden, 2], layer, basis)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_pair(x, self.bands, self.patch_area)
        return self.net((x[:, 0] - x[:, 1]).reshape(x.shape[0], -1))

    def stacks(self):
        return [(self.net, 1)]


class DualBranchSpectralKAN(nn.Module):
    """Siamese spatial/channel WKANs on each date; a WKAN ``[16, 2]`` on the code difference."""

    def __init__(self, bands: int, patch: int = 5, basis: str = "fast"):
        super().__init__()
        self.bands, self.patch_area = bands, patch * patch
        self.spatial = KANStack([self.patch_area, 16, 1], "wkan", basis)
        self.channel = KANStack([bands, 16], "wkan", basis)
        self.head = KANStack([16, 2], "wkan", basis)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_pair(x, self.bands, self.patch_area)
        both = x.reshape(-1, self.patch_area)                             # (B*2*bands, p*p)
        codes = self.spatial(both).reshape(x.shape[0] * 2, self.bands)
        codes = self.channel(codes).reshape(x.shape[0], 2, -1)
        return self.head(codes[:, 0] - codes[:, 1])

    def stacks(self):
        return [(self.spatial, 2 * self.bands), (self.channel, 2), (self.head, 1)]


def build_model(name: str, bands: int, patch: int = 5, basis: str = "fast") -> nn.Module:
    """Models by name: spectralkan-b, spectralkan-d, mtsf-kan, wkan, kan, dual-branch."""
    builders = {
        "spectralkan-b": lambda: SpectralKAN(bands, patch, "b", "wkan", basis),
        "spectralkan-d": lambda: SpectralKAN(bands, patch, "d", "wkan", basis),
        "mtsf-kan": lambda: SpectralKAN(bands, patch, "d", "kan", basis),
        "wkan": lambda: FlatKAN(bands, patch, "wkan", basis=basis),
        "kan": lambda: FlatKAN(bands, patch, "kan", basis=basis),
        "dual-branch": lambda: DualBranchSpectralKAN(bands, patch, basis),
    }
    if name not in builders:
        raise InputError(f"unknown hsi-cd model {name!r}: use one of {', '.join(builders)}")
    return builders[name]()


KAN_MODELS = ("spectralkan-b", "spectralkan-d", "mtsf-kan", "wkan", "kan", "dual-branch")


def formula_parameter_count(model: nn.Module) -> int:
    """Parameters from the spec's per-layer formulas (compare with counting the tensors)."""
    return sum(layer_parameter_count(a, b, stack.layer_kind) for stack, _ in model.stacks()
               for a, b in zip(stack.widths[:-1], stack.widths[1:]))


def analytic_cost(model: nn.Module) -> dict:
    """Per-pixel ``flops`` (all operations) and ``base_macs`` (thop's view of the reference code)."""
    total = {"flops": 0, "base_macs": 0}
    for stack, rows in model.stacks():
        for a, b in zip(stack.widths[:-1], stack.widths[1:]):
            for key, value in layer_flops(a, b, stack.layer_kind).items():
                total[key] += rows * value
    return total
