"""The project's own small reference models for the synthetic world (see data/world.py).

* ``WorldResNet``: a ResNet-style CNN ending in global average pooling + linear (CAM-compatible).
* ``WorldViT``: a ViT with a [class] token and timm's block structure (``blocks[i].norm1``,
  ``blocks[i].attn.qkv``, ``attn.proj``, ``attn.attn_drop`` sees the attention probabilities,
  ``norm2``, ``mlp.fc1/act/fc2``, ``norm``, ``head``); with ``num_classes=0`` it returns the
  [class] embedding (the self-supervised model).
* ``WorldMetricNet``: a ``WorldResNet`` trunk with a projection to an L2-normalised embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus identity (or 1x1 projection) skip, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + identity)


class WorldResNet(nn.Module):
    """stem (stride 2) -> layer1..layer3 (one BasicBlock each, strides 1, 2, 2) -> GAP -> fc.
    A 64x64 input gives ``layer3`` maps of 8x8."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (32, 64, 128)):
        super().__init__()
        w1, w2, w3 = widths
        self.stem = nn.Sequential(nn.Conv2d(3, w1, 3, 2, 1, bias=False), nn.BatchNorm2d(w1), nn.ReLU())
        self.layer1 = BasicBlock(w1, w1)
        self.layer2 = BasicBlock(w1, w2, 2)
        self.layer3 = BasicBlock(w2, w3, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, num_classes) if num_classes else nn.Identity()
        self.num_features = w3

    def features(self, x):
        return self.layer3(self.layer2(self.layer1(self.stem(x))))

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


class WorldMetricNet(nn.Module):
    """``trunk`` (a WorldResNet without classifier) -> GAP -> ``proj`` -> L2 normalisation."""

    def __init__(self, dim: int = 64, widths: tuple[int, int, int] = (32, 64, 128)):
        super().__init__()
        self.trunk = WorldResNet(num_classes=0, widths=widths)
        self.proj = nn.Linear(self.trunk.num_features, dim)

    def forward(self, x):
        return F.normalize(self.proj(self.trunk(x)), dim=1)


class PatchEmbed(nn.Module):
    def __init__(self, img_size: int, patch: int, dim: int):
        super().__init__()
        self.grid_size = (img_size // patch, img_size // patch)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention computed explicitly (no fused kernel), so hooks on
    ``attn_drop`` see the attention probabilities ``(B, heads, N, N)``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.q_norm = nn.Identity()
        self.k_norm = nn.Identity()
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class WorldViT(nn.Module):
    """ViT: patch embedding, [class] token, learned positions, ``depth`` blocks, final norm and a
    linear head on the [class] token (identity when ``num_classes == 0``)."""

    def __init__(self, img_size: int = 64, patch: int = 8, dim: int = 96, depth: int = 4, heads: int = 4,
                 mlp_ratio: float = 2.0, num_classes: int = 10):
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch, dim)
        self.num_prefix_tokens = 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, self.patch_embed.num_patches + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes) if num_classes else nn.Identity()
        self.num_features = dim

    def forward_features(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.norm(self.blocks(x))

    def forward(self, x):
        return self.head(self.forward_features(x)[:, 0])
