"""The adaptation network: backbone -> SAGAN attention -> GAP -> bottleneck (Linear + BN1d) -> head.

Backbones: ``small-cnn`` (the project's WorldResNet trunk, trained from scratch),
``mobilenet_v2`` (the packaged ImageNet MobileNetV2 ``features``, early stages frozen), the papers'
``resnet50`` / ``resnet101`` (torchvision's, every layer trained as in SHOT and EIANet) or any CNN
model spec (``timm:NAME``, ``torchvision:NAME``) through the core model specs, with a weights file
or the library's pretrained weights, its classifier removed. Heads: ``etf`` (fixed simplex ETF,
EIANet) or ``linear`` (SHOT / AaD style).
"""

from __future__ import annotations

import torch
from torch import nn

from visionlens.errors import InputError

from .eianet import SAGANAttention
from .etf import SimplexETF

BACKBONES = ("small-cnn", "mobilenet_v2", "resnet50", "resnet101", "timm:NAME", "torchvision:NAME")
PAPER_BACKBONES = {"resnet50": "torchvision:resnet50", "resnet101": "torchvision:resnet101"}
HEADS = ("etf", "linear")


class Normalise(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class FrozenPrefix(nn.Module):
    """Runs ``frozen`` without gradients and in eval mode (BatchNorm statistics kept), then ``rest``."""

    def __init__(self, frozen: nn.Module, rest: nn.Module):
        super().__init__()
        self.frozen, self.rest = frozen, rest
        for p in self.frozen.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.frozen.eval()
        return self

    def forward(self, x):
        with torch.no_grad():
            x = self.frozen(x)
        return self.rest(x)


class SpecFeatures(nn.Module):
    """The spatial feature map of a model-spec CNN: timm's ``forward_features``, or a torchvision
    model without its pooling and classifier (``features``, or its children before ``avgpool``)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        if hasattr(module, "forward_features"):
            self.body, self.timm = module, True
        elif isinstance(getattr(module, "features", None), nn.Module):
            self.body, self.timm = module.features, False
        else:
            names = [n for n, _ in module.named_children()]
            if "avgpool" not in names:
                raise InputError(f"{type(module).__name__}: cannot find its feature map (no forward_features, "
                                 "features or avgpool); use a ResNet-style CNN")
            self.body, self.timm = nn.Sequential(*list(module.children())[:names.index("avgpool")]), False

    def forward(self, x):
        return self.body.forward_features(x) if self.timm else self.body(x)


def spec_backbone(spec: str, weights: str | None = None) -> tuple[nn.Module, int]:
    """``(module, channels)`` of a ``timm:``/``torchvision:`` CNN with ``weights`` (a state-dict file)
    or, without, the library's pretrained weights; images in [0, 1], normalised as its config says."""
    from visionlens.models import load_model

    zoo = load_model(spec, weights=weights)
    features = SpecFeatures(zoo.module)
    side = int(getattr(zoo.preprocess, "crop", 0) or 224)  # the model's own input size: any model takes it
    with torch.no_grad():
        was = features.training
        try:
            out = features.eval()(torch.zeros(1, 3, side, side))
        except Exception as err:  # noqa: BLE001 - a model that cannot run its own input size is no backbone
            reason = " ".join(str(err).split())[:160] or type(err).__name__
            raise InputError(f"{spec} cannot be used as a backbone: its features at {side}x{side} fail ({reason}); "
                             "use a CNN backbone") from None
        finally:
            features.train(was)
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        dims = f"{out.dim()}-d features" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise InputError(f"{spec} is not a CNN: it gives {dims}, not a (B, C, H, W) map (vision transformers are "
                         "not supported); use a CNN backbone such as resnet50 or timm:resnet18")
    return nn.Sequential(Normalise(zoo.preprocess.mean, zoo.preprocess.std), features), int(out.shape[1])


def build_backbone(name: str, freeze: int = 14, weights: str | None = None) -> tuple[nn.Module, int]:
    """``(module, channels)``: input images in [0, 1], output a spatial feature map."""
    if name == "small-cnn":
        from visionlens.models.world_models import WorldResNet

        trunk = WorldResNet(num_classes=0, widths=(16, 32, 64))
        return nn.Sequential(Normalise((0.5,) * 3, (0.5,) * 3), trunk.stem, trunk.layer1, trunk.layer2, trunk.layer3), 64
    if name == "mobilenet_v2":
        from visionlens.models import load_model

        features = load_model("mobilenet_v2").module.features
        body = FrozenPrefix(nn.Sequential(Normalise((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), *features[:freeze]),
                            nn.Sequential(*features[freeze:]))
        return body, 1280
    if name in PAPER_BACKBONES or name.startswith(("timm:", "torchvision:")):
        return spec_backbone(PAPER_BACKBONES.get(name, name), weights)
    raise InputError(f"unknown backbone {name!r}; choose from: {', '.join(BACKBONES)}")


def check_backbone(name: str, weights: str | None = None) -> None:
    """Refuse, before any work, a backbone that cannot be built (an unknown name, a weights file that
    does not fit) or is not a CNN (a ViT's features are tokens, not a map). The built-in trunks are
    known to be CNNs and are not loaded here."""
    if name in ("small-cnn", "mobilenet_v2"):
        return
    build_backbone(name, weights=weights)


class AdaptNet(nn.Module):
    """``embed(x)``: the bottleneck feature (BN output, not normalised); ``head``: logits."""

    def __init__(self, num_classes: int, backbone: str = "small-cnn", head: str = "linear", bottleneck: int = 64,
                 temperature: float = 0.0, learned_attention: bool = False, seed: int = 0,
                 backbone_weights: str | None = None):
        super().__init__()
        if head not in HEADS:
            raise InputError(f"unknown head {head!r}; choose from: {', '.join(HEADS)}")
        if num_classes < 2:
            raise InputError(f"need at least 2 classes, got {num_classes}")
        self.num_classes = num_classes
        with torch.random.fork_rng(devices=[]):  # the weights drawn from ``seed``; the caller's random state comes back
            torch.manual_seed(seed)
            self.backbone, channels = build_backbone(backbone, weights=backbone_weights)
            self.attention = SAGANAttention(channels, temperature=temperature, learned=learned_attention)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.bottleneck = nn.Linear(channels, bottleneck)
            self.bn = nn.BatchNorm1d(bottleneck)
            self.head = SimplexETF(bottleneck, num_classes, seed) if head == "etf" else nn.Linear(bottleneck, num_classes)

    def set_temperature(self, temperature: float) -> None:
        self.attention.temperature = float(temperature)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.bottleneck(self.pool(self.attention(self.backbone(x))).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for m in (self.backbone, self.attention) for p in m.parameters() if p.requires_grad]

    def bottleneck_parameters(self) -> list[nn.Parameter]:
        """Bottleneck + BN (+ the linear head at source time: see :meth:`freeze_head`)."""
        params = list(self.bottleneck.parameters()) + list(self.bn.parameters())
        return params + [p for p in self.head.parameters() if p.requires_grad]

    def freeze_head(self) -> None:
        """Target time: the classifier stays the source one (ETF is never trained anyway)."""
        for p in self.head.parameters():
            p.requires_grad_(False)
