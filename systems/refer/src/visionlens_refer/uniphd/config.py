"""UniPHD configuration: every size is configurable; defaults are the CPU-small synthetic model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class UniPHDConfig:
    image_size: int = 96
    backbone: str = "cnn"                 # "cnn" (small, trained here) or a spec: "timm:swin_tiny_patch4_window7_224"
    backbone_widths: tuple = (16, 32, 48, 64)   # strides 4, 8, 16, 32
    text_encoder: str = "small"           # "small" (word-level, trained here) or "hf:DIR" (a local transformers dir)
    vocab: tuple = ()                     # word vocabulary of the small text encoder
    max_words: int = 16                   # the official code uses 32 RoBERTa tokens
    text_layers: int = 1
    d_model: int = 64                     # official: 256
    heads: int = 4                        # official: 8
    ffn: int = 128                        # official: 2048
    levels: int = 4                       # strides 8, 16, 32, 64
    points: int = 2                       # deformable sampling points per level and head (official: 4)
    encoder_layers: int = 2               # official: 6
    decoder_layers: int = 2               # official: 6
    queries: int = 5                      # official: 20 query groups
    keypoints: int = 17
    mask_channels: int = 16               # dynamic conv width (official: 16)
    controller_layers: int = 2            # mask controller MLP depth (official: 3)
    enc_keypoint_layers: int = 3          # two-stage keypoint MLP depth (official: 4)
    dropout: float = 0.0
    loss_weights: dict = field(default_factory=lambda: {
        "ce": 2.0, "keypoints": 10.0, "oks": 4.0, "visibility": 4.0, "bbox": 5.0, "giou": 2.0,
        "mask": 2.0, "dice": 5.0, "mask_low": 2.0, "dice_low": 5.0})
    cost_weights: dict = field(default_factory=lambda: {
        "ce": 2.0, "bbox": 5.0, "giou": 2.0, "keypoints": 10.0, "oks": 4.0, "mask": 2.0, "dice": 5.0})
    matcher_mask_points: int = 144        # 12x12 point-sampled mask cost; 0 skips the mask terms

    def to_dict(self) -> dict:
        d = asdict(self)
        d["backbone_widths"] = list(self.backbone_widths)
        d["vocab"] = list(self.vocab)
        return d

    @classmethod
    def paper(cls, text_encoder: str, image_size: int = 224, **overrides) -> "UniPHDConfig":
        """The released UniPHD's sizes (see ``PAPER_SETTINGS``), with Swin-T and a RoBERTa-style encoder."""
        return cls(**{**PAPER_SETTINGS, "text_encoder": text_encoder, "image_size": image_size, **overrides})

    @classmethod
    def from_dict(cls, d: dict) -> "UniPHDConfig":
        d = dict(d)
        d["backbone_widths"] = tuple(d.get("backbone_widths", cls.backbone_widths))
        d["vocab"] = tuple(d.get("vocab", ()))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# The released UniPHD's settings. Source: bo-miao/RefHuman, commit 8fdb041, config/uniphd.py
# (hidden_dim, nheads, dim_feedforward, enc_layers, dec_layers, enc_n_points/dec_n_points,
# num_feature_levels, num_queries, num_body_points, dropout, loss and matcher coefficients) and
# models/uniphd/: uniphd.py (controller MLP of 3 layers, dynamic_mask_channels 16, enc_pose_embed
# MLP of 4 layers), text_encoder/text_encoder.py (RoBERTa-base, token_size 32), backbones/backbone.py
# (swin_T_224_1k). The input side is not in that snapshot (its coco_transformer.py base config is
# missing): it stays a parameter, 224 by default (Swin-T's pretraining size).
PAPER_SETTINGS = {
    "backbone": "timm:swin_tiny_patch4_window7_224", "max_words": 32, "d_model": 256, "heads": 8, "ffn": 2048,
    "levels": 4, "points": 4, "encoder_layers": 6, "decoder_layers": 6, "queries": 20, "keypoints": 17,
    "mask_channels": 16, "controller_layers": 3, "enc_keypoint_layers": 4, "dropout": 0.0,
}
