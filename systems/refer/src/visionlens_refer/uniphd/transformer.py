"""The deformable multimodal encoder and the pose-centric hierarchical decoder (PHD) layers.

A PHD layer works on query groups of 1 instance token + 17 keypoint tokens (B, Q, 18, d):
(a) across-instance self-attention: for each token slot, attention across the Q groups;
(b) deformable cross-attention to the memory, each token around its own reference point (the
    instance token around the centre, keypoint token j around keypoint j), then an FFN;
(c) within-instance graph attention: self-attention among a group's 18 tokens with a learnable
    additive per-head bias (the soft adjacency matrix, initialised to 1e-8), then a second FFN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import MSDeformAttn


class FFN(nn.Module):
    def __init__(self, d: int, hidden: int, dropout: float):
        super().__init__()
        self.linear1, self.linear2 = nn.Linear(d, hidden), nn.Linear(hidden, d)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        return self.norm(x + self.dropout(self.linear2(F.relu(self.linear1(x)))))


class EncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, levels: int, points: int, dropout: float):
        super().__init__()
        self.self_attn = MSDeformAttn(d, levels, heads, points)
        self.norm1 = nn.LayerNorm(d)
        self.ffn = FFN(d, ffn, dropout)

    def forward(self, src, pos, reference, shapes):
        src = self.norm1(src + self.self_attn(src + pos, reference, src, shapes))
        return self.ffn(src)


class PHDLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, levels: int, points: int, dropout: float, group: int = 18):
        super().__init__()
        self.heads = heads
        self.across_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.norm_across = nn.LayerNorm(d)
        self.cross_attn = MSDeformAttn(d, levels, heads, points)
        self.norm_cross = nn.LayerNorm(d)
        self.ffn1 = FFN(d, ffn, dropout)
        self.within_attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.adjacent_matrix = nn.Parameter(torch.full((heads, group, group), 1e-8))
        self.norm_within = nn.LayerNorm(d)
        self.ffn2 = FFN(d, ffn, dropout)

    def forward(self, tokens, pos, refs, memory, shapes):
        """tokens, pos (B, Q, G, d); refs (B, Q, G, 2) normalised (x, y); memory (B, N, d)."""
        b, q, g, d = tokens.shape
        # (a) same slot, across instances
        x = tokens.transpose(1, 2).reshape(b * g, q, d)
        p = pos.transpose(1, 2).reshape(b * g, q, d)
        x = self.norm_across(x + self.across_attn(x + p, x + p, x, need_weights=False)[0])
        tokens = x.view(b, g, q, d).transpose(1, 2)
        # (b) deformable cross-attention around each token's own reference point
        flat = tokens.reshape(b, q * g, d)
        flat = self.norm_cross(flat + self.cross_attn(flat + pos.reshape(b, q * g, d), refs.reshape(b, q * g, 2), memory, shapes))
        tokens = self.ffn1(flat).view(b, q, g, d)
        # (c) within-instance attention with the learnable additive adjacency bias
        x = tokens.reshape(b * q, g, d)
        p = pos.reshape(b * q, g, d)
        bias = self.adjacent_matrix[None].expand(b * q, -1, -1, -1).reshape(b * q * self.heads, g, g)
        x = self.norm_within(x + self.within_attn(x + p, x + p, x, attn_mask=bias, need_weights=False)[0])
        return self.ffn2(x).view(b, q, g, d)
