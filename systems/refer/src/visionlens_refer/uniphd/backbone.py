"""A small configurable CNN backbone returning stride 4, 8, 16 and 32 feature maps (the role of
Swin-T's four stages in UniPHD: stride 4 only feeds the mask refinement, 8/16/32 the transformer)."""

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


def build_backbone(config) -> nn.Module:
    from visionlens.errors import InputError

    if config.backbone == "cnn":
        return SmallCNNBackbone(config.backbone_widths)
    raise InputError(f"unknown backbone {config.backbone!r}; this build supports 'cnn' (configure backbone_widths)")
