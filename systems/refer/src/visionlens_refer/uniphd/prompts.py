"""Prompt encoders and the multimodal fusion of UniPHD.

* text: word features and the sentence feature, each projected by Linear + LayerNorm + Dropout to d;
  word positions use a 1-D sine embedding;
* positional (point = 1 token, scribble = 12 tokens): coordinates normalised to [0, 1] sample the
  stride-16 backbone map and its positional map (``grid_sample``); projected to d; the sentence-like
  feature is a projection of the mean token;
* fusion: visual tokens += MHA(query = visual, key = prompt + position, value = prompt), with a
  separate attention for text and for positional prompts (and a key-padding mask for text).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import sine_embed


def _projection(din: int, d: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(din, d), nn.LayerNorm(d), nn.Dropout(dropout))


class TextPrompt(nn.Module):
    def __init__(self, text_encoder: nn.Module, d: int, dropout: float):
        super().__init__()
        self.text_encoder = text_encoder
        self.word_proj = _projection(text_encoder.out_dim, d, dropout)
        self.sentence_proj = _projection(text_encoder.out_dim, d, dropout)
        self.d = d

    def forward(self, texts: list[str], device):
        words, pad, pooled = self.text_encoder(texts, device)
        tokens = self.word_proj(words)
        idx = torch.arange(tokens.shape[1], device=device, dtype=torch.float32)[:, None] / max(tokens.shape[1], 1)
        pos = sine_embed(idx, self.d)[None].expand(tokens.shape[0], -1, -1)
        return tokens, pos, pad, self.sentence_proj(pooled)


class PositionalPrompt(nn.Module):
    def __init__(self, feature_channels: int, d: int, dropout: float):
        super().__init__()
        self.token_proj = _projection(feature_channels, d, dropout)
        self.sentence_proj = _projection(d, d, dropout)
        self.d = d

    def forward(self, points: torch.Tensor, feature: torch.Tensor, image_size: int):
        """points (B, K, 2) pixel (x, y); feature: the stride-16 backbone map (B, C, h, w)."""
        norm = ((points + 0.5) / image_size).clamp(0, 1)
        grid = (2 * norm - 1)[:, :, None]
        sampled = F.grid_sample(feature, grid, mode="bilinear", align_corners=False)[..., 0].transpose(1, 2)
        tokens = self.token_proj(sampled)
        pos = sine_embed(norm, self.d // 2)  # the positional map's value at the point
        pad = torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        return tokens, pos, pad, self.sentence_proj(tokens.mean(1))


class PromptFusion(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.text_attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.position_attn = nn.MultiheadAttention(d, heads, batch_first=True)

    def forward(self, visual, tokens, pos, pad, kind: str):
        attn = self.text_attn if kind == "text" else self.position_attn
        return visual + attn(visual, tokens + pos, tokens, key_padding_mask=pad, need_weights=False)[0]
