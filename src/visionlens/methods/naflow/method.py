"""NAFlow (Liao et al., arXiv:2412.01202, TPAMI 2026): the neuron-abandoning attention flow, one
map per layer of a CNN's feature extractor, from the first layers to the last.

The feature extractor is flattened into a chain of stages ``s_0 .. s_{T-1}`` in call order
(``nn.Sequential`` and never-called containers such as ``nn.ModuleList`` are expanded, a module
containing the layer is opened; any other module, e.g. a residual block, is one stage; see
:func:`chain_modules`), with tensors ``t_0`` (its input) and ``t_{k+1} = s_k(t_k)``. With ``y``
the target logit and ``G_k = dy/dt_k`` (true gradients at the forward activations, one backward
pass):

* top: ``B_T = t_T``, ``M_T = sum_c ReLU(B_T * G_T)`` (gradient x activation);
* Neuron-Abandoning Back-Propagation, ``k = T-1 .. 1``: ``B_k = s_k^{-1}(B_{k+1}) * N_k`` with the
  abandoning mask ``N_k = 1[|G_k| > tau]`` (``tau = 0``: exact zeros, as the reference) and the
  per-module inverses of :mod:`visionlens.methods.naflow.inverse`; ``M_k = sum_c ReLU(B_k * G_k)``;
* ``s_0`` is never inverted (as the reference), so there are ``T`` maps, each min-max normalised
  on its own and resized bilinearly to the input; ``flow[:, 0]`` is the shallowest.

Each least-squares inverse drops the equations of the units that the ReLU after it leaves
inactive (carried down through BatchNorm to the conv or block that made them): the paper's
inverse of ReLU-after-conv (:func:`dead_units`). The map at a ReLU's input is that of its output,
as in the paper's figures (``post_relu``). Every solve is reported in ``NAFlowExplanation.solves``.

A convolution whose output has fewer elements than its input is merged with the stages before it,
back to a conv whose input is smaller than its output, and the merged stage is inverted as one
composite (AlexNet: conv3-relu3-conv4), as ``ly9802/NAFlow:model/alexnetFlow.py``. Unlike the
released code, convolutions are really inverted (full least squares, matrix-free LSMR; the
released behaviour, which falls back to the forward input, is ``solver="released"``, and its
square truncation ``solver="truncated_square"``).

:class:`SimilarityNAFlow` is the variant for similarity-metric models (spec §5.4, inferred): the
top gradient is the vector-Jacobian product of SFAM's contribution weights, then the same cascade.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import ClassVar

import torch
from torch import nn

from .inverse import (ZERO_MASK, SolveReport, SolverOptions, check_invertible, composite_solve, inactive_units, kind_of,
                      module_function, solve_inverse)
from ...core.hooks import autograd_ready, gradient_cut_message, outside_inference_mode
from ...core.layers import model_device, find_last_spatial_layer, resolve_layer
from ...core.result import Explanation, normalize_maps
from ...core.similarity import (EUCLID_MODES, NORMALIZATIONS, as_references, contribution_scores, contributions,
                               normalize_scores, similarity)
from ...core.targets import ClassTargets, Target, resolve_targets
from ...core.vit import check_output_finite, find_swin, finite_model_output, recognised_vit
from ...errors import InputError, LayerError
from ...models.embedder import Embedder
from ..base import FlowMethod, check_input, input_mismatch_as_input_error
from ..similarity import PairExplanation, SimilarityExplanation, SimilarityMethod, _split, pair_batch


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
    ``features`` (the BPFMs ``B``) and ``gradients`` (``G``), plus targets and logits, and
    ``solves``: one :class:`~visionlens.methods.naflow.inverse.SolveReport` per least-squares
    inverse, deepest first (the order they were solved)."""

    names: list[str]
    maps: list[torch.Tensor]
    features: list[torch.Tensor]
    gradients: list[torch.Tensor]
    targets: ClassTargets
    logits: torch.Tensor
    solves: list[SolveReport]


