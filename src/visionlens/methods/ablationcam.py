"""Ablation-CAM (Desai & Ramaswamy, WACV 2020): ``w_k = (y^c - y^c_k) / y^c`` where ``y^c_k`` is
the target score with channel ``k`` of the layer set to zero. No gradients.

The layer's activations are computed once; each ablated copy runs only through the rest of the
network: the model is fed a small stand-in input whose layer output is replaced by the ablated
activations, so the part before the layer costs almost nothing. The stand-in is one image
(8 px, else 32 px), or one per ablated copy where the model needs the batch sizes to agree. This
is checked once per call (the un-ablated activations must reproduce the logits); where every
stand-in fails (a skip connection that jumps over the layer, a model that needs the full input
size, or any other failure of the small input), the full input is used instead.
With ``inference_copy`` (the default) the ablated copies run on the fastest checked copy of the
model (:func:`visionlens.core.inference.fastest_checked_copy`, BatchNorm folded except at the
layer itself); the stand-in check above is also the check of that copy (else the model itself is
used). ``batch_size`` None (the default) takes the device's memory bound for the full model
(:func:`visionlens.core.inference.batch_bound`), an upper bound of what the tail needs.
Formula choice: ablation sets the channel to zero, as the paper (pytorch-grad-cam uses a very
negative value when the layer's minimum is not zero). On a ViT token layer, channel ``k`` is
zeroed in every token, the class and other prefix tokens included (as pytorch-grad-cam's ViT
ablation layer does); the map is over the patch tokens. On timm Swin's channels-last tokens
``(B, h, w, C)`` the last dimension is the channel.
"""

from __future__ import annotations

import torch

from ..core.hooks import ActivationCapture, restored_attributes
from ..core.inference import InferenceCopy, batch_bound, fastest_checked_copy
from ..core.targets import ClassTargets
from .base import PerturbationMethod, unwrap_output

STAND_INS = (8, 32)  # sides tried for the stand-in input that feeds the layer before its output is replaced


def _batched(small: torch.Tensor, expand: bool, n: int) -> torch.Tensor:
    """The stand-in as fed with ``n`` ablated copies: one image, or (``expand``) one per copy."""
    return small.expand(n, -1, -1, -1) if expand else small


class AblationCAM(PerturbationMethod):
    name = "ablationcam"

    def __init__(self, model, layer=None, batch_size: int | None = None, inference_copy: bool = True):
        super().__init__(model, layer, 64 if batch_size is None else batch_size)
        self.batch_size = batch_size  # None: the memory bound
        self.inference_copy = inference_copy
        self._checked: dict = {}  # (copy, layer, input shape) -> its checked runner, kept across calls

    def _tail(self, module, feed: torch.Tensor, acts: torch.Tensor, model=None) -> torch.Tensor:
        """Output of ``model`` (default the model) when its layer ``module`` outputs ``acts`` (the
        input ``feed`` only drives the rest); attributes the small stand-in changes (a Swin window)
        are restored."""
        model = self.model if model is None else model
        handle = module.register_forward_hook(lambda m, i, o: acts, prepend=True)
        try:
            with restored_attributes(model):
                return model(feed)
        finally:
            handle.remove()

    def _feed(self, module, x: torch.Tensor, activation: torch.Tensor, output: torch.Tensor,
              model=None) -> tuple[torch.Tensor, bool] | None:
        """``(stand-in, expand)``: the first small input that reproduces the logits from the cached
        activations through ``model`` (default the model), fed as one image or (``expand``) repeated
        to the batch; ``None`` if none does."""
        output = output.detach()
        for side in STAND_INS:
            small = x.new_zeros((1, x.shape[1], min(side, x.shape[2]), min(side, x.shape[3])))
            for expand in (False, True):
                try:
                    out = unwrap_output(self._tail(module, _batched(small, expand, activation.shape[0]), activation,
                                                   model))
                except Exception:  # noqa: BLE001 - any failure of the stand-in (shape, size check): full input
                    continue
                if (isinstance(out, torch.Tensor) and out.shape == output.shape
                        and torch.allclose(out, output, rtol=1e-4, atol=1e-4 * (1 + float(output.abs().max())))):
                    return small, expand
        return None

    def _runner(self, name: str, module, x: torch.Tensor, source: torch.Tensor, output: torch.Tensor):
        """``(model, its layer, stand-in)`` that run the ablated copies: the fastest checked copy
        where its stand-in (or full input) reproduces the logits from the cached activations,
        else the model itself."""
        if self.inference_copy and name:
            try:
                fast = fastest_checked_copy(self.model, x, self.batch_size or 64, keep=(name,))[0]
                key = (id(fast), name, tuple(x.shape), tuple(source.shape))
                if key in self._checked:  # this copy, layer and size were checked on an earlier call
                    return self._checked[key]
                layer = fast.inner.get_submodule(name) if isinstance(fast, InferenceCopy) else module
                stand_in = self._feed(layer, x, source, output, fast)
                if stand_in is not None or self._reproduces(layer, x, source, output, fast):
                    self._checked = {key: (fast, layer, stand_in)}
                    return fast, layer, stand_in
            except Exception:  # noqa: BLE001 - any failure of the copy: the model itself
                pass
        return self.model, module, self._feed(module, x, source, output)

    def _reproduces(self, layer, x: torch.Tensor, source: torch.Tensor, output: torch.Tensor, model) -> bool:
        out = unwrap_output(self._tail(layer, x, source, model))
        return (isinstance(out, torch.Tensor) and out.shape == output.shape
                and torch.allclose(out, output.detach(), rtol=1e-4, atol=1e-4 * (1 + float(output.abs().max()))))

    def channel_weights(self, activation: torch.Tensor, targets: ClassTargets, output: torch.Tensor,
                        capture: ActivationCapture) -> torch.Tensor:
        x, target = capture.inputs, capture.target
        x = x.to(activation.device)
        name, module = self._resolved
        # the layer's own output is what an ablated copy feeds on: (B, K, h, w), or ViT tokens (B, N, K)
        tokens = name in capture.transforms
        source = capture.get(name).detach() if tokens else activation
        with capture.paused():
            runner, layer, stand_in = self._runner(name, module, x, source, output)
            batch = self.batch_size or batch_bound(runner, x)
        b, k = activation.shape[:2]
        base = targets.scores.float()
        scores = torch.empty(b * k, device=activation.device)
        pairs = torch.arange(b * k, device=activation.device)
        for start in range(0, b * k, batch):
            chunk = pairs[start:start + batch]
            image, channel = chunk // k, chunk % k
            acts = source[image].clone()
            if tokens:  # ViT tokens (B, N, K) or channels-last Swin tokens (B, h, w, K)
                acts[torch.arange(len(chunk)), ..., channel] = 0
            else:
                acts[torch.arange(len(chunk)), channel] = 0
            feed = x[image] if stand_in is None else _batched(*stand_in, len(chunk))
            with capture.paused():
                out = self._tail(layer, feed, acts, runner)
            score = self.target_scores(out, image, targets, target)
            scores[start:start + len(chunk)] = score.float()
        return (base[:, None] - scores.view(b, k)) / base[:, None]
