"""NAFlow (Liao et al., arXiv:2412.01202, TPAMI 2026): the neuron-abandoning attention flow, one
map per layer of a CNN's feature extractor, from the first layers to the last.

The feature extractor is flattened into a chain of stages ``s_0 .. s_{T-1}`` (``nn.Sequential``
containers are expanded; any other module, e.g. a residual block, is one stage), with tensors
``t_0`` (its input) and ``t_{k+1} = s_k(t_k)``. With ``y`` the target logit and
``G_k = dy/dt_k`` (true gradients at the forward activations, one backward pass):

* top: ``B_T = t_T``, ``M_T = sum_c ReLU(B_T * G_T)`` (gradient x activation);
* Neuron-Abandoning Back-Propagation, ``k = T-1 .. 1``: ``B_k = s_k^{-1}(B_{k+1}) * N_k`` with the
  abandoning mask ``N_k = 1[|G_k| > tau]`` (``tau = 0``: exact zeros, as the reference) and the
  per-module inverses of :mod:`visionlens.core.inverse`; ``M_k = sum_c ReLU(B_k * G_k)``;
* ``s_0`` is never inverted (as the reference), so there are ``T`` maps, each min-max normalised
  on its own and resized bilinearly to the input; ``flow[:, 0]`` is the shallowest.

A convolution whose output has fewer elements than its input is merged with the stages before it,
back to a conv whose input is smaller than its output, and the merged stage is inverted as one
composite (AlexNet: conv3-relu3-conv4), as ``ly9802/NAFlow:model/alexnetFlow.py``. Unlike the
released code, convolutions are really inverted (full least squares, matrix-free LSMR; the
released behaviour, which falls back to the forward input, is ``solver="released"``, and its
square truncation ``solver="truncated_square"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.hooks import preserved_model_state
from ..core.inverse import SolverOptions, check_invertible, composite_inverse, invert, kind_of, module_function
from ..core.layers import _param_device, find_last_spatial_layer, resolve_layer
from ..core.result import Explanation, normalize_maps
from ..core.targets import ClassTargets, Target, resolve_targets
from ..core.vit import model_output
from ..errors import InputError, LayerError
from .base import check_input


@dataclass
class Stage:
    """One link of the chain: ``modules`` applied in order, from tensor ``start`` to ``end``."""

    name: str
    modules: list[tuple[str, nn.Module]]
    start: int
    end: int


@dataclass
class NAFlowTerms:
    """Per-layer quantities, shallowest first: ``names``, ``maps`` (``(B, h, w)`` raw maps),
    ``features`` (the BPFMs ``B``) and ``gradients`` (``G``), plus targets and logits."""

    names: list[str]
    maps: list[torch.Tensor]
    features: list[torch.Tensor]
    gradients: list[torch.Tensor]
    targets: ClassTargets
    logits: torch.Tensor


def _is_plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def chain_modules(model: nn.Module, layer: str, call_order: dict[str, int]) -> list[tuple[str, nn.Module]]:
    """The elementary stages from the input to ``layer`` (plain ``Sequential`` containers expanded;
    the root's children in call order)."""

    def expand(prefix: str, module: nn.Module, root: bool):
        children = [(f"{prefix}.{n}" if prefix else n, c) for n, c in module.named_children()]
        if root:
            children = sorted((nc for nc in children if nc[0] in call_order), key=lambda nc: call_order[nc[0]])
        out = []
        for full, child in children:
            inside = layer.startswith(full + ".")
            if full == layer or inside:
                if _is_plain_sequential(child):
                    sub, found = expand(full, child, False)
                    out += sub
                    if found or full == layer:
                        return out, True
                    continue
                if inside:
                    raise LayerError(f"layer '{layer}' is inside '{full}' ({type(child).__name__}), which NAFlow inverts "
                                     f"as one block; choose '{full}' or a layer outside it")
                out.append((full, child))
                return out, True
            if _is_plain_sequential(child):
                out += expand(full, child, False)[0]
            else:
                out.append((full, child))
        return out, False

    stages, found = expand("", model, True)
    if not found:
        raise LayerError(f"layer '{layer}' is not on the chain of modules NAFlow can follow from the input")
    return stages


def merge_reducing(stages: list[Stage], tensors: list[torch.Tensor]) -> list[Stage]:
    """Merge each dimension-reducing conv with the stages before it, back to a conv whose input is
    smaller than this conv's output (kept alone when there is none)."""
    out: list[Stage] = []
    for st in stages:
        module = st.modules[0][1]
        n_in, n_out = tensors[st.start][0].numel(), tensors[st.end][0].numel()
        if len(st.modules) == 1 and kind_of(module) == "conv" and n_out < n_in:
            popped = []
            for j in range(len(out) - 1, -1, -1):
                cand = out[j]
                if len(cand.modules) == 1 and kind_of(cand.modules[0][1]) == "conv" and tensors[cand.start][0].numel() < n_out:
                    popped = out[j:]
                    break
            if popped:
                del out[len(out) - len(popped):]
                modules = [m for p in popped for m in p.modules] + st.modules
                out.append(Stage(f"{modules[0][0]}+{modules[-1][0]}" if len(modules) > 1 else st.name, modules,
                                 popped[0].start, st.end))
                continue
        out.append(st)
    return out


class NAFlow:
    """``NAFlow(model, layer=None)(x, target=None) -> Explanation`` with ``flow`` ``(B, L, H, W)``.

    ``layer``: the last module of the feature extractor (default: ``features`` when the model has
    one, else the last spatial layer). ``solver``: ``"lsmr"`` (full least squares, default),
    ``"truncated_square"`` or ``"released"`` (see the module docstring); ``atol``, ``btol``,
    ``max_iter`` (LSMR iteration cap per inverse, 20 by default to keep a 224x224 MobileNetV2
    within seconds on a CPU; ``None``: ``min(m, n)`` as the reference), ``float64``; ``threshold`` (``tau`` of the
    abandoning mask, for smooth activations); ``offset`` (``"operating_point"`` or ``"zero"``,
    composites); ``merge`` (merge dimension-reducing convs, as the reference).
    """

    name = "naflow"
    uses_layer = False
    multi_target = False

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None, solver: str = "lsmr", atol: float = 1e-8,
                 btol: float = 1e-8, max_iter: int | None = 20, float64: bool = False, threshold: float = 0.0,
                 offset: str = "operating_point", merge: bool = True):
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if threshold < 0:
            raise InputError(f"threshold must be >= 0, got {threshold}")
        self.model = model
        self.layer_arg = layer
        self.options = SolverOptions(atol=atol, btol=btol, max_iter=max_iter, float64=float64, mode=solver, offset=offset)
        self.threshold, self.merge = float(threshold), merge
        self.layer = None

    def _layer_name(self, x: torch.Tensor) -> str:
        if self.layer_arg is not None:
            return resolve_layer(self.model, self.layer_arg)[0]
        features = getattr(self.model, "features", None)
        if isinstance(features, nn.Module):
            return resolve_layer(self.model, features)[0]
        return find_last_spatial_layer(self.model, x)

    def _invert(self, stage: Stage, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if len(stage.modules) == 1:
            return invert(stage.modules[0][1], x, b, self.options)
        for name, module in stage.modules:
            check_invertible(module, name)
        dtype = torch.float64 if self.options.float64 else x.dtype
        fns = [module_function(m, dtype) for _, m in stage.modules]

        def f(t):
            for fn in fns:
                t = fn(t)
            return t

        return composite_inverse(f, x, b, self.options)

    def terms(self, x: torch.Tensor, target: Target = None) -> NAFlowTerms:
        check_input(x)
        x = x.to(_param_device(self.model))
        layer = self._layer_name(x)
        with preserved_model_state(self.model):
            order: dict[str, int] = {}
            def record(name):
                def hook(mod, inputs):
                    order.setdefault(name, len(order))
                return hook

            handles = [m.register_forward_pre_hook(record(n)) for n, m in self.model.named_children()]
            try:
                with torch.no_grad():
                    self.model(x[:1])
            finally:
                for h in handles:
                    h.remove()
            modules = chain_modules(self.model, layer, order)
            for name, module in modules:
                check_invertible(module, name)
            inplace = [m for _, mod in modules for m in mod.modules() if getattr(m, "inplace", False) is True]
            captured: dict[str, torch.Tensor] = {}

            def first_hook(mod, inputs):
                if "input" not in captured:
                    captured["input"] = inputs[0].detach().clone()

            def last_hook(mod, inputs, output):
                if "tensors" in captured or "busy" in captured:  # the recomputation below calls the layer itself
                    return None
                captured["busy"] = True
                t = captured["input"].requires_grad_(True)
                tensors = [t]
                for _, m in modules:
                    tensors.append(m(tensors[-1]))
                if tensors[-1].shape != output.shape or not torch.allclose(tensors[-1], output, rtol=1e-4, atol=1e-4):
                    raise LayerError(f"the modules before '{layer}' are not a plain chain (the model's forward adds "
                                     "operations between them); pass the feature extractor as layer=...")
                captured["tensors"] = tensors
                return tensors[-1]

            try:
                for m in inplace:
                    m.inplace = False
                handles = [modules[0][1].register_forward_pre_hook(first_hook),
                           resolve_layer(self.model, layer)[1].register_forward_hook(last_hook)]
                with torch.enable_grad():
                    output = model_output(self.model(x))
                    targets = resolve_targets(target, output, x.shape[0])
                    if targets.scores.dim() != 1:
                        raise InputError("NAFlow explains one class per image; give one target per image")
                    tensors = captured["tensors"]
                    grads = torch.autograd.grad(targets.scores.sum(), tensors[1:], allow_unused=True)
            finally:
                for h in handles:
                    h.remove()
                for m in inplace:
                    m.inplace = True
            tensors = [t.detach() for t in tensors]
            grads = [torch.zeros_like(t) if g is None else g.detach() for t, g in zip(tensors[1:], grads)]
            grads = [None] + grads  # G at t_k
            stages = [Stage(n, [(n, m)], i, i + 1) for i, (n, m) in enumerate(modules)]
            if self.merge:
                stages = merge_reducing(stages, tensors)
            with torch.no_grad():
                top = len(tensors) - 1
                b = tensors[top]
                names, maps, feats, gs = [stages[-1].name], [], [b], [grads[top]]
                maps.append((b * grads[top]).clamp_min(0).sum(1))
                for k in range(len(stages) - 1, 0, -1):
                    st = stages[k]
                    g = grads[st.start]
                    b = self._invert(st, tensors[st.start], b) * (g.abs() > self.threshold).to(b.dtype)
                    names.append(stages[k - 1].name)
                    maps.append((b * g).clamp_min(0).sum(1))
                    feats.append(b)
                    gs.append(g)
        self.layer = layer
        scores = targets.scores.detach()
        return NAFlowTerms(names[::-1], maps[::-1], feats[::-1], gs[::-1], ClassTargets(targets.indices, scores),
                           output.detach())

    def __call__(self, x: torch.Tensor, target: Target = None) -> Explanation:
        t = self.terms(x, target)
        size = tuple(x.shape[-2:])
        flow = torch.stack([normalize_maps(m, size, relu=False) for m in t.maps], dim=1)
        return Explanation(
            maps=flow[:, -1], raw=t.maps[-1], targets=t.targets.indices, scores=t.targets.scores, logits=t.logits,
            method=self.name, layer=f"{t.names[0]}..{t.names[-1]}", flow=flow, flow_raw=None, flow_layers=tuple(t.names),
        )
