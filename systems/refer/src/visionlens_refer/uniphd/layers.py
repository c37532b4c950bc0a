"""Small shared pieces: MLP, inverse sigmoid, sine position embeddings and multi-scale deformable
attention in pure PyTorch (``grid_sample``; no CUDA op), as in Deformable DETR's reference path."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    def __init__(self, din: int, hidden: int, dout: int, layers: int):
        super().__init__()
        dims = [din] + [hidden] * (layers - 1) + [dout]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def sine_embed(coords: torch.Tensor, feats_per_coord: int, temperature: float = 20.0) -> torch.Tensor:
    """(..., k) coordinates in [0, 1] -> (..., k * feats_per_coord) interleaved sin/cos features."""
    dim_t = torch.arange(feats_per_coord, dtype=torch.float32, device=coords.device)
    dim_t = temperature ** (2 * (dim_t // 2) / feats_per_coord)
    pos = coords[..., None] * (2 * math.pi) / dim_t
    pos = torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)
    return pos.flatten(-2)


def grid_centres(h: int, w: int, device) -> torch.Tensor:
    """(h*w, 2) normalised (x, y) centres of a feature map's cells."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([(xs.flatten() + 0.5) / w, (ys.flatten() + 0.5) / h], -1).float()


def deformable_sample(value: torch.Tensor, shapes: list, locations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """value (B, N, H, dh); locations (B, Q, H, L, P, 2) in [0, 1]; weights (B, Q, H, L, P) -> (B, Q, H*dh)."""
    b, _, heads, dh = value.shape
    _, q, _, levels, points, _ = locations.shape
    splits = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * locations - 1
    sampled = []
    for lid, (h, w) in enumerate(shapes):
        v = splits[lid].flatten(2).transpose(1, 2).reshape(b * heads, dh, h, w)
        g = grids[:, :, :, lid].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    att = weights.transpose(1, 2).reshape(b * heads, 1, q, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * att).sum(-1)
    return out.view(b, heads * dh, q).transpose(1, 2)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention: each query samples P points per level and head around its
    reference point, with offsets and softmax weights predicted from the query."""

    def __init__(self, d: int, levels: int, heads: int, points: int):
        super().__init__()
        self.levels, self.heads, self.points = levels, heads, points
        self.sampling_offsets = nn.Linear(d, heads * levels * points * 2)
        self.attention_weights = nn.Linear(d, heads * levels * points)
        self.value_proj = nn.Linear(d, d)
        self.output_proj = nn.Linear(d, d)
        nn.init.zeros_(self.sampling_offsets.weight)
        theta = torch.arange(heads, dtype=torch.float32) * (2 * math.pi / heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(heads, 1, 1, 2).repeat(1, levels, points, 1)
        grid = grid * torch.arange(1, points + 1, dtype=torch.float32).view(1, 1, points, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)

    def forward(self, query, reference, value, shapes):
        """query (B, Q, d); reference (B, Q, 2) or (B, Q, L, 2) normalised (x, y); value (B, N, d)."""
        b, q, _ = query.shape
        if reference.dim() == 3:
            reference = reference[:, :, None].expand(b, q, self.levels, 2)
        v = self.value_proj(value).view(b, value.shape[1], self.heads, -1)
        off = self.sampling_offsets(query).view(b, q, self.heads, self.levels, self.points, 2)
        w = self.attention_weights(query).view(b, q, self.heads, -1).softmax(-1)
        w = w.view(b, q, self.heads, self.levels, self.points)
        norm = torch.tensor([[ww, hh] for hh, ww in shapes], dtype=query.dtype, device=query.device)
        loc = reference[:, :, None, :, None, :] + off / norm[None, None, None, :, None, :]
        return self.output_proj(deformable_sample(v, shapes, loc, w))
