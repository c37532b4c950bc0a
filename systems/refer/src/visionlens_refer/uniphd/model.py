"""UniPHD: prompt -> the referred person's 17 keypoints, mask, box and score.

backbone (strides 4..32) -> 1x1 conv + GroupNorm input projections for strides 8/16/32 plus a
stride-2 3x3 conv for stride 64 -> per-level prompt fusion -> deformable encoder -> two-stage,
prompt-conditioned query initialisation (top-Q positions; an MLP predicts 17 reference keypoints
around each proposal centre; instance token = the prompt's sentence feature, keypoint tokens =
learned keypoint embedding + the selected memory feature) -> PHD decoder with per-layer heads
(class, box, keypoints, visibility) -> dynamic-conv mask head on the final instance tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from visionlens.errors import InputError

from .backbone import IMAGENET_MEAN, IMAGENET_STD, build_backbone
from .config import UniPHDConfig
from .layers import MLP, grid_centres, inverse_sigmoid, sine_embed
from .mask_head import MaskHead
from .prompts import PositionalPrompt, PromptFusion, TextPrompt
from .text import build_text_encoder
from .transformer import EncoderLayer, PHDLayer

PROMPT_KINDS = ("text", "point", "scribble")


class UniPHD(nn.Module):
    def __init__(self, config: UniPHDConfig):
        super().__init__()
        self.config = c = config
        d, k = c.d_model, c.keypoints
        self.backbone = build_backbone(c)
        chans = self.backbone.num_channels
        gn = lambda: nn.GroupNorm(min(32, d // 4), d)  # noqa: E731
        self.input_proj = nn.ModuleList([nn.Sequential(nn.Conv2d(ch, d, 1), gn()) for ch in chans[1:]] +
                                        [nn.Sequential(nn.Conv2d(chans[-1], d, 3, 2, 1), gn())])
        self.level_embed = nn.Parameter(torch.randn(c.levels, d) * 0.02)
        self.text_prompt = TextPrompt(build_text_encoder(c), d, c.dropout)
        self.position_prompt = PositionalPrompt(chans[2], d, c.dropout)
        self.fusion = PromptFusion(d, c.heads)
        self.encoder = nn.ModuleList(EncoderLayer(d, c.heads, c.ffn, c.levels, c.points, c.dropout) for _ in range(c.encoder_layers))
        self.enc_output = nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d))
        self.enc_class = nn.Linear(d, 1)
        self.enc_keypoints = MLP(d, 2 * d, 2 * k, c.enc_keypoint_layers)
        self.keypoint_embed = nn.Parameter(torch.randn(k, d) * 0.02)
        self.query_pos = MLP(d, d, d, 2)
        self.decoder = nn.ModuleList(PHDLayer(d, c.heads, c.ffn, c.levels, c.points, c.dropout, k + 1) for _ in range(c.decoder_layers))
        L = c.decoder_layers
        self.class_heads = nn.ModuleList(nn.Linear(d, 1) for _ in range(L))
        self.box_heads = nn.ModuleList(MLP(d, d, 4, 3) for _ in range(L))
        self.keypoint_heads = nn.ModuleList(MLP(d, d, 2, 3) for _ in range(L))
        self.visibility_heads = nn.ModuleList(nn.Linear(d, 1) for _ in range(L))
        self.mask_head = MaskHead(d, chans[0], chans[1], c.mask_channels, c.controller_layers)
        prior = -torch.log(torch.tensor((1 - 0.01) / 0.01))
        for head in list(self.class_heads) + [self.enc_class]:
            nn.init.constant_(head.bias, prior)
        for mlp in list(self.keypoint_heads) + list(self.box_heads) + [self.enc_keypoints]:
            nn.init.zeros_(mlp.layers[-1].weight)
            nn.init.zeros_(mlp.layers[-1].bias)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    # --- pieces -----------------------------------------------------------------------------
    def encode_prompt(self, prompt: dict, feat16: torch.Tensor):
        kind = prompt.get("kind")
        if kind == "text":
            texts = prompt["texts"]
            if len(texts) != feat16.shape[0]:
                raise InputError(f"{len(texts)} texts for {feat16.shape[0]} images; give one prompt per image")
            return self.text_prompt(list(texts), feat16.device)
        if kind in ("point", "scribble"):
            pts = torch.as_tensor(prompt["points"], dtype=torch.float32, device=feat16.device)
            if pts.dim() != 3 or pts.shape[0] != feat16.shape[0] or pts.shape[-1] != 2:
                raise InputError(f"{kind} prompt must be (B, K, 2) pixel coordinates, got {tuple(pts.shape)}")
            return self.position_prompt(pts, feat16, self.config.image_size)
        raise InputError(f"unknown prompt kind {kind!r}; use one of {', '.join(PROMPT_KINDS)}")

    def _query_pos(self, refs):
        return self.query_pos(sine_embed(refs, self.config.d_model // 2))

    # --- forward ----------------------------------------------------------------------------
    def forward(self, images: torch.Tensor, prompt: dict) -> dict:
        """images (B, 3, S, S) in [0, 1]; prompt {"kind": "text", "texts": [...]} or
        {"kind": "point"|"scribble", "points": (B, K, 2) pixels}. Coordinates out are in [0, 1]."""
        c = self.config
        if images.dim() != 4 or images.shape[1] != 3 or tuple(images.shape[-2:]) != (c.image_size, c.image_size):
            raise InputError(f"images must be (B, 3, {c.image_size}, {c.image_size}), got {tuple(images.shape)}")
        b = images.shape[0]
        feats = self.backbone((images - self.mean) / self.std)
        tokens, tpos, tpad, sentence = self.encode_prompt(prompt, feats[2])
        srcs = [proj(f) for proj, f in zip(self.input_proj[:-1], feats[1:])]
        srcs.append(self.input_proj[-1](feats[-1]))
        shapes = [tuple(s.shape[-2:]) for s in srcs]
        flat, pos, refs = [], [], []
        for lvl, s in enumerate(srcs):
            h, w = shapes[lvl]
            centres = grid_centres(h, w, images.device)
            p = sine_embed(centres.flip(-1), c.d_model // 2)[None] + self.level_embed[lvl]
            v = self.fusion(s.flatten(2).transpose(1, 2), tokens, tpos, tpad, prompt["kind"])
            flat.append(v)
            pos.append(p.expand(b, -1, -1))
            refs.append(centres)
        memory, pos, reference = torch.cat(flat, 1), torch.cat(pos, 1), torch.cat(refs, 0)[None].expand(b, -1, -1)
        for layer in self.encoder:
            memory = layer(memory, pos, reference, shapes)
        # two-stage, prompt-conditioned query initialisation
        out_mem = self.enc_output(memory)
        enc_logits = self.enc_class(out_mem)[..., 0]
        top = enc_logits.topk(c.queries, dim=1).indices
        gather = lambda t: torch.gather(t, 1, top[..., None].expand(-1, -1, t.shape[-1]))  # noqa: E731
        sel_mem, sel_ref = gather(out_mem), gather(reference)
        kpt_refs = torch.sigmoid(inverse_sigmoid(sel_ref)[:, :, None] + self.enc_keypoints(sel_mem).view(b, c.queries, c.keypoints, 2))
        interm = {"logits": torch.gather(enc_logits, 1, top), "keypoints": kpt_refs}
        inst = sentence[:, None, None].expand(-1, c.queries, 1, -1)
        kp_tok = self.keypoint_embed[None, None] + sel_mem.detach()[:, :, None]
        tokens_q = torch.cat([inst, kp_tok], 2)
        kpt_refs = kpt_refs.detach()
        layers, prev_centre = [], kpt_refs.mean(2)
        for lid, layer in enumerate(self.decoder):
            centre = kpt_refs.mean(2, keepdim=True)
            all_refs = torch.cat([centre, kpt_refs], 2)
            tokens_q = layer(tokens_q, self._query_pos(all_refs), all_refs, memory, shapes)
            inst_tok, kp_tok = tokens_q[:, :, 0], tokens_q[:, :, 1:]
            new_kpts = torch.sigmoid(inverse_sigmoid(kpt_refs) + self.keypoint_heads[lid](kp_tok))
            box = self.box_heads[lid](inst_tok)
            box = torch.cat([torch.sigmoid(inverse_sigmoid(centre[:, :, 0]) + box[..., :2]), torch.sigmoid(box[..., 2:])], -1)
            layers.append({"logits": self.class_heads[lid](inst_tok)[..., 0], "keypoints": new_kpts, "boxes": box,
                           "visibility": self.visibility_heads[lid](kp_tok)[..., 0]})
            prev_centre = centre[:, :, 0]
            kpt_refs = new_kpts.detach()
        maps, start = [], 0
        for (h, w) in shapes:
            maps.append(memory[:, start:start + h * w].transpose(1, 2).reshape(b, c.d_model, h, w))
            start += h * w
        masks = self.mask_head(maps, tokens_q[:, :, 0], prev_centre, feats[0], feats[1])
        return {"layers": layers, "interm": interm, "masks": masks}
