"""Any CNN as an embedding model: ``x -> e = N(head(GAP(A)))``.

``A`` is the output of ``layer`` inside ``backbone`` (the rest of the backbone is not run), GAP is
global average pooling (an ``nn.AdaptiveAvgPool2d`` module, so the LRP engine has a rule for it),
``head`` is an optional projection (identity by default) and ``N`` an optional L2 normalisation.
With ``layer=None`` the backbone's own ``(B, D)`` output is the embedding (a model that already
returns embeddings, e.g. a timm model built with ``num_classes=0``).

* ImageNet zoo classifiers: ``embedder("mobilenet_v2")`` gives the penultimate pooled features,
  ``GAP(features)`` (1280-d), the input of the classifier.
* ``embedder("world-metric")``: the project's metric-learning model, trunk ``layer3`` -> GAP ->
  ``proj`` (64-d) -> L2 normalisation, exactly its own forward.
* any module: ``embedder(my_cnn, layer="layer4", head=my_projection, normalize=True)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..core.layers import find_last_spatial_layer, model_device, resolve_layer
from ..core.vit import find_swin, model_output, recognised_vit
from ..errors import InputError, LayerError, one_line
from .zoo import ZOO, ZooModel, load_model

# zoo name -> (layer, head attribute or None, L2-normalise)
_EMBEDDING_SPECS = {
    "world-metric": ("trunk.layer3", "proj", True),
}


class _Stop(BaseException):
    """Raised by the feature hook to end the backbone's forward pass at the embedding layer
    (a BaseException, so a ``try/except Exception`` in user code does not swallow it)."""

    def __init__(self, output):
        super().__init__()
        self.output = output


class Embedder(nn.Module):
    """``backbone`` up to ``layer`` -> GAP -> ``head`` -> optional L2 normalisation.

    ``forward(x, normalize=None)`` returns ``(B, D)``; ``normalize=False`` gives the embedding
    before the L2 normalisation (what SFAM back-propagates its weights from). Layer names given to
    methods may be relative to the backbone (``features.13``) or to the embedder
    (``backbone.features.13``). No hook stays on the backbone after a call.
    """

    def __init__(self, backbone: nn.Module, layer: str | nn.Module | None = None, head: nn.Module | None = None,
                 normalize: bool = False):
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise InputError(f"backbone must be a torch.nn.Module, got {type(backbone).__name__}")
        if head is not None and not isinstance(head, nn.Module):
            raise InputError(f"head must be a torch.nn.Module or None, got {type(head).__name__}")
        self.backbone = backbone
        self.layer = None if layer is None else resolve_layer(backbone, layer)[0]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = head if head is not None else nn.Identity()
        self.normalize = bool(normalize)

    def extra_repr(self) -> str:
        return f"layer={self.layer!r}, normalize={self.normalize}"

    def resolve(self, layer: str | nn.Module) -> tuple[str, nn.Module]:
        """``(name, module)`` for a layer given relative to the backbone or to the embedder; the
        name is relative to the backbone."""
        if isinstance(layer, nn.Module):
            for name, m in self.backbone.named_modules():
                if m is layer and name:
                    return name, m
            return resolve_layer(self, layer)
        if isinstance(layer, str) and layer.startswith("backbone."):
            layer = layer[len("backbone."):]
        return resolve_layer(self.backbone, layer)

    def default_layer(self, x: torch.Tensor) -> str:
        """The embedding layer, or the backbone's last spatial layer when the backbone's own output is used."""
        return self.layer if self.layer is not None else find_last_spatial_layer(self.backbone, x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The output of the embedding layer (the backbone stops there)."""
        _, module = resolve_layer(self.backbone, self.layer)

        def stop(mod, args, output):
            raise _Stop(output)

        handle = module.register_forward_hook(stop)
        try:
            self.backbone(x)
        except _Stop as s:
            return s.output
        finally:
            handle.remove()
        raise LayerError(f"layer '{self.layer}' was not executed in the forward pass; choose a layer the model uses")

    def forward(self, x: torch.Tensor, normalize: bool | None = None) -> torch.Tensor:
        if self.layer is None:
            z = self.head(model_output(self.backbone(x)))  # a Hugging Face output: its logits or [class] token
        else:
            a = self.features(x)
            if not torch.is_tensor(a) or a.dim() != 4:
                shape = tuple(a.shape) if torch.is_tensor(a) else type(a).__name__
                raise LayerError(f"embedding layer '{self.layer}' gives {shape}, not a (B, C, H, W) map; choose a conv layer")
            z = self.head(self.pool(a).flatten(1))
        if not torch.is_tensor(z) or z.dim() != 2:
            shape = tuple(z.shape) if torch.is_tensor(z) else type(z).__name__
            raise InputError(f"an embedding model must return (B, D), got {shape}")
        normalize = self.normalize if normalize is None else normalize
        return F.normalize(z, dim=1) if normalize else z

    def without_normalization(self) -> "Embedder":
        """The same modules, returning the embedding before the L2 normalisation."""
        if not self.normalize:
            return self
        return Embedder(self.backbone, self.layer, self.head, normalize=False)


