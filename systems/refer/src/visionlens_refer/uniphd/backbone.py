"""Backbones returning stride 4, 8, 16 and 32 feature maps (the role of Swin-T's four stages in
UniPHD: stride 4 only feeds the mask refinement, 8/16/32 the transformer): a small configurable CNN
(trained here) or a library model given by a model spec, e.g. ``timm:swin_tiny_patch4_window7_224``."""

from __future__ import annotations

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    groups = 4 if cout % 4 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True),
    )


class SmallCNNBackbone(nn.Module):
    """stem (stride 2) then four stages of two 3x3 convs, strides 2, 2, 2, 2 -> strides 4..32."""

    def __init__(self, widths=(16, 32, 48, 64)):
        super().__init__()
        self.num_channels = list(widths)
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 2, 1, bias=False), nn.GroupNorm(4, widths[0]), nn.ReLU(inplace=True))
        cins = [widths[0]] + list(widths[:-1])
        self.stages = nn.ModuleList([_block(ci, co, 2) for ci, co in zip(cins, widths)])

    def forward(self, x):
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class SpecBackbone(nn.Module):
    """A ``timm:NAME`` model built through the core model specs (randomly initialised: the weights come
    from a UniPHD checkpoint), its last four stages read with ``forward_intermediates``, each followed
    by a LayerNorm over channels as UniPHD's Swin does (its ``norm0..norm3``). Swin keeps its 7x7
    windows at any input side that is a multiple of 32."""

    def __init__(self, spec: str, image_size: int):
        super().__init__()
        from visionlens.errors import InputError
        from visionlens.models.zoo import library_architecture

        if not spec.startswith("timm:"):
            raise InputError(f"unknown backbone {spec!r}: use 'cnn' or a timm model spec such as "
                             "'timm:swin_tiny_patch4_window7_224'")
        if image_size % 32:
            raise InputError(f"backbone {spec} needs an input side that is a multiple of 32, got {image_size}")
        body = library_architecture(spec)
        if not hasattr(body, "forward_intermediates") or len(getattr(body, "feature_info", [])) < 4:
            raise InputError(f"backbone {spec} does not expose four feature stages (timm forward_intermediates)")
        if hasattr(body, "set_input_size") and "swin" in spec:
            body.set_input_size(img_size=(image_size, image_size), window_size=7, always_partition=True)
        if hasattr(body, "prune_intermediate_layers"):              # no classifier head or final norm
            body.prune_intermediate_layers(indices=4, prune_norm=True, prune_head=True)
        self.body = body
        self.num_channels = [int(info["num_chs"]) for info in body.feature_info[-4:]]
        self.out_norms = nn.ModuleList(nn.LayerNorm(c) for c in self.num_channels)

    def forward(self, x):
        maps = self.body.forward_intermediates(x, indices=4, intermediates_only=True)
        return [norm(m.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous() for norm, m in zip(self.out_norms, maps)]


def build_backbone(config) -> nn.Module:
    if config.backbone == "cnn":
        return SmallCNNBackbone(config.backbone_widths)
    return SpecBackbone(config.backbone, config.image_size)
