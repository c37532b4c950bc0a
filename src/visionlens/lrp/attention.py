"""AttnLRP's rules for transformers (Achtibat et al., ICML 2024, "AttnLRP: Attention-Aware
Layer-Wise Relevance Propagation for Transformers"), in the gradient x input form.

Relevance at any tensor ``t`` is ``R_t = t * g_t``, where ``g`` is a *modified* gradient of the
target logit. Plain autograd already gives the paper's rule wherever a layer is linear or the rule
is a Taylor step at the input: epsilon-LRP (stabiliser 0) on linear layers and convolutions (the
bias keeps its share), the z-rule on sums (residuals, position embeddings), routing for ``cat``
and indexing, and the softmax's linearisation rule
``R_in = x * (R_out - s * sum_j R_out_j)``, which is exactly ``x * grad``. Three operations need
a changed gradient, and each is substituted here by a tensor that has the module's exact forward
value but the rule's gradient:

* elementwise activations (GELU, SiLU, tanh, ...): the identity rule ``R_in = R_out``, i.e.
  ``g_in = g_out * f(x) / x`` (:func:`identity_rule`);
* LayerNorm: the identity rule on the normalisation, i.e. the standard deviation is a constant and
  the centring and affine map stay linear (:func:`layer_norm_rule`);
* products of two activations (``Q K^T`` and ``A V``): the uniform rule, half the relevance to
  each factor, i.e. the gradient of each factor halved (:func:`uniform_rule`). With the CP-LRP
  variant (Ali et al., ICML 2022) the attention is a constant instead: no relevance enters the
  softmax, and ``V`` gets all of it.

:class:`AttnLRPRules` attaches these substitutions to a ViT's modules with forward hooks (found
through :func:`~visionlens.core.vit.find_vit`'s adapter) and removes them on exit; the model's
parameters, flags and forward values are untouched.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.vit import ViTAdapter, ViTBlock, check_recomputed

# elementwise activations that get the identity rule (by class; Hugging Face and timm by module path)
ACTIVATIONS = (nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.Mish,
               nn.Hardswish, nn.Hardsigmoid, nn.Softplus)
_ACTIVATION_MODULES = ("transformers.activations", "timm.layers.activations")
VARIANTS = ("attnlrp", "cp")


def with_gradient(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """A tensor equal to ``value`` (bit for bit) whose gradient is that of ``surrogate``."""
    return value.detach() + (surrogate - surrogate.detach())


def uniform_rule(t: torch.Tensor, share: float = 0.5) -> torch.Tensor:
    """``t`` unchanged, with its gradient scaled by ``share`` (the uniform rule of a bilinear product)."""
    return t.detach() + (t - t.detach()) * share


def identity_rule(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y = f(x)`` unchanged, with gradient ``g * y / x`` (zero where ``x == 0``): ``R_x = R_y``."""
    ratio = torch.where(x == 0, torch.zeros_like(x), y / torch.where(x == 0, torch.ones_like(x), x))
    return y.detach() + (x - x.detach()) * ratio.detach()


def layer_norm_rule(module: nn.LayerNorm, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``y = LayerNorm(x)`` unchanged, with the gradient of ``(x - mean) / std * w + b`` for a constant ``std``."""
    dims = tuple(range(-len(module.normalized_shape), 0))
    centred = x - x.mean(dim=dims, keepdim=True)
    std = (centred.pow(2).mean(dim=dims, keepdim=True) + module.eps).sqrt()
    linear = centred / std.detach()
    if module.weight is not None:
        linear = linear * module.weight
    if module.bias is not None:
        linear = linear + module.bias
    return with_gradient(y, linear)


def attention_rule(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, variant: str,
                   bias: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(q k^T * scale + bias) v`` for ``(B, heads, N, d)`` tensors (``bias``: an additive
    term on the logits, e.g. a relative position bias), with AttnLRP's gradients: uniform rule on
    both products, gradient of the softmax as is (its linearisation rule); CP-LRP: the attention is
    a constant."""
    if variant == "cp":
        scores = (q * scale) @ k.transpose(-2, -1)
        attn = (scores if bias is None else scores + bias).softmax(dim=-1).detach()
        return attn @ v
    scores = (uniform_rule(q) * scale) @ uniform_rule(k).transpose(-2, -1)
    attn = (scores if bias is None else scores + bias).softmax(dim=-1)
    return uniform_rule(attn) @ uniform_rule(v)


def is_activation(module: nn.Module) -> bool:
    """Whether ``module`` is an elementwise activation that gets the identity rule."""
    return isinstance(module, ACTIVATIONS) or type(module).__module__.startswith(_ACTIVATION_MODULES)


class AttnLRPRules:
    """Context manager: while active, every forward pass of ``adapter.model`` computes AttnLRP's
    modified gradient (see the module docstring), so ``x * grad`` is the relevance at ``x``.

    ``variant``: ``"attnlrp"`` (the paper's rules) or ``"cp"`` (CP-LRP attention, the rest AttnLRP).
    Every attention recomputation is checked against the module's own output (``tolerance``,
    relative to the output's largest magnitude; ``None``: by dtype and device, see
    :func:`~visionlens.core.vit.recompute_tolerance`)."""

    def __init__(self, adapter: ViTAdapter, variant: str = "attnlrp", tolerance: float | None = None):
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.adapter = adapter
        self.variant = variant
        self.tolerance = tolerance
        self._handles: list = []

    def _attention_hook(self, block: ViTBlock):
        def hook(module, args, kwargs, output):
            x = self.adapter.input_of(block, args, kwargs)
            q, k, v, scale = self.adapter.qkv(block, x)
            heads = attention_rule(q, k, v, scale, self.variant, self.adapter.logit_bias(block, args, kwargs))
            b, h, n, d = heads.shape
            new = self.adapter.project(block, x, heads.transpose(1, 2).reshape(b, n, h * d))
            original = output[0] if isinstance(output, tuple) else output
            check_recomputed(block, module, new, original, self.tolerance, " by attnlrp")
            return self.adapter.wrap(block, output, with_gradient(original, new))

        return hook

    @staticmethod
    def _norm_hook(module, args, output):
        return layer_norm_rule(module, args[0], output)

    @staticmethod
    def _activation_hook(module, args, output):
        if not torch.is_tensor(output) or output.shape != args[0].shape:
            return None
        return identity_rule(args[0], output)

    def __enter__(self) -> "AttnLRPRules":
        attention = {id(b.attn) for b in self.adapter.blocks}
        for module in self.adapter.model.modules():
            if id(module) in attention:
                continue
            if isinstance(module, nn.LayerNorm):
                self._handles.append(module.register_forward_hook(self._norm_hook))
            elif is_activation(module):
                self._handles.append(module.register_forward_hook(self._activation_hook))
        for block in self.adapter.blocks:
            self._handles.append(block.attn.register_forward_hook(self._attention_hook(block), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