def embedder(
    model: str | ZooModel | nn.Module,
    layer: str | nn.Module | None = "auto",
    head: nn.Module | None = None,
    normalize: bool = False,
    device: str | torch.device | None = "cpu",
    input_size: int = 224,
) -> Embedder:
    """An :class:`Embedder` for a zoo model (by name or loaded) or any module.

    Zoo models use their own embedding: ImageNet classifiers and ``world-cnn`` the pooled features
    of their default layer (the classifier's input), ``world-metric`` its trunk, projection and
    L2 normalisation, ``world-dino`` its [class] embedding (``layer``, ``head`` and ``normalize``
    override). For any other module ``layer="auto"`` pools the last spatial layer (found with a
    ``input_size`` probe); ``layer=None`` uses the module's own output.
    """
    if isinstance(model, str):
        model = load_model(model, device=device)
    if isinstance(model, ZooModel):
        if model.name in _EMBEDDING_SPECS:
            spec_layer, head_attr, spec_norm = _EMBEDDING_SPECS[model.name]
            return Embedder(model.module, spec_layer if layer == "auto" else layer,
                            head if head is not None else getattr(model.module, head_attr), normalize or spec_norm)
        entry = ZOO.get(model.name)
        if entry is not None and entry.task == "world-embedding" and layer == "auto":  # world-dino: the output is the embedding
            return Embedder(model.module, None, head, normalize)
        if layer == "auto" and (model.layer is not None or find_swin(model.module) is not None
                                   or recognised_vit(model.module) is not None):
            layer = model.layer  # a spec model's layer is None: a CNN is probed below (its pooled features)
        input_size = model.preprocess.crop
        model = model.module
    if layer == "auto":
        layer = _probed_last_spatial_layer(model, input_size)
    return Embedder(model, layer, head, normalize)


def _probed_last_spatial_layer(model: nn.Module, input_size: int) -> str:
    """The last spatial layer of ``model``, found by running a blank ``input_size`` image with as
    many channels as its first convolution takes (3 without one) on its device; one
    :class:`InputError` line when the probe cannot run."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = conv.in_channels if conv is not None else 3
    probe = torch.zeros(1, channels, input_size, input_size, device=model_device(model))
    try:
        return find_last_spatial_layer(model, probe)
    except RuntimeError as err:
        raise InputError(f"cannot find the layer to pool: a blank {channels}x{input_size}x{input_size} image does not "
                         f"run through the model ({one_line(err)[:160]}); give input_size= or the layer") from None


def embedding_model(model: str | ZooModel | nn.Module, device: str | torch.device | None = "cpu",
                    weights: str | None = None, **kwargs) -> ZooModel:
    """A :class:`ZooModel` whose ``module`` is the :func:`embedder` of ``model`` (a zoo name or
    model spec, with ``weights`` as in :func:`load_model`; same name, preprocessing and source;
    no class names)."""
    if isinstance(model, str):
        model = load_model(model, device=device, weights=weights)
    zoo = model if isinstance(model, ZooModel) else load_model(model)
    emb = embedder(zoo, device=device, **kwargs)
    return ZooModel(zoo.name, emb, zoo.preprocess, None, None, zoo.source)