@dataclass
class NAFlowExplanation(Explanation):
    """An :class:`Explanation` with the flow, plus ``solves``: how each layer's least-squares
    inverse ended (:class:`~visionlens.methods.naflow.inverse.SolveReport`, deepest first)."""

    solves: tuple[SolveReport, ...] = ()
    per_batch: ClassVar[tuple[str, ...]] = ("solves",)

    @property
    def converged(self) -> bool:
        """Every layer's inverse stopped on a convergence test, for every image."""
        return all(r.converged for r in self.solves)


def _is_plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def call_order(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """The rank of each submodule's first call in one forward pass of ``x`` (no grad)."""
    order: dict[str, int] = {}

    def record(name):
        def hook(mod, inputs):
            order.setdefault(name, len(order))
        return hook

    handles = [m.register_forward_pre_hook(record(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return order


@dataclass
class Chain:
    """The stages from the input to a layer, and the non-``Sequential`` modules on the way that
    were opened (their children taken in call order), innermost last."""

    modules: list[tuple[str, nn.Module]]
    opened: list[tuple[str, nn.Module]]


def chain_modules(model: nn.Module, layer: str, order: dict[str, int]) -> Chain:
    """The elementary stages from the input to ``layer``, in call order: plain ``Sequential``
    containers and containers that are never called themselves (``ModuleList``) are expanded;
    any other module before the layer is one stage (a composite, e.g. a residual block); a module
    that contains the layer is opened and its children followed in the order they were called
    (whether that is really a chain is checked on the forward pass)."""
    opened: list[tuple[str, nn.Module]] = []

    def rank(full: str, child: nn.Module) -> int | None:
        if full in order:
            return order[full]
        inner = [order[f"{full}.{n}"] for n, _ in child.named_modules() if n and f"{full}.{n}" in order]
        return min(inner) if inner else None

    def expand(prefix: str, module: nn.Module):
        children = []
        for n, c in module.named_children():
            full = f"{prefix}.{n}" if prefix else n
            r = rank(full, c)
            if r is not None:  # never called (e.g. an unused head): not on the chain
                children.append((r, full, c))
        out = []
        for _, full, child in sorted(children, key=lambda t: t[0]):
            called = full in order
            opaque = called and not _is_plain_sequential(child)
            if full == layer and opaque:
                out.append((full, child))
                return out, True
            if full == layer or layer.startswith(full + "."):
                if opaque:
                    opened.append((full, child))
                sub, found = expand(full, child)
                out += sub
                return out, found or full == layer
            if opaque:
                out.append((full, child))
            else:
                out += expand(full, child)[0]
        return out, False

    stages, found = expand("", model)
    if not found or not stages:
        raise LayerError(f"layer '{layer}' is not on the chain of modules NAFlow can follow from the input "
                         "(it was not called in the forward pass)")
    return Chain(stages, opened)


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


def _refuse_transformers(model: nn.Module) -> None:
    """One :class:`LayerError` line for a Vision Transformer or Swin, whose chain NAFlow cannot
    follow (the last spatial layer there is the patch embedding, a one-layer "flow")."""
    swin = find_swin(model)
    if swin is not None:
        raise LayerError(f"NAFlow follows the layers of a CNN and {type(model).__name__} is a Swin Transformer; use "
                         f"gradcam on layer '{swin.norms[-1]}'")
    if recognised_vit(model) is not None:
        raise LayerError(f"NAFlow follows the layers of a CNN and {type(model).__name__} is a Vision Transformer; use "
                         "daam, chefer or attnlrp (or gradcam, whose default is the last block's norm)")


class NAFlow(FlowMethod):
    """``NAFlow(model, layer=None)(x, target=None) -> NAFlowExplanation`` with ``flow`` ``(B, L, H, W)``
    and ``solves`` (per-layer solver reports).

    ``layer``: the last module of the feature extractor (default: ``features`` when the model has
    one, else the last spatial layer). ``solver``: ``"lsmr"`` (least squares with each ReLU's mask
    folded into the inverted layer, default), ``"truncated_square"`` or ``"released"`` (see the
    module docstring); ``atol``, ``btol`` (LSMR tolerances), ``max_iter`` (iteration cap per
    inverse; the default 1000 is a safety net: the reports say whether a layer stopped on it),
    ``float64``; ``threshold`` (``tau`` of the abandoning mask, for smooth activations); ``offset``
    (``"operating_point"`` or ``"zero"``, composites); ``damp``: Tikhonov damping of every
    least-squares inverse, relative to that operator's largest singular value (``0``, default: the
    plain inverse; ``0.1`` converges in about 50 iterations per layer, a regularised inverse whose
    lower-layer maps differ, see docs/naflow.md); ``merge`` (merge dimension-reducing convs,
    as the reference); ``post_relu``: the map at a ReLU's input is that of its output, as the
    paper's figures (default: ``True``, except ``solver="released"`` which keeps its parity maps).
    """

    name = "naflow"
    iterative = True  # takes max_iter (make_method passes the command line's --max-iter)

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None, solver: str = "lsmr", atol: float = 1e-6,
                 btol: float = 1e-6, max_iter: int | None = 1000, float64: bool = False, threshold: float = 0.0,
                 offset: str = "operating_point", merge: bool = True, post_relu: bool | None = None, damp: float = 0.0):
        super().__init__(model)
        _refuse_transformers(model)
        if threshold < 0:
            raise InputError(f"threshold must be >= 0, got {threshold}")
        if max_iter is not None and (isinstance(max_iter, bool) or int(max_iter) != max_iter or max_iter < 1):
            raise InputError(f"max_iter must be a positive integer or None, got {max_iter!r}")
        for label, tol in (("atol", atol), ("btol", btol)):
            if not 0 <= tol < 1:
                raise InputError(f"{label} must be in [0, 1), got {tol!r}")
        if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0 <= damp <= 1:
            raise InputError(f"damp must be a number in [0, 1] (relative to each layer's largest singular value), got {damp!r}")
        self.layer_arg = layer
        self.options = SolverOptions(atol=atol, btol=btol, max_iter=max_iter, float64=float64, mode=solver, offset=offset,
                                     damp=float(damp))
        self.threshold, self.merge = float(threshold), merge
        self.post_relu = solver != "released" if post_relu is None else bool(post_relu)
        self.layer = None

    def probe(self, x: torch.Tensor, target: Target = None) -> NAFlowExplanation:
        """A cheap check of the layer, the chain and the target: the same forward and backward pass
        and the same flow layers, but no least-squares solve (each inverse falls back to the forward
        input, as ``solver="released"``), so the flow is not NAFlow's. ``explain`` probes with it."""
        options = self.options
        self.options = replace(options, mode="released")
        try:
            return self(x, target)
        finally:
            self.options = options

    def _layer_name(self, x: torch.Tensor) -> str:
        if self.layer_arg is not None:
            return resolve_layer(self.model, self.layer_arg)[0]
        features = getattr(self.model, "features", None)
        if isinstance(features, nn.Module):
            return resolve_layer(self.model, features)[0]
        return find_last_spatial_layer(self.model, x)

    def _invert(self, stage: Stage, x: torch.Tensor, b: torch.Tensor, keep: torch.Tensor | None):
        """``stage^{-1}(b)`` over the output units ``keep``, and its solver report (or ``None``)."""
        if len(stage.modules) == 1:
            return solve_inverse(stage.modules[0][1], x, b, self.options, keep)
        for name, module in stage.modules:
            check_invertible(module, name)
        dtype = torch.float64 if self.options.float64 else x.dtype
        fns = [module_function(m, dtype) for _, m in stage.modules]

        def f(t):
            for fn in fns:
                t = fn(t)
            return t

        return composite_solve(f, x, b, self.options, keep, [m for _, m in stage.modules])

    def _forward_chain(self, x: torch.Tensor, layer: str, target: Target):
        """One forward pass that records the chain's tensors ``t_0 .. t_T`` (recomputed from the
        first stage's input, in-place activations switched off) and their gradients."""
        chain = chain_modules(self.model, layer, call_order(self.model, x[:1]))
        modules = chain.modules
        for name, module in modules:
            check_invertible(module, name)
        inplace = [m for _, mod in modules for m in mod.modules() if getattr(m, "inplace", False) is True]
        captured: dict[str, object] = {}

        def not_a_chain() -> LayerError:
            if chain.opened:
                full, module = chain.opened[-1]
                return LayerError(f"layer '{layer}' is inside '{full}' ({type(module).__name__}), whose forward does more "
                                  f"than call its children in order; NAFlow inverts it as one block: choose '{full}' "
                                  "or a layer outside it")
            return LayerError(f"the modules before '{layer}' are not a plain chain (the model's forward adds operations "
                              "between them); pass the feature extractor as layer=...")

        def first_hook(mod, inputs):
            if "input" not in captured:
                captured["input"] = inputs[0].detach().clone()

        def last_hook(mod, inputs, output):
            if "tensors" in captured or "busy" in captured:
                return None
            captured["busy"] = True
            tensors = [captured["input"].requires_grad_(True)]
            try:
                for i, (_, m) in enumerate(modules):
                    # the last stage is called without its hooks (another hook may stop the forward there)
                    tensors.append(m.forward(tensors[-1]) if i == len(modules) - 1 else m(tensors[-1]))
            except RuntimeError:
                raise not_a_chain() from None
            check_output_finite(output, f"the output of layer '{layer}'")  # NaN != NaN: not a failed chain
            if not torch.is_tensor(output) or tensors[-1].shape != output.shape \
                    or not torch.allclose(tensors[-1], output, rtol=1e-4, atol=1e-4):
                raise not_a_chain()
            captured["tensors"] = tensors
            return tensors[-1]

        handles = []
        try:
            for m in inplace:
                m.inplace = False
            handles = [modules[0][1].register_forward_pre_hook(first_hook),
                       modules[-1][1].register_forward_hook(last_hook)]
            with torch.enable_grad():
                output = finite_model_output(self.model(x))
                targets = resolve_targets(target, output, x.shape[0])
                if targets.scores.dim() != 1:
                    raise InputError("NAFlow explains one class per image; give one target per image")
                if "tensors" not in captured:
                    raise LayerError(f"layer '{layer}' was not reached in the forward pass")
                tensors = captured["tensors"]
                if not targets.scores.requires_grad or not all(t.requires_grad for t in tensors[1:]):
                    raise LayerError(gradient_cut_message([layer]))
                grads = torch.autograd.grad(targets.scores.sum(), tensors[1:], allow_unused=True)
        finally:
            for h in handles:
                h.remove()
            for m in inplace:
                m.inplace = True
        tensors = [t.detach() for t in tensors]
        grads = [None] + [torch.zeros_like(t) if g is None else g.detach() for t, g in zip(tensors[1:], grads)]
        return modules, tensors, grads, targets, output.detach()

    def compute_terms(self, x: torch.Tensor, target: Target) -> NAFlowTerms:
        """The cascade for ``target`` (a class index per image, ``None`` for the predicted class, or
        a callable ``output -> (B,)`` score, e.g. the similarity of :class:`SimilarityNAFlow`)."""
        layer = self._layer_name(x)
        modules, tensors, grads, targets, output = self._forward_chain(x, layer, target)
        stages = [Stage(n, [(n, m)], i, i + 1) for i, (n, m) in enumerate(modules)]
        if self.merge:
            stages = merge_reducing(stages, tensors)
        dead = dead_units(modules, tensors)
        with torch.no_grad():
            top = len(tensors) - 1
            b = tensors[top]
            names, maps, feats, gs = [stages[-1].name], [(b * grads[top]).clamp_min(0).sum(1)], [b], [grads[top]]
            solves: list[SolveReport] = []
            for k in range(len(stages) - 1, 0, -1):
                st = stages[k]
                if self.post_relu and len(st.modules) == 1 and isinstance(st.modules[0][1], ZERO_MASK):
                    g = grads[st.end]  # the paper's map at a ReLU's input is its output's
                else:
                    keep = None if dead[st.end] is None else ~dead[st.end]
                    b, report = self._invert(st, tensors[st.start], b, keep)
                    if report is not None:
                        solves.append(replace(report, layer=st.name, kind=_stage_kind(st)))
                    g = grads[st.start]
                    b = b * (g.abs() > self.threshold).to(b.dtype)
                names.append(stages[k - 1].name)
                maps.append((b * g).clamp_min(0).sum(1))
                feats.append(b)
                gs.append(g)
        self.layer = layer
        return NAFlowTerms(names[::-1], maps[::-1], feats[::-1], gs[::-1],
                           ClassTargets(targets.indices, targets.scores.detach()), output, solves)

    def flow_explanation(self, x: torch.Tensor, t: NAFlowTerms) -> NAFlowExplanation:
        warn_if_not_converged(t.solves, self.options.max_iter)
        size = tuple(x.shape[-2:])
        flow = torch.stack([normalize_maps(m, size, relu=False) for m in t.maps], dim=1)
        return NAFlowExplanation(
            maps=flow[:, -1], raw=t.maps[-1], targets=t.targets.indices, scores=t.targets.scores, logits=t.logits,
            method=self.name, layer=f"{t.names[0]}..{t.names[-1]}", flow=flow, flow_raw=None, flow_layers=tuple(t.names),
            solves=tuple(t.solves),
        )


def warn_if_not_converged(solves, max_iter: int | None) -> None:
    """One :class:`NotConvergedWarning` when some layer inverse stopped at the iteration cap."""
    stopped = [r for r in solves if not r.converged]
    if not stopped:
        return
    import warnings

    from ...errors import NotConvergedWarning

    worst = max(max(r.residual) for r in stopped)
    warnings.warn(f"naflow: {len(stopped)} of {len(solves)} layer inverses stopped at max_iter={max_iter} before "
                  f"converging (largest relative residual {worst:.2g}); the maps are approximate: raise max_iter "
                  "(--max-iter) or damp (--damp) for converged ones", NotConvergedWarning, stacklevel=4)


def _stage_kind(stage: Stage) -> str:
    return "merged" if len(stage.modules) > 1 else kind_of(stage.modules[0][1])


def dead_units(modules: list[tuple[str, nn.Module]], tensors: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """For each chain tensor ``t_j``, the units whose equations the inverse of the layer before
    drops (``None``: none): where the ReLU that ``t_j`` feeds is inactive, carried down through
    BatchNorm and other unit-wise stages to the convolution or block that produced them. That is
    the paper's inverse of ReLU-after-conv, whose Jacobian has zero rows at inactive units."""
    dead: list[torch.Tensor | None] = [None] * len(tensors)
    for j in range(len(modules) - 1, -1, -1):
        module = modules[j][1]
        own = inactive_units(module, tensors[j])
        above = dead[j + 1] if kind_of(module) in ("elementwise", "batchnorm") else None
        if own is None or above is None:
            dead[j] = own if above is None else above
        else:
            dead[j] = own | above
    return dead


@dataclass
class SimilarityNAFlowExplanation(SimilarityExplanation):
    """A :class:`SimilarityExplanation` with the flow and NAFlow's per-layer ``solves``."""

    solves: tuple[SolveReport, ...] = ()

    @property
    def converged(self) -> bool:
        """Every layer's inverse stopped on a convergence test, for every image."""
        return all(r.converged for r in self.solves)


class SimilarityNAFlow(SimilarityMethod):
    """NAFlow for a similarity-metric model [inferred, spec §5.4: the paper's "channel contribution
    weights via the Jacobian matrix" module is not in the released code].

    ``SimilarityNAFlow(model, layer=None, metric="cosine")(x, reference)`` or ``.pair(a, b)``:

    1. the dimension-wise contribution weights ``w`` of SFAM (CIS, then ``normalize``) between the
       query embedding ``e`` and the reference(s);
    2. ``G_T = J_e^T w`` with ``J_e = de/dY_T``: a vector-Jacobian product from the embedding the
       metric uses (after the model's projection and L2 normalisation) to the layer, i.e. the
       gradient of the scalar ``w . e`` with ``w`` held constant;
    3. the cascade of :class:`NAFlow` unchanged, with the target logit replaced by ``w . e``.

    The result is a :class:`~visionlens.methods.sfam.SimilarityExplanation` with ``flow``
    ``(B, L, H, W)`` and ``flow_layers``; ``.pair`` gives the flows of both images from one set of
    weights. ``layer``: the last layer of the cascade (default: the embedding layer, the GAP input).
    The solver options are those of :class:`NAFlow`.
    """

    name = "naflow"

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None, metric: str = "cosine",
                 normalize: str = "minmax", euclid_mode: str = "difference", **naflow_options):
        super().__init__(model, layer, metric)
        if normalize not in NORMALIZATIONS:
            raise InputError(f"unknown CIS normalisation {normalize!r}; choose from: {', '.join(NORMALIZATIONS)}")
        if euclid_mode not in EUCLID_MODES:
            raise InputError(f"unknown euclid_mode {euclid_mode!r}; choose from: {', '.join(EUCLID_MODES)}")
        self.normalize, self.euclid_mode = normalize, euclid_mode
        NAFlow(model, **naflow_options)  # validates the options
        self.naflow_options = naflow_options

    def explain(self, x: torch.Tensor, refs: torch.Tensor) -> SimilarityExplanation:
        with outside_inference_mode():  # the weights w below enter the backward passes of the solve
            return self._explain(x, refs)

    def _explain(self, x: torch.Tensor, refs: torch.Tensor) -> SimilarityExplanation:
        check_input(x)
        x = autograd_ready(x.to(model_device(self.model)))
        e = self.embed(x)
        refs = as_references(refs.to(e.device, e.dtype), x.shape[0], e.shape[1])
        scores = similarity(e, refs, self.metric)
        cis = contribution_scores(contributions(e, refs, self.metric, self.euclid_mode))
        w = normalize_scores(cis, self.normalize)
        name, module = self.resolve(x)
        embedded = isinstance(self.model, Embedder)  # its output is already the metric's embedding

        def score(output: torch.Tensor) -> torch.Tensor:  # w . e, w constant: its gradient is J_e^T w
            emb = output if embedded else self._finish(output)
            if emb.shape != w.shape:
                raise InputError(f"the model returns {tuple(emb.shape)}, not the (B, D) embedding {tuple(w.shape)}")
            return (emb * w.to(emb.dtype)).sum(1)

        t = NAFlow(self.model, layer=module, **self.naflow_options).terms(x, score)
        warn_if_not_converged(t.solves, self.naflow_options.get("max_iter", 1000))
        flow = torch.stack([normalize_maps(m, tuple(x.shape[-2:]), relu=False) for m in t.maps], dim=1)
        names = [n.removeprefix("backbone.") if embedded else n for n in t.names]  # as SFAM: relative to the backbone
        return SimilarityNAFlowExplanation(
            maps=flow[:, -1], raw=t.maps[-1], targets=None, scores=scores, logits=e, method=self.name,
            layer=f"{names[0]}..{names[-1]}", flow=flow, flow_layers=tuple(names), references=refs,
            metric=self.metric, cis=cis, weights=w, solves=tuple(t.solves),
        )

    def pair(self, a: torch.Tensor, b: torch.Tensor) -> PairExplanation:
        """Both images' flows from one set of weights: ``a[i]`` against ``b[i]`` and ``b[i]``
        against ``a[i]`` (one batch of ``2B``; ``b`` may hold one image for all of ``a``)."""
        x = pair_batch(a, b)
        n = a.shape[0]
        with input_mismatch_as_input_error(self.model, x):
            e = self.embed(x)
            exp = self.explain(x, torch.cat([e[n:], e[:n]])[:, None])
        parts = []
        for part, sl in zip(_split(exp, n), (slice(0, n), slice(n, None))):
            kept = {f.name: getattr(part, f.name) for f in fields(part)}
            kept.update(flow=exp.flow[sl], flow_layers=exp.flow_layers, solves=_pick_samples(exp.solves, sl))
            parts.append(SimilarityNAFlowExplanation(**kept))
        return PairExplanation(*parts)


def _pick_samples(solves: tuple[SolveReport, ...], sl: slice) -> tuple[SolveReport, ...]:
    """The reports of the samples ``sl`` of the batch."""
    per_sample = ("iterations", "residual", "normal_residual", "stop", "rows")
    return tuple(replace(r, **{k: getattr(r, k)[sl] for k in per_sample}) for r in solves)
