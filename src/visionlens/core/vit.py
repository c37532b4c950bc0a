"""Vision Transformer adapters: the blocks, their attention modules and pre-attention norms, the
number of prefix tokens and the (possibly non-square) patch grid, for timm ViT/DeiT (distilled and
register-token variants included, DINOv2 among them), torchvision ``VisionTransformer``, Hugging
Face ``ViTModel``/``ViTForImageClassification`` and ``Dinov2Model``/``Dinov2ForImageClassification``
(registers included), and timm-like models (``blocks[i].attn.qkv``, e.g. the
project's ``WorldViT`` or DINO's ViT).

:class:`AttentionRecorder` recomputes every block's attention explicitly,
``A^h = softmax(q_norm(Q^h) k_norm(K^h)^T * scale + B^h)``, whatever kernel the model uses (fused
SDPA included; ``B``: an additive bias such as BEiT's relative position bias, timm's or Hugging
Face's, with timm BEiT's separate ``q_bias``/``v_bias`` in ``Q`` and ``V``), and replaces the attention output by the identical recomputation
``proj(concat_h(A^h V^h))``, so that the projection input ``U`` of every block is an autograd
node and its [class] row can be decomposed over the source tokens. The recomputation is checked
against the module's own output on every call (to 1e-5 in float32); a variant it does not
reproduce (boolean masks, RoPE, ...) stops with a :class:`LayerError` instead of giving silently wrong maps.

Swin Transformers (timm and Hugging Face, :class:`SwinAdapter`) are recognised for their token
layers only (reshaped to each stage's grid): they have no [class] token and attend within
windows, so :func:`find_vit` refuses them with a line naming the Grad-CAM layer to use instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, LayerError
from .layers import layer_name


@dataclass
class ViTBlock:
    """One transformer block: its dotted ``name``, the name of its pre-attention norm
    (``norm1``; Grad-CAM's ViT layer), its attention module and the attention kind
    (``qkv``: timm-like fused ``qkv`` linear; ``mha``: ``nn.MultiheadAttention``; ``hf``: Hugging
    Face ``q_proj/k_proj/v_proj/o_proj``; ``hf4``: older Hugging Face ``attention.query/...``)."""

    index: int
    name: str
    norm1: str
    attn: nn.Module
    kind: str


@dataclass
class ViTAdapter:
    """What DAAM, rollout and ViT Grad-CAM need to know about a ViT (see :func:`find_vit`)."""

    model: nn.Module
    family: str
    blocks_name: str
    blocks: list[ViTBlock]
    patch_embed: nn.Conv2d
    num_prefix_tokens: int | None
    has_class_token: bool  # the head reads a [class] token (not, e.g., the mean of the patch tokens)
    input_size: tuple[int, int] | None = None
    notes: dict = field(default_factory=dict)

    # -- geometry -------------------------------------------------------------------------------
    def grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """Patch grid ``(h, w)`` for an input of spatial ``size`` (from the patch convolution; a
        timm ``dynamic_img_pad`` model pads the input to whole patches)."""
        conv = self.patch_embed
        out = []
        for i, n in enumerate(size):
            k, s, p = conv.kernel_size[i], conv.stride[i], conv.padding[i] if isinstance(conv.padding, tuple) else 0
            out.append(-(-int(n) // s) if self.notes.get("pad") else (int(n) + 2 * p - k) // s + 1)
        return out[0], out[1]

    def resize(self, maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Bilinear resize of ``(B, L, h, w)`` patch-grid maps to the image ``size``; a padded grid
        (timm ``dynamic_img_pad``: padding right and bottom) is resized to the padded image, then cropped."""
        size = tuple(int(n) for n in size)
        if not self.notes.get("pad") or tuple(maps.shape[-2:]) != self.grid(size):
            return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        (h, w), (sh, sw) = maps.shape[-2:], self.patch_embed.stride
        return F.interpolate(maps, size=(h * sh, w * sw), mode="bilinear", align_corners=False)[..., :size[0], :size[1]]

    def normalize(self, raw: torch.Tensor, size: tuple[int, int], relu: bool = True) -> torch.Tensor:
        """:func:`~visionlens.core.result.normalize_maps` of ``(B, h, w)`` maps, a padded grid cropped
        to the image first (see :meth:`resize`)."""
        from .result import normalize_maps

        if self.notes.get("pad") and tuple(raw.shape[-2:]) == self.grid(size):
            raw = self.resize((raw.float().clamp_min(0) if relu else raw.float())[:, None], size)[:, 0]
        return normalize_maps(raw, size, relu=relu)

    def check_input(self, x: torch.Tensor) -> None:
        """One-line :class:`InputError` when ``x``'s channels or size do not fit the model (a fixed
        patch grid, or timm's ``dynamic_img_size`` without padding: whole patches)."""
        h, w = x.shape[-2:]
        c = self.patch_embed.in_channels
        if x.dim() == 4 and x.shape[1] != c and x.shape[-1] == c:  # before the size: its message would mislead
            raise InputError(f"the input has {x.shape[1]} channels but a convolution of the model takes {c}; give "
                             f"the model {c}-channel images; the batch looks channels-last (B, H, W, C): give "
                             "x.permute(0, 3, 1, 2)")
        if self.input_size is not None and (h, w) != tuple(self.input_size):
            eh, ew = self.input_size
            raise InputError(
                f"{type(self.model).__name__} expects {eh}x{ew} inputs (its patch grid and position embeddings are "
                f"fixed), got {h}x{w}; resize the images to {eh}x{ew}"
            )
        kh, kw = self.patch_embed.kernel_size
        if h < kh or w < kw:
            raise InputError(f"input {h}x{w} is smaller than one {kh}x{kw} patch of {type(self.model).__name__}")
        if self.notes.get("whole_patches") and (h % kh or w % kw):
            fit = f"{max(kh, round(h / kh) * kh)}x{max(kw, round(w / kw) * kw)}"
            raise InputError(f"{type(self.model).__name__} takes inputs of whole {kh}x{kw} patches, got {h}x{w}; "
                             f"resize the images to a multiple of {kh}x{kw}, e.g. {fit}")

    def prefix_tokens(self, num_tokens: int, grid: tuple[int, int]) -> int:
        """Number of non-patch tokens ([class], distillation, registers) in a sequence of
        ``num_tokens``, checked against what the model declares."""
        prefix = num_tokens - grid[0] * grid[1]
        if prefix < 0 or (self.num_prefix_tokens is not None and prefix != self.num_prefix_tokens):
            raise LayerError(
                f"{type(self.model).__name__}: {num_tokens} tokens do not match a {grid[0]}x{grid[1]} patch grid plus "
                f"{self.num_prefix_tokens} prefix token(s); is the input size the one the model was built for?"
            )
        return prefix

    def tokens_to_grid(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """``(B, N, C)`` tokens -> ``(B, C, h, w)`` map of the patch tokens (all prefix tokens dropped)."""
        prefix = self.prefix_tokens(tokens.shape[1], grid)
        return tokens[:, prefix:].reshape(tokens.shape[0], grid[0], grid[1], tokens.shape[2]).permute(0, 3, 1, 2)

    # -- attention ------------------------------------------------------------------------------
    def qkv(self, block: ViTBlock, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
        """``(Q, K, V, scale)`` of ``block`` for its input ``x`` (``(B, N, C)``); ``Q, K, V`` are
        ``(B, heads, N, d)`` with ``q_norm``/``k_norm`` applied."""
        a, (b, n, _) = block.attn, x.shape
        if block.kind == "qkv":
            heads = a.num_heads
            qkv = a.qkv(x) if getattr(a, "q_bias", None) is None else _biased_qkv(a, x)
            d = qkv.shape[-1] // (3 * heads)
            q, k, v = qkv.reshape(b, n, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
            if isinstance(getattr(a, "q_norm", None), nn.Module):
                q = a.q_norm(q)
            if isinstance(getattr(a, "k_norm", None), nn.Module):
                k = a.k_norm(k)
            return q, k, v, float(getattr(a, "scale", d**-0.5))
        if block.kind == "mha":
            heads = a.num_heads
            q, k, v = F.linear(x, a.in_proj_weight, a.in_proj_bias).chunk(3, dim=-1)
            d = q.shape[-1] // heads
            q, k, v = (t.reshape(b, n, heads, d).transpose(1, 2) for t in (q, k, v))
            return q, k, v, d**-0.5
        if block.kind == "hf":
            d = a.head_dim
            q, k, v = (p(x).reshape(b, n, -1, d).transpose(1, 2) for p in (a.q_proj, a.k_proj, a.v_proj))
            return q, k, v, float(a.scaling)
        sa = a.attention  # hf4
        d = sa.attention_head_size
        q, k, v = (p(x).reshape(b, n, -1, d).transpose(1, 2) for p in (sa.query, sa.key, sa.value))
        return q, k, v, float(getattr(sa, "scaling", d**-0.5))

    def project(self, block: ViTBlock, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The attention module's output for the head-concatenated ``u = concat_h(A^h V^h)``."""
        a = block.attn
        if block.kind == "qkv":
            norm = getattr(a, "norm", None)
            if isinstance(norm, nn.Module):
                u = norm(u)
            gate = getattr(a, "gate", None)
            if isinstance(gate, nn.Module):
                u = u * gate(x).sigmoid()
            return a.proj(u)
        if block.kind == "mha":
            return F.linear(u, a.out_proj.weight, a.out_proj.bias)
        if block.kind == "hf":
            return a.o_proj(u)
        return a.output.dense(u)

    def input_of(self, block: ViTBlock, args: tuple, kwargs: dict) -> torch.Tensor:
        """The token input of ``block``'s attention call; unsupported call patterns raise."""
        if block.kind == "mha":
            q, k, v = (list(args) + [kwargs.get(n) for n in ("query", "key", "value")][len(args):])[:3]
            if not (q is k is v) or kwargs.get("attn_mask") is not None or kwargs.get("key_padding_mask") is not None:
                raise LayerError(f"block '{block.name}': only unmasked self-attention is supported")
            if not block.attn.batch_first:
                raise LayerError(f"block '{block.name}': nn.MultiheadAttention must use batch_first=True")
            return q
        x = args[0] if args else kwargs.get("x", kwargs.get("hidden_states"))
        mask = _mask_of(args, kwargs)
        if kwargs.get("is_causal") or (mask is not None and not (torch.is_tensor(mask) and mask.is_floating_point())):
            raise LayerError(f"block '{block.name}': boolean or causal attention masks are not supported")
        return x

    def logit_bias(self, block: ViTBlock, args: tuple, kwargs: dict) -> torch.Tensor | None:
        """The additive term on ``block``'s attention logits ``Q K^T * scale``, or None: a float
        attention mask (Hugging Face BEiT passes its relative position bias so) and timm BEiT's
        relative position bias (its own table and a shared one)."""
        if block.kind == "mha":
            return None
        terms = [_mask_of(args, kwargs)]
        if block.kind == "qkv":
            a = block.attn
            if getattr(a, "relative_position_bias_table", None) is not None and hasattr(a, "_get_rel_pos_bias"):
                terms.append(a._get_rel_pos_bias())
            terms.append(args[2] if len(args) > 2 else kwargs.get("shared_rel_pos_bias"))
        terms = [t for t in terms if t is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def wrap(self, block: ViTBlock, original, new: torch.Tensor):
        """``new`` in the structure of the module's original output (tuple outputs kept)."""
        if isinstance(original, tuple):
            return (new,) + tuple(original[1:])
        return new


def _mask_of(args: tuple, kwargs: dict):
    """The attention mask of an attention call (second argument, ``attn_mask`` or ``attention_mask``)."""
    return args[1] if len(args) > 1 else kwargs.get("attn_mask", kwargs.get("attention_mask"))


def _biased_qkv(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm BEiT's ``qkv`` with its separate ``q_bias``, ``k_bias`` (zeros) and ``v_bias``."""
    bias = torch.cat((attn.q_bias, attn.k_bias if attn.k_bias is not None else torch.zeros_like(attn.q_bias),
                      attn.v_bias))
    if getattr(attn, "qkv_bias_separate", False):
        return attn.qkv(x) + bias
    return F.linear(x, attn.qkv.weight, bias)


def _linear_qkv(attn: nn.Module) -> bool:
    return isinstance(getattr(attn, "qkv", None), nn.Linear) and isinstance(getattr(attn, "proj", None), nn.Linear) \
        and isinstance(getattr(attn, "num_heads", None), int)


def _first_patch_conv(model: nn.Module) -> nn.Conv2d | None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == m.stride and m.kernel_size[0] > 1:
            return m
    return None


def _timm_patching(pe) -> dict:
    """How a timm ``PatchEmbed`` takes sizes: ``pad`` (``dynamic_img_pad``: padded to whole
    patches) or ``whole_patches`` (a free size must be a multiple of the patch)."""
    pad = bool(getattr(pe, "dynamic_img_pad", False))
    free = getattr(pe, "img_size", None) is not None and not getattr(pe, "strict_img_size", True)
    return {"pad": pad, "whole_patches": free and not pad}


def find_vit(model: nn.Module) -> ViTAdapter:
    """Recognise ``model`` as a ViT and describe it; a :class:`LayerError` (one line) otherwise."""
    name_of = lambda m: layer_name(model, m)  # noqa: E731
    # torchvision VisionTransformer
    if isinstance(getattr(model, "conv_proj", None), nn.Conv2d) and hasattr(getattr(model, "encoder", None), "layers"):
        blocks = [ViTBlock(i, name_of(b), name_of(b.ln_1), b.self_attention, "mha")
                  for i, b in enumerate(model.encoder.layers) if isinstance(getattr(b, "self_attention", None), nn.MultiheadAttention)]
        if blocks:
            size = getattr(model, "image_size", None)
            return ViTAdapter(model, "torchvision", name_of(model.encoder.layers), blocks, model.conv_proj, 1,
                              hasattr(model, "class_token"), (size, size) if isinstance(size, int) else None)
    # Hugging Face ViT and DINOv2 (with or without registers): Model or ForImageClassification
    hf = _find_hf_vit(model, name_of)
    if hf is not None:
        return hf
    swin = find_swin(model)
    if swin is not None:
        raise LayerError(swin.refusal())
    # timm ViT/DeiT and timm-like models (blocks[i].attn.qkv)
    container = getattr(model, "blocks", None)
    if isinstance(container, (nn.Sequential, nn.ModuleList)) and len(container) and all(
        _linear_qkv(getattr(b, "attn", None)) for b in container
    ):
        blocks = [ViTBlock(i, name_of(b), name_of(b.norm1) if isinstance(getattr(b, "norm1", None), nn.Module) else name_of(b),
                           b.attn, "qkv") for i, b in enumerate(container)]
        pe = getattr(model, "patch_embed", None)
        conv = getattr(pe, "proj", None)
        conv = conv if isinstance(conv, nn.Conv2d) else _first_patch_conv(model)
        if conv is None:
            raise LayerError(f"{type(model).__name__}: no patch-embedding convolution found; cannot infer the patch grid")
        prefix = getattr(model, "num_prefix_tokens", None)
        has_cls = getattr(model, "cls_token", None) is not None
        if prefix is None:
            prefix = int(has_cls) + int(getattr(model, "dist_token", None) is not None)
            reg = getattr(model, "reg_token", None)
            prefix += reg.shape[1] if torch.is_tensor(reg) else 0
        size = None
        if pe is not None and not getattr(pe, "dynamic_img_size", False) and not getattr(model, "dynamic_img_size", False):
            img = getattr(pe, "img_size", None)
            if img is not None and getattr(pe, "strict_img_size", True):
                size = tuple(img) if not isinstance(img, int) else (img, img)
            elif img is None and getattr(pe, "grid_size", None) is not None and torch.is_tensor(getattr(model, "pos_embed", None)):
                size = (pe.grid_size[0] * conv.stride[0], pe.grid_size[1] * conv.stride[1])
        pool = getattr(model, "global_pool", None)  # timm: "token" reads the [class] token, "avg" the patch mean
        reads_cls = has_cls and not (isinstance(pool, str) and pool not in ("token", ""))
        return ViTAdapter(model, "timm", name_of(container), blocks, conv, int(prefix), reads_cls, size,
                          _timm_patching(pe))
    raise LayerError(
        f"{type(model).__name__} is not a recognised Vision Transformer (timm ViT/DeiT, torchvision VisionTransformer, "
        "Hugging Face ViT or DINOv2, or a model with blocks[i].attn.qkv); use a CNN method such as gradcam"
    )


HF_HEADS = ("classifier", "cls_classifier")
"""Attributes holding a Hugging Face ViT's classifier (``cls_classifier``: distilled DeiT's, whose
logits are the mean of it and its ``distillation_classifier``)."""


def is_headless(model: nn.Module, adapter: ViTAdapter) -> bool:
    """Whether the model outputs an embedding (no classifier head) rather than class logits."""
    if adapter.family == "huggingface":
        return not any(isinstance(getattr(model, name, None), nn.Module) for name in HF_HEADS)
    if adapter.family == "torchvision":
        return False
    head = getattr(model, "head", None)
    return isinstance(head, nn.Identity) or getattr(model, "num_classes", None) == 0


def recognised_vit(model: nn.Module) -> ViTAdapter | None:
    """:func:`find_vit`'s adapter, or None where it would refuse the model."""
    try:
        return find_vit(model)
    except LayerError:
        return None


def _hf_core(model: nn.Module) -> nn.Module:
    """The backbone of a Hugging Face classifier (``.vit``, ``.deit``, ``.beit``, ``.dinov2``,
    ``.swin``), or ``model``."""
    for attr in ("vit", "deit", "beit", "dinov2", "dinov2_with_registers", "swin"):
        core = getattr(model, attr, None)
        if isinstance(core, nn.Module):
            return core
    return model


def _find_hf_vit(model: nn.Module, name_of) -> ViTAdapter | None:
    """The adapter of a Hugging Face ViT, DeiT, BEiT or DINOv2 (pre-attention norm
    ``layernorm_before`` or ``norm1``; DINOv2 interpolates its position embeddings, so any input
    size fits), else None. A BEiT classifying the mean of its patch tokens has no [class] token in
    its prediction (``has_class_token`` False)."""
    core = _hf_core(model)
    emb = getattr(core, "embeddings", None)
    layers = getattr(core, "layers", None)  # transformers 5; older versions: encoder.layer
    layers = layers if isinstance(layers, nn.ModuleList) else getattr(getattr(core, "encoder", None), "layer", None)
    if emb is None or not isinstance(layers, nn.ModuleList) or not hasattr(emb, "patch_embeddings"):
        return None
    blocks = []
    for i, b in enumerate(layers):
        norm = getattr(b, "layernorm_before", getattr(b, "norm1", None))
        if not isinstance(norm, nn.Module) or not isinstance(getattr(b, "attention", None), nn.Module):
            raise LayerError(f"{type(model).__name__}: block {i} ({type(b).__name__}) has no pre-attention norm "
                             "(layernorm_before or norm1); this Hugging Face transformer is not supported")
        kind = "hf" if hasattr(b.attention, "q_proj") else "hf4"
        blocks.append(ViTBlock(i, name_of(b), name_of(norm), b.attention, kind))
    registers = getattr(emb, "register_tokens", None)
    has_cls = getattr(emb, "cls_token", None) is not None
    distillation = getattr(emb, "distillation_token", None) is not None  # DeiT
    prefix = int(has_cls) + int(distillation) + (registers.shape[1] if torch.is_tensor(registers) else 0)
    if getattr(getattr(core, "config", None), "use_mean_pooling", False):  # BEiT: the head reads the patch mean
        has_cls = False
    size = None
    if "dinov2" not in type(emb).__name__.lower():  # ViT: fixed position embeddings
        size = getattr(getattr(core, "config", None), "image_size", None)
        size = (size, size) if isinstance(size, int) else (tuple(size) if size is not None else None)
    return ViTAdapter(model, "huggingface", name_of(layers), blocks, emb.patch_embeddings.projection, prefix,
                      has_cls, size)


@dataclass
class SwinAdapter:
    """A Swin Transformer (timm and torchvision ``SwinTransformer``, Hugging Face
    ``SwinModel``/``SwinFor...``): its patch convolution, the names of every block's pre-attention
    norm (stage by stage) and whether its token layers are channels-last ``(B, H, W, C)`` (timm,
    torchvision) or ``(B, H*W, C)`` (HF).
    Swin has no [class] token and attends within windows; the stage grids halve at each stage."""

    model: nn.Module
    family: str
    patch_embed: nn.Conv2d
    norms: list[str]
    stages: int
    channels_last: bool

    def grids(self, size: tuple[int, int]) -> list[tuple[int, int]]:
        """The token grid of every stage (and one more) for an input of spatial ``size``."""
        (kh, kw), (sh, sw) = self.patch_embed.kernel_size, self.patch_embed.stride
        h, w = -(-int(size[0]) // sh), -(-int(size[1]) // sw)  # the patch embedding pads to whole patches
        out = []
        for _ in range(self.stages + 1):
            out.append((h, w))
            h, w = -(-h // 2), -(-w // 2)
        return out

    def refusal(self) -> str:
        """Why the ViT attention methods (DAAM, rollout, Chefer, LeGrad, AttnLRP) do not apply, and what to use instead."""
        return (f"Swin has no [class] token: {type(self.model).__name__} averages its patch tokens and attends within "
                "windows, so the ViT attention methods (daam, rollout, chefer, legrad, attnlrp) do not apply; use "
                f"gradcam on layer '{self.norms[-1]}'")

    def token_transform(self, name: str, x: torch.Tensor, tokens: torch.Tensor):
        """The function turning the layer's tokens ``(B, N, C)`` or channels-last ``(B, h, w, C)``
        into ``(B, C, h, w)``; a :class:`LayerError` for window tokens or an unknown grid."""
        grids = self.grids(tuple(x.shape[-2:]))
        if tokens.shape[0] != x.shape[0]:
            raise LayerError(f"layer '{name}' outputs attention windows {tuple(tokens.shape)} of "
                             f"{type(self.model).__name__}, not the image's tokens; choose a block's norm, "
                             f"e.g. '{self.norms[-1]}'")
        if tokens.dim() == 4:
            if tuple(tokens.shape[1:3]) not in grids:
                raise LayerError(f"layer '{name}' output {tuple(tokens.shape)} is not on a stage grid {grids}; "
                                 f"choose a block's norm, e.g. '{self.norms[-1]}'")
            return lambda t: t.permute(0, 3, 1, 2)
        grid = next((g for g in grids if g[0] * g[1] == tokens.shape[1]), None)
        if grid is None:
            raise LayerError(f"layer '{name}': {tokens.shape[1]} tokens match no stage grid {grids} of "
                             f"{type(self.model).__name__}; choose a block's norm, e.g. '{self.norms[-1]}'")
        return lambda t: t.reshape(t.shape[0], grid[0], grid[1], t.shape[2]).permute(0, 3, 1, 2)


def _torchvision_swin(model: nn.Module) -> SwinAdapter | None:
    """torchvision's ``SwinTransformer`` (v1 and v2): ``features[0][0]`` the patch convolution, then
    stages of blocks whose ``attn`` has a ``window_size``; every token layer is channels-last."""
    features = getattr(model, "features", None)
    if not (isinstance(features, nn.Sequential) and len(features) and isinstance(features[0], nn.Sequential)
            and len(features[0]) and isinstance(features[0][0], nn.Conv2d)):
        return None
    stages = [stage for stage in features[1:] if isinstance(stage, nn.Sequential) and len(stage) and all(
        hasattr(getattr(b, "attn", None), "window_size") and isinstance(getattr(b, "norm1", None), nn.Module)
        for b in stage)]
    if not stages:
        return None
    norms = [layer_name(model, b.norm1) for stage in stages for b in stage]
    return SwinAdapter(model, "torchvision-swin", features[0][0], norms, len(stages), True)


def find_swin(model: nn.Module) -> SwinAdapter | None:
    """Recognise a timm, torchvision or Hugging Face Swin Transformer (stages of windowed blocks);
    None otherwise."""
    torchvision_swin = _torchvision_swin(model)
    if torchvision_swin is not None:
        return torchvision_swin
    core = _hf_core(model)
    emb, encoder = getattr(core, "embeddings", None), getattr(core, "encoder", None)
    hf = emb is not None and hasattr(emb, "patch_embeddings")
    if hf and isinstance(getattr(encoder, "layers", None), nn.ModuleList):
        stages, norm, family = encoder.layers, "layernorm_before", "huggingface-swin"
        conv = emb.patch_embeddings.projection
    else:
        stages, norm, family = getattr(model, "layers", None), "norm1", "timm-swin"
        conv = getattr(getattr(model, "patch_embed", None), "proj", None)
    if not isinstance(stages, (nn.Sequential, nn.ModuleList)) or not len(stages) or not isinstance(conv, nn.Conv2d):
        return None
    blocks = [b for stage in stages for b in (getattr(stage, "blocks", None) or [])]
    windowed = all(hasattr(b, "window_size") and isinstance(getattr(b, norm, None), nn.Module) for b in blocks)
    if not blocks or not windowed:
        return None
    norms = [layer_name(model, getattr(b, norm)) for b in blocks]
    return SwinAdapter(model, family, conv, norms, len(stages), family == "timm-swin")


def model_output(output) -> torch.Tensor:
    """The tensor to explain from a model's output: a tensor as is, ``.logits`` of a Hugging Face
    classifier, the [class] token of ``.last_hidden_state`` (a headless Hugging Face ViT), the
    ``out`` tensor of a dict (a torchvision segmentation model's ``OrderedDict``), the ``logits``
    tensor of a dict, or a dict's, tuple's or list's only tensor. A tuple or list of several tensors
    (``(features, logits)``) is an :class:`AmbiguousOutputError`: which one holds the scores?"""
    if torch.is_tensor(output):
        return output
    if torch.is_tensor(getattr(output, "logits", None)):
        return output.logits
    if torch.is_tensor(getattr(output, "last_hidden_state", None)):  # before the dict case: a ModelOutput is a dict
        return output.last_hidden_state[:, 0]
    if isinstance(output, dict):
        for key in ("out", "logits"):
            if torch.is_tensor(output.get(key)):
                return output[key]
        tensors = [value for value in output.values() if torch.is_tensor(value)]
        if len(tensors) == 1:
            return tensors[0]
    if isinstance(output, (tuple, list)):
        tensors = [value for value in output if torch.is_tensor(value)]
        if len(tensors) == 1:
            return tensors[0]
        if len(tensors) > 1:
            shapes = ", ".join(str(tuple(t.shape)) for t in tensors[:4])
            raise AmbiguousOutputError(
                f"the model returns a {type(output).__name__} of {len(tensors)} tensors ({shapes}), so which one holds "
                "the class scores is ambiguous; make it return the logits (wrap it in a module whose forward picks "
                "them) or give a callable target that picks the score from the output")
    raise InputError(f"cannot find a tensor in the model output of type {type(output).__name__}")


class AmbiguousOutputError(InputError):
    """A model output with several tensors, none of which is named as the scores."""


def check_output_finite(output, where: str = "the model's output") -> None:
    """One :class:`InputError` line when a float tensor the model computed for a finite input holds
    NaN or infinite values for every image of the batch (a NaN parameter): no map could mean
    anything. Where only some images' values are not finite (a float16 overflow on one image), their
    maps are not finite either, and the others are explained (a command reports those images)."""
    if torch.is_tensor(output) and output.is_floating_point() and output.numel():
        rows = torch.isfinite(output).flatten(1).all(1) if output.dim() > 1 else torch.isfinite(output)
        if not bool(rows.any()):
            raise InputError(f"{where} contains NaN or infinite values for every image of a finite input; check the "
                             "model's weights (a NaN or infinite parameter) and numerics (float16 overflow)")


def finite_model_output(output) -> torch.Tensor:
    """:func:`model_output`, checked by :func:`check_output_finite`: what a method explains."""
    scores = model_output(output)
    check_output_finite(scores)
    return scores


def recompute_tolerance(dtype: torch.dtype, device: torch.device | None = None) -> float:
    """Relative tolerance of the check of a recomputed attention against the module's output: 1e-5
    with full-precision float32 or float64 matmuls on the CPU (a missed bias or mask shows; the two
    differ by about 1e-7 there), 2e-4 on a GPU (its fused kernels sum in another order), else 1e-3
    (16-bit, or TF32 matmuls)."""
    full = dtype in (torch.float32, torch.float64) and torch.get_float32_matmul_precision() == "highest"
    if not full:
        return 1e-3
    return 1e-5 if device is None or device.type == "cpu" else 2e-4


def check_recomputed(block: ViTBlock, module: nn.Module, new: torch.Tensor, original: torch.Tensor,
                     tolerance: float | None, method: str = "") -> None:
    """A :class:`LayerError` when the recomputed attention output ``new`` is not the module's ``original``."""
    err = float((new.detach() - original.detach()).abs().max())
    tolerance = recompute_tolerance(original.dtype, original.device) if tolerance is None else tolerance
    if err > tolerance * (1.0 + float(original.detach().abs().max())):
        raise LayerError(f"block '{block.name}': recomputed attention differs from the module's output by {err:.2e}; "
                         f"this {type(module).__name__} variant is not supported{method}")


@dataclass
class BlockRecord:
    """What :class:`AttentionRecorder` keeps per block: the projection input ``u`` (``(B, N, C)``,
    in the autograd graph when recording gradients), the attention probabilities ``attn``
    (``(B, heads, N, N)``, detached) and the decomposed [class] row ``features`` (``(B, N, C)``,
    ``F_j[h*d + t] = A^h_{0j} V^h_{jt}``, detached; ``sum_j F_j = u[:, 0]``)."""

    u: torch.Tensor
    attn: torch.Tensor
    features: torch.Tensor


class AttentionRecorder:
    """Context manager: during forward passes, recompute each block's attention explicitly and
    record :class:`BlockRecord` s in ``records`` (block order). With ``grad=True`` autograd is
    switched on at the first block (the caller runs the forward under ``torch.no_grad()``), so
    ``torch.autograd.grad(score, [r.u for r in records])`` gives every block's ``dy/dU``."""

    def __init__(self, adapter: ViTAdapter, grad: bool = False, tolerance: float | None = None):
        self.adapter = adapter
        self.grad = grad
        self.tolerance = tolerance
        self.records: list[BlockRecord | None] = [None] * len(adapter.blocks)
        self._handles: list = []

    def _hook(self, block: ViTBlock):
        def hook(module, args, kwargs, output):
            x = self.adapter.input_of(block, args, kwargs)
            if self.grad and not torch.is_grad_enabled():
                torch.set_grad_enabled(True)  # restored by the caller's no_grad() exit
            q, k, v, scale = self.adapter.qkv(block, x)
            logits = (q * scale) @ k.transpose(-2, -1)
            bias = self.adapter.logit_bias(block, args, kwargs)
            attn = (logits if bias is None else logits + bias).softmax(dim=-1)
            heads = attn @ v
            b, h, n, d = heads.shape
            u = heads.transpose(1, 2).reshape(b, n, h * d)
            if self.grad and not u.requires_grad:
                u = u.detach().requires_grad_(True)
            new = self.adapter.project(block, x, u)
            check_recomputed(block, module, new, output[0] if isinstance(output, tuple) else output, self.tolerance)
            with torch.no_grad():
                features = (attn[:, :, 0, :, None] * v).transpose(1, 2).reshape(b, n, h * d)
            self.records[block.index] = BlockRecord(u, attn.detach(), features)
            return self.adapter.wrap(block, output, new)

        return hook

    def __enter__(self) -> "AttentionRecorder":
        for block in self.adapter.blocks:
            self._handles.append(block.attn.register_forward_hook(self._hook(block), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def complete(self) -> list[BlockRecord]:
        missing = [self.adapter.blocks[i].name for i, r in enumerate(self.records) if r is None]
        if missing:
            raise LayerError(f"block(s) {', '.join(missing)} did not run in the forward pass")
        return list(self.records)


def spatial_transform(model: nn.Module, x: torch.Tensor, name: str, module: nn.Module, activation: torch.Tensor):
    """The function turning the output of layer ``name`` into ``(B, C, h, w)``, or ``None`` when it
    already is: ViT/DINOv2/Swin tokens ``(B, N, C)`` and timm Swin's channels-last ``(B, h, w, C)``
    (every 4-D output of a timm Swin module but its patch convolution)."""
    if activation.dim() == 3:
        return token_grid_transform(model, x, name, activation)
    if activation.dim() == 4 and not isinstance(module, nn.Conv2d):
        swin = find_swin(model)
        if swin is not None and swin.channels_last:
            grids = swin.grids(tuple(x.shape[-2:]))
            if tuple(activation.shape[2:4]) in grids and tuple(activation.shape[1:3]) not in grids:
                return None  # already (B, C, h, w): torchvision's `permute` before its pooling
            return swin.token_transform(name, x, activation)
    return None


def token_grid_transform(model: nn.Module, x: torch.Tensor, name: str, tokens: torch.Tensor):
    """For a layer with ``(B, N, C)`` token output on a recognised ViT or Swin: the function that
    turns such tokens into a ``(B, C, h, w)`` patch map (prefix tokens dropped, grid inferred from
    the input size). Raises a :class:`LayerError` when ``model`` is neither."""
    swin = find_swin(model)
    if swin is not None:
        return swin.token_transform(name, x, tokens)
    try:
        adapter = find_vit(model)
    except LayerError:
        raise LayerError(
            f"layer '{name}' outputs tokens {tuple(tokens.shape)}, and {type(model).__name__} is not a recognised ViT; "
            "choose a layer with a (B, C, H, W) output"
        ) from None
    grid = adapter.grid(tuple(x.shape[-2:]))
    adapter.prefix_tokens(tokens.shape[1], grid)
    return lambda t: adapter.tokens_to_grid(t, grid)
