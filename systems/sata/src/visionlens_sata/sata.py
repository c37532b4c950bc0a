"""SATA (Nikzad et al., arXiv:2409.19850): spatial-autocorrelation token analysis before the FFN
of a ViT's last blocks, training-free.

Per image, in each SATA block (after the attention residual, before ``norm2``), with the patch
tokens ``X`` (``N x C``) and the head-mean attention ``M`` restricted to the patch tokens
(``W = M[P:, P:]``, not renormalised):

* global context ``a_i = mean_c X_ic``; ``z = standardise(a)`` (unbiased std over tokens);
* local Moran's I with attention as spatial weights, **transposed** as in the reference code:
  ``I_i = z_i * sum_j W[j, i] z_j`` (``diag(z z^T W)``);
* score ``s = standardise(I)``; set B = ``{i : alpha (mu - |med|) <= s_i <= alpha (mu + |med|)}``
  (``med``: torch's lower median), set A = the rest;
* set A (token order kept) is grouped by bipartite matching: ``src = A[0::2]``, ``dst = A[1::2]``,
  raw dot-product similarity, each src goes to its best dst (mean, dst included); all src
  tokens are **residual** (sorted by their best similarity, descending) and skip this FFN;
* FFN on ``[prefix; B; merged dst]``, then the residual src tokens are appended (token count
  conserved, only FFN work is saved: ``P + |B| + floor(|A| / 2)`` tokens through the FFN).

The reference code (nick-nikzad/SATA) runs the split and merge on boolean masks flattened over
the **whole batch**, so tokens of neighbouring images end up in each other's rows (a label leak
with class-sorted batches). Here everything is **per image** and the output does not depend on
the batch; ``reference_batch_coupling=True`` reproduces the reference behaviour, leak included,
for demonstration only. ``merge="reference"`` reproduces the reference index mismatch (src token
``k`` averaged into ``best[argsort(sigma)[k]]``); the default ``"corrected"`` uses ``best[k]``.

Deviations in the per-image mode (labelled, configurable where it matters):

* all prefix tokens ([class], distillation, registers) stay in place; the reference drops row 0 only;
* the split uses the exact mean (0) of the standardised score (see :func:`split_mask`), so an
  image's split does not depend on float rounding that changes with the batch;
* when ``|A| <= 2`` the A tokens skip the FFN (the reference drops them, which changes the token
  count; the coupling mode keeps that behaviour);
* ``restore_order=True`` puts every token back at its original position after the block (merged
  dst tokens at the dst positions, residual src at theirs). Attention is permutation-equivariant
  after the position embeddings, so the outputs equal the reordered version; token maps (DAAM)
  stay on the patch grid;
* the block honours timm's LayerScale (``ls1``/``ls2``), ``q_norm``/``k_norm`` and attention
  ``norm`` (the reference ignores them) by calling the block's own attention module.

Average pooling (timm ``global_pool="avg"``): the token count is kept, so pooling still works, but
after a SATA block every src token is counted twice (in its merged dst and as an unprocessed
residual) and merged dst tokens replace originals, so the pooled feature changes in a way the
[class]-token readout of DeiT does not see. SATA was designed for [class]-token models.

Peers at a matched per-image FFN budget (same number of tokens skipping each FFN as SATA):
``grouping="random"`` (a random set A of SATA's size, then the same grouping) and
``grouping="tome"`` (ToMe-style bipartite soft matching on cosine similarity of the tokens over
all patches: the ``r`` most similar src tokens merge into their dst and skip the FFN).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from visionlens.core.vit import find_vit
from visionlens.checks import check_finite, check_number
from visionlens.errors import InputError, LayerError

MERGES = ("corrected", "reference")
GROUPINGS = ("sata", "random", "tome")


@dataclass(frozen=True)
class SataConfig:
    """``gamma``: fraction of blocks **without** SATA (the last ``ceil((1 - gamma) L)`` get it);
    ``alpha``: split bound factor (``<= 0`` disables SATA, as in the reference); ``merge``:
    ``"corrected"`` or ``"reference"`` (index mismatch kept); ``grouping``: ``"sata"`` or a
    matched-budget peer (``"random"``, ``"tome"``); ``reference_batch_coupling``: the reference's
    batch-flattened split and merge (leaks tokens between images; always the floating mean);
    ``restore_order``: tokens back at their positions (per-image mode); ``exact_mean``: split
    around the exact mean 0 (per-image mode; ``False`` is the reference's floating mean, whose
    rounding decides the median token's set); ``seed``: for the random peer."""

    gamma: float = 0.7
    alpha: float = 1.0
    merge: str = "corrected"
    grouping: str = "sata"
    reference_batch_coupling: bool = False
    restore_order: bool = True
    exact_mean: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.merge not in MERGES:
            raise InputError(f"unknown merge {self.merge!r}; choose from: {', '.join(MERGES)}")
        if self.grouping not in GROUPINGS:
            raise InputError(f"unknown grouping {self.grouping!r}; choose from: {', '.join(GROUPINGS)}")
        if not 0.0 <= self.gamma <= 1.0:
            raise InputError(f"gamma must lie in [0, 1] (fraction of blocks without SATA), got {self.gamma}")
        check_number("alpha", self.alpha)  # any finite factor; <= 0 disables SATA
        if self.reference_batch_coupling and self.grouping != "sata":
            raise InputError("reference_batch_coupling only applies to grouping='sata'")


def sata_block_indices(depth: int, gamma: float) -> list[int]:
    """0-based indices of the blocks with SATA: the last ``ceil((1 - gamma) * depth)``."""
    n = math.ceil(round((1.0 - gamma) * depth, 9))
    return list(range(depth - n, depth))


# --- scores and split ---------------------------------------------------------------------------

def global_context(x: torch.Tensor) -> torch.Tensor:
    """``(..., N, C)`` tokens -> ``(..., N)`` channel means."""
    return x.mean(-1)


def standardise(v: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit unbiased std along the last dim (a constant vector gives zeros)."""
    centred = v - v.mean(-1, keepdim=True)
    std = v.std(-1, keepdim=True)
    return torch.where(std > 0, centred / std.clamp_min(torch.finfo(v.dtype).tiny), torch.zeros_like(centred))


def local_morans_i(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``I_i = z_i * sum_j w[j, i] z_j`` for ``z`` ``(..., N)`` and weights ``w`` ``(..., N, N)``
    (the reference's ``diag(z z^T w)``: the weight of pair (i, j) is how much j attends to i)."""
    return z * torch.einsum("...ji,...j->...i", w, z)


def autocorrelation_scores(patches: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """SATA score ``s`` ``(..., N)`` of patch tokens ``(..., N, C)`` with attention weights ``(..., N, N)``."""
    return standardise(local_morans_i(standardise(global_context(patches)), weights))


def split_mask(scores: torch.Tensor, alpha: float = 1.0, exact_mean: bool = False) -> torch.Tensor:
    """Boolean set-B mask ``(..., N)``: scores within ``alpha (mean -+ |median|)`` (lower median).
    ``exact_mean=True`` uses the mean of a standardised score, 0, instead of its floating-point
    value (about 1e-8): the median token lies exactly on a bound, so with the computed mean its set
    is decided by rounding noise, which differs between batched and single-image arithmetic."""
    med = scores.median(-1, keepdim=True).values
    mu = torch.zeros_like(med) if exact_mean else scores.mean(-1, keepdim=True)
    lo, hi = (mu - med.abs()) * alpha, (mu + med.abs()) * alpha
    return (scores >= lo) & (scores <= hi)


# --- grouping -----------------------------------------------------------------------------------

@dataclass
class Grouping:
    """Result of :func:`bipartite_group` on ``(..., n, C)`` tokens: ``merged`` dst tokens
    ``(..., n // 2, C)``, ``residual`` src tokens ``(..., ceil(n / 2), C)`` in residual
    order, ``residual_order`` (src indices of the residual rows, ``(..., n_src)``) and ``target``
    (the dst each src, in src order, was averaged into, ``(..., n_src)``)."""

    merged: torch.Tensor
    residual: torch.Tensor
    residual_order: torch.Tensor
    target: torch.Tensor


def bipartite_group(tokens: torch.Tensor, merge: str = "corrected") -> Grouping:
    """SATA's grouping of set A ``(..., n, C)`` (n >= 2): alternate src/dst, raw dot-product
    similarity, src ``k`` averaged into its best dst (``"corrected"``) or into
    ``best[argsort(sigma, descending)[k]]`` (``"reference"``); residual = all src sorted by sigma."""
    src, dst = tokens[..., 0::2, :], tokens[..., 1::2, :]
    sigma, best = (src @ dst.transpose(-1, -2)).max(dim=-1)
    order = sigma.argsort(dim=-1, descending=True, stable=True)
    target = best if merge == "corrected" else best.gather(-1, order)
    index = target.unsqueeze(-1).expand(*target.shape, tokens.shape[-1])
    merged = dst.scatter_reduce(-2, index, src, reduce="mean", include_self=True)
    residual = src.gather(-2, order.unsqueeze(-1).expand(*order.shape, tokens.shape[-1]))
    return Grouping(merged, residual, order, target)


def _tome_group(patches: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ToMe-style bipartite soft matching (cosine similarity) on ``(N, C)`` patches: the ``r``
    src tokens with the most similar dst merge into it (mean, dst included) and skip the FFN.
    Returns (indices of tokens through the FFN, their values, indices of the skipped tokens)."""
    n = patches.shape[0]
    src_idx, dst_idx = torch.arange(0, n, 2, device=patches.device), torch.arange(1, n, 2, device=patches.device)
    r = min(r, len(src_idx))
    unit = torch.nn.functional.normalize(patches, dim=-1)
    sigma, best = (unit[src_idx] @ unit[dst_idx].T).max(dim=-1)
    order = sigma.argsort(descending=True, stable=True)
    moved, kept = order[:r], order[r:]
    dst = patches[dst_idx].clone()
    if r:
        index = best[moved].unsqueeze(-1).expand(r, patches.shape[1])
        dst = dst.scatter_reduce(0, index, patches[src_idx[moved]], reduce="mean", include_self=True)
    through = torch.cat([src_idx[kept].sort().values, dst_idx])
    values = torch.cat([patches[src_idx[kept].sort().values], dst])
    return through, values, src_idx[moved]


# --- the modified block -------------------------------------------------------------------------

@dataclass
class FfnAccount:
    """FFN work of one forward pass: ``tokens`` per image entering each block, ``ffn_tokens``
    (block index -> ``(B,)`` tokens through that block's FFN; blocks absent ran all tokens) and
    ``flops_per_token`` (``2 * (C * H + H * C)``: multiply-adds of fc1 and fc2 counted as 2)."""

    depth: int
    tokens: int
    flops_per_token: int
    batch: int
    ffn_tokens: dict[int, torch.Tensor] = field(default_factory=dict)

    def tokens_through(self) -> torch.Tensor:
        """``(B, depth)`` tokens through each block's FFN."""
        out = torch.full((self.batch, self.depth), self.tokens, dtype=torch.long)
        for b, n in self.ffn_tokens.items():
            out[:, b] = n
        return out

    def saved_flops(self) -> torch.Tensor:
        """``(B,)`` FFN FLOPs saved per image."""
        return (self.depth * self.tokens - self.tokens_through().sum(1)) * self.flops_per_token

    def total_flops(self) -> int:
        """FFN FLOPs per image of the plain model."""
        return self.depth * self.tokens * self.flops_per_token


def _is_prenorm_block(block: nn.Module) -> bool:
    return _block_parts(block) is not None


@dataclass
class BlockParts:
    """The pieces of a pre-norm block SATA calls: ``norm1``, the attention output's ``drop1`` and
    ``ls1`` (identity when absent), ``norm2``, ``mlp``, its ``fc1`` (FLOP count) and ``drop2``/``ls2``."""

    norm1: nn.Module
    drop1: nn.Module
    ls1: nn.Module
    norm2: nn.Module
    mlp: nn.Module
    fc1: nn.Linear
    drop2: nn.Module
    ls2: nn.Module


def _module(block: nn.Module, name: str) -> nn.Module:
    part = getattr(block, name, None)
    return part if isinstance(part, nn.Module) else nn.Identity()


def _block_parts(block: nn.Module) -> BlockParts | None:
    """The parts of a timm / world ``Block``, a Hugging Face ``ViTLayer`` (transformers 5) or a
    torchvision ``EncoderBlock``; None for any other block."""
    from visionlens.models.world_models import Block as WorldBlock

    cls = type(block)
    if isinstance(block, WorldBlock) or (cls.__module__.startswith("timm.") and cls.__name__ == "Block"):
        return BlockParts(block.norm1, _module(block, "drop_path1"), _module(block, "ls1"), block.norm2, block.mlp,
                          block.mlp.fc1, _module(block, "drop_path2"), _module(block, "ls2"))
    if cls.__module__.startswith("transformers.") and isinstance(getattr(getattr(block, "mlp", None), "fc1", None), nn.Linear):
        return BlockParts(block.layernorm_before, block.dropout, nn.Identity(), block.layernorm_after, block.mlp,
                          block.mlp.fc1, block.dropout, nn.Identity())
    if cls.__module__.startswith("torchvision.") and cls.__name__ == "EncoderBlock":
        return BlockParts(block.ln_1, block.dropout, nn.Identity(), block.ln_2, block.mlp, block.mlp[0],
                          nn.Identity(), nn.Identity())
    return None


class SataBlock(nn.Module):
    """A pre-norm ViT block (``norm1, attn, [ls1], norm2, mlp, [ls2]``) with SATA before its FFN."""

    def __init__(self, block: nn.Module, vit_block, adapter, index: int, prefix: int, config: SataConfig,
                 account: FfnAccount):
        super().__init__()
        self.block, self.vit_block, self.adapter = block, vit_block, adapter
        self.index, self.prefix, self.config, self.account = index, prefix, config, account
        self.parts = _block_parts(block)

    def _attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention branch output and the head-mean map: timm-style blocks call their own
        module (hooks included); Hugging Face and torchvision blocks are computed from their
        projections (one softmax, no second pass)."""
        if self.adapter.family != "timm":
            h = self.parts.norm1(x)
            q, k, v, scale = self.adapter.qkv(self.vit_block, h)
            probs = ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            u = (probs @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
            return self.adapter.project(self.vit_block, h, u), probs.mean(1)
        attn, captured = self.block.attn, []
        drop = getattr(attn, "attn_drop", None)
        handle = drop.register_forward_hook(lambda m, i, o: captured.append(o)) if isinstance(drop, nn.Module) else None
        fused = getattr(attn, "fused_attn", None)
        if fused:
            attn.fused_attn = False
        try:
            h = self.block.norm1(x)
            out = attn(h)
        finally:
            if handle is not None:
                handle.remove()
            if fused:
                attn.fused_attn = fused
        if len(captured) == 1 and captured[0].shape[-1] == x.shape[1]:
            probs = captured[0]
        else:  # no explicit softmax seen: recompute it
            q, k, _, scale = self.adapter.qkv(self.vit_block, h)
            probs = ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return out, probs.mean(1)

    def _ffn(self, y: torch.Tensor) -> torch.Tensor:
        parts = self.parts
        return y + parts.drop2(parts.ls2(parts.mlp(parts.norm2(y))))

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        mask = args[0] if args else kwargs.get("attn_mask", kwargs.get("attention_mask"))
        if mask is not None or kwargs.get("is_causal"):
            raise LayerError("SATA does not support attention masks")
        out, mean_attn = self._attention(x)
        x = x + self.parts.drop1(self.parts.ls1(out))
        if self.config.reference_batch_coupling:
            return self._coupled(x, mean_attn)
        return self._per_image(x, mean_attn)

    # per image: batch-independent
    def _per_image(self, x: torch.Tensor, mean_attn: torch.Tensor) -> torch.Tensor:
        p = self.prefix
        patches = x[:, p:]
        in_b = split_mask(autocorrelation_scores(patches, mean_attn[:, p:, p:]), self.config.alpha,
                          exact_mean=self.config.exact_mean)
        plans = [self._plan(patches[i], in_b[i]) for i in range(x.shape[0])]
        ffn_in = torch.cat([torch.cat([x[i, :p], plan[1]]) for i, plan in enumerate(plans)])
        ffn_out = self._ffn(ffn_in).split([p + len(plan[1]) for plan in plans])
        rows = []
        for (through, _, skipped, skipped_values), y in zip(plans, ffn_out):
            row = torch.cat([y, skipped_values])
            if self.config.restore_order:
                row = row[torch.cat([torch.arange(p, device=x.device), through + p, skipped + p]).argsort()]
            rows.append(row)
        self.account.ffn_tokens[self.index] = torch.tensor([p + len(plan[1]) for plan in plans])
        return torch.stack(rows)

    def _plan(self, patches: torch.Tensor, in_b: torch.Tensor):
        """One image: (patch indices through the FFN, their values, skipped patch indices, the
        skipped tokens' values), in output order."""
        cfg, n = self.config, patches.shape[0]
        n_a = int((~in_b).sum())
        if cfg.grouping == "tome":  # same number of FFN-skipping tokens as SATA
            through, values, skipped = _tome_group(patches, n_a if n_a <= 2 else (n_a + 1) // 2)
            return through, values, skipped, patches[skipped]
        if cfg.grouping == "random":  # a random set A of SATA's size (depends on the seed, block and size only)
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.index * 10_007 + n_a)
            in_b = torch.ones(n, dtype=torch.bool)
            in_b[torch.randperm(n, generator=g)[:n_a]] = False
            in_b = in_b.to(patches.device)
        idx_b, idx_a = in_b.nonzero().squeeze(1), (~in_b).nonzero().squeeze(1)
        if len(idx_a) <= 2:  # no grouping: set A skips the FFN (the reference drops it)
            return idx_b, patches[idx_b], idx_a, patches[idx_a]
        grouping = bipartite_group(patches[idx_a], cfg.merge)
        src, dst = idx_a[0::2], idx_a[1::2]
        return (torch.cat([idx_b, dst]), torch.cat([patches[idx_b], grouping.merged]),
                src[grouping.residual_order], grouping.residual)

    # the reference code's batch-coupled split and merge (demonstration of the leak)
    def _coupled(self, x: torch.Tensor, mean_attn: torch.Tensor) -> torch.Tensor:
        p, cfg = self.prefix, self.config
        bsz, _, c = x.shape
        patches = x[:, p:]
        scores = autocorrelation_scores(patches, mean_attn[:, p:, p:])
        in_b = split_mask(scores, cfg.alpha)
        total = int(in_b.sum())
        excess = total - (total // bsz) * bsz
        if excess:  # the globally lowest-scored set-B tokens move to set A
            where = in_b.nonzero()
            lowest = scores[in_b].sort(stable=True).indices[:excess]
            in_b[where[lowest, 0], where[lowest, 1]] = False
        set_b = patches[in_b].reshape(bsz, -1, c)
        set_a = patches[~in_b].reshape(bsz, -1, c)
        residual = None
        if set_a.shape[1] > 2:
            grouping = bipartite_group(set_a, cfg.merge)
            y = torch.cat([x[:, :p], set_b, grouping.merged], dim=1)
            residual = grouping.residual
        else:  # the reference drops set A
            y = torch.cat([x[:, :p], set_b], dim=1)
        self.account.ffn_tokens[self.index] = torch.full((bsz,), y.shape[1])
        y = self._ffn(y)
        return y if residual is None else torch.cat([y, residual], dim=1)


class SataViT(nn.Module):
    """``model`` (a pre-norm ViT: the project's ``WorldViT``, a timm ``VisionTransformer``, a
    Hugging Face ``ViTModel`` / ``ViTForImageClassification`` or a torchvision ``VisionTransformer``) with SATA in its last blocks. The wrapped model is not changed: the
    blocks are swapped in for each forward pass only. ``last_account`` holds the FFN accounting
    of the latest call. With ``enabled=False`` it is the plain model."""

    def __init__(self, model: nn.Module, config: SataConfig | None = None, enabled: bool = True):
        super().__init__()
        self.model, self.config, self.enabled = model, config or SataConfig(), enabled
        self.adapter = find_vit(model)
        container = model.get_submodule(self.adapter.blocks_name)
        bad = [type(b).__name__ for b in container if not _is_prenorm_block(b)]
        if bad:
            raise LayerError(f"SATA needs pre-norm ViT blocks (timm Block, Hugging Face ViTLayer or torchvision "
                             f"EncoderBlock); found {bad[0]}")
        self.depth = len(container)
        self.indices = sata_block_indices(self.depth, self.config.gamma)
        fc1 = _block_parts(container[0]).fc1
        self.flops_per_token = 4 * fc1.in_features * fc1.out_features
        self.last_account: FfnAccount | None = None

    @contextmanager
    def patched(self, batch: int, tokens: int):
        """Swap the SATA blocks in; yields the :class:`FfnAccount` the blocks fill."""
        account = FfnAccount(self.depth, tokens, self.flops_per_token, batch)
        container = self.model.get_submodule(self.adapter.blocks_name)
        originals = {i: container[i] for i in self.indices} if self.enabled and self.config.alpha > 0 else {}
        for i, block in originals.items():
            container[i] = SataBlock(block, self.adapter.blocks[i], self.adapter, i, self.adapter.num_prefix_tokens,
                                     self.config, account)
        try:
            yield account
        finally:
            for i, block in originals.items():
                container[i] = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.adapter.check_input(x)
        check_finite("the input batch", x)  # NaN pixels would give NaN logits without a word
        grid = self.adapter.grid(tuple(x.shape[-2:]))
        with self.patched(x.shape[0], grid[0] * grid[1] + self.adapter.num_prefix_tokens) as account:
            out = self.model(x)
        self.last_account = account
        return out
