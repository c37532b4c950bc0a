"""The dynamic-convolution mask head with MSO refinement (SgMg / CondInst style).

Mask features = sum of the encoder memory levels resized (bicubic) to the stride-8 grid. A controller
MLP on each query's final instance token emits the weights of a 2-layer 1x1 dynamic conv
((d + 2) -> 16 -> 16); the 2 extra input channels are coordinates relative to the query's centre.
Refinement: concat the stride-8 backbone map -> two 3x3 convs (residual); upsample to stride 4;
concat the stride-4 map -> two 3x3 convs (residual); ``pixel_shuffle(4)`` takes 16 channels to a
1-channel full-resolution logit.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import MLP


class MaskHead(nn.Module):
    def __init__(self, d: int, c4: int, c8: int, channels: int = 16, controller_layers: int = 2):
        super().__init__()
        self.d, self.channels = d, channels
        self.n_params = (d + 2) * channels + channels + channels * channels + channels
        self.controller = MLP(d, d, self.n_params, controller_layers)
        self.mask_refine = nn.ModuleDict({
            "s8": nn.Sequential(nn.Conv2d(channels + c8, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1)),
            "s4": nn.Sequential(nn.Conv2d(channels + c4, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1)),
        })

    def dynamic_conv(self, features, instance, centres):
        """features (B, d, h, w); instance (B, Q, d); centres (B, Q, 2) -> (B, Q, channels, h, w)."""
        b, d, h, w = features.shape
        q, c = instance.shape[1], self.channels
        params = self.controller(instance)
        w1, b1, w2, b2 = params.split([(d + 2) * c, c, c * c, c], dim=-1)
        w1 = w1.view(b, q, c, d + 2)
        ys, xs = torch.meshgrid(torch.arange(h, device=features.device), torch.arange(w, device=features.device), indexing="ij")
        grid = torch.stack([(xs.flatten() + 0.5) / w, (ys.flatten() + 0.5) / h], 0).float()  # (2, hw)
        rel = grid[None, None] - centres[..., None]  # (B, Q, 2, hw)
        x = torch.einsum("bqcd,bdn->bqcn", w1[..., :d], features.flatten(2)) + torch.einsum("bqck,bqkn->bqcn", w1[..., d:], rel)
        x = F.relu(x + b1[..., None])
        x = torch.einsum("bqoc,bqcn->bqon", w2.view(b, q, c, c), x) + b2[..., None]
        return x.view(b, q, c, h, w)

    def forward(self, memory_maps, instance, centres, feat4, feat8):
        h8, w8 = feat8.shape[-2:]
        features = sum(F.interpolate(m, size=(h8, w8), mode="bicubic", align_corners=False) if m.shape[-2:] != (h8, w8) else m
                       for m in memory_maps)
        x = self.dynamic_conv(features, instance, centres)
        b, q = x.shape[:2]
        x = x.flatten(0, 1)
        rep = lambda f: f[:, None].expand(-1, q, -1, -1, -1).flatten(0, 1)  # noqa: E731
        x = x + self.mask_refine["s8"](torch.cat([x, rep(feat8)], 1))
        x = F.interpolate(x, size=feat4.shape[-2:], mode="bilinear", align_corners=False)
        x = x + self.mask_refine["s4"](torch.cat([x, rep(feat4)], 1))
        logits = F.pixel_shuffle(x, 4)
        return logits.view(b, q, *logits.shape[-2:])
