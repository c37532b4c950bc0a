"""The LRP engine: forward pass with hooks, then relevance propagation from a target down to any
layer (or the input) of an unmodified model, for a whole batch in one backward pass.

How it works. Each *unit* of the composite (a module with a rule) gets a forward pre-hook that
switches autograd off for the module's own forward (no graph is built inside it) and a forward
hook that re-attaches its output to its inputs through one autograd node whose backward is the
unit's rule. The layer whose relevance is wanted (the earliest one when several are asked for) is
made a leaf, so nothing before it is recorded either. Backpropagating the start relevance through
this graph therefore runs exactly the rules, and ``torch.autograd.grad`` returns the relevance at
the requested tensors. Before that, the graph is walked: any node that is neither a rule nor a
pure reshape (a functional ``x + y``, ``torch.cat``, an un-hooked activation, ...) stops the run
with an error naming the operation and the module it feeds, so relevance is never silently wrong.

The model is restored exactly afterwards: hooks removed, canonizers undone, train/eval modes and
``requires_grad`` flags as before, parameters untouched (``preserved_model_state``).
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from ..core.hooks import preserved_model_state
from ..core.layers import eager_module, model_device, resolve_layer
from ..core.targets import ClassTargets, Target, resolve_targets
from ..core.vit import AmbiguousOutputError, check_output_finite, model_output
from ..errors import InputError, LayerError, LRPError
from .canonizers import Canonizer, canonized, default_canonizers
from .composite import Composite, Unit, missing_rule_message

INPUT = "input"

# autograd nodes that only move relevance around (reshapes, copies), allowed between rule nodes
_RESHAPES = {
    "CloneBackward0", "ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "AliasBackward0",
    "SqueezeBackward0", "SqueezeBackward1", "SqueezeBackward2", "SqueezeBackward3", "UnsqueezeBackward0",
    "PermuteBackward0", "TransposeBackward0", "TBackward0", "ToCopyBackward0", "ContiguousBackward0",
    "BackwardHookFunctionBackward",  # a full backward hook of the caller's on a module: identity forward
}


class _Propagate(torch.autograd.Function):
    """Identity on the module output in the forward pass; the unit's rule in the backward pass."""

    @staticmethod
    def forward(ctx, unit: Unit, output: torch.Tensor, *inputs: torch.Tensor):
        ctx.unit = unit
        ctx.save_for_backward(*inputs)
        return output

    @staticmethod
    def backward(ctx, relevance: torch.Tensor):
        unit = ctx.unit
        with torch.enable_grad():
            rel = unit.rule.relevance(unit.module, ctx.saved_tensors, relevance)
        return (None, None, *rel)


@dataclass
class Attribution:
    """Result of :meth:`LRP.attribute`. ``relevance`` and ``activations`` map each requested layer
    name (``"input"`` for the model input) to ``(B, ...)`` tensors; ``start`` is the relevance put
    on the model output; ``targets`` the resolved target (indices and scores)."""

    output: torch.Tensor
    targets: ClassTargets
    start: torch.Tensor
    relevance: dict[str, torch.Tensor] = field(default_factory=dict)
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)  # per layer, how often it ran (a reused module: more than 1)


def initial_relevance(target: Target, output: torch.Tensor, contrastive: bool = True) -> tuple[torch.Tensor, ClassTargets]:
    """The relevance put on the model output.

    A class target ``t`` (an int, one per image, or ``None`` for the prediction) with
    ``contrastive=True`` starts from ``R_t = 1`` and ``R_c = -1/C`` for every other class ``c``
    (``C`` = number of classes; the reference's contrastive start, not scaled by the logit); with
    ``contrastive=False`` from the one-hot vector. A callable target starts from the gradient of
    its score with respect to the output (for ``lambda y: y[:, t]`` that is the one-hot vector).
    """
    leaf = output.detach().requires_grad_(True)
    with torch.enable_grad():  # also when the caller is in torch.no_grad()
        targets = resolve_targets(target, leaf, output.shape[0])
        total = targets.scores.sum()
    if targets.indices is not None and targets.indices.dim() == 2:
        raise InputError(f"LRP explains one class per image: give a 1-D target, not a {tuple(targets.indices.shape)} "
                         "one (call it once per class)")
    if targets.indices is None:
        if not targets.scores.requires_grad:
            raise InputError("the callable target's score does not depend on the model output")
        (start,) = torch.autograd.grad(total, leaf, allow_unused=True)
        start = torch.zeros_like(leaf) if start is None else start
    else:
        num = output.shape[1]
        fill = -1.0 / num if contrastive else 0.0
        start = torch.full_like(leaf, fill).scatter_(1, targets.indices[:, None], 1.0)
    return start.detach(), ClassTargets(targets.indices, targets.scores.detach())


def _op_name(node) -> str:
    name = type(node).__name__
    for suffix in ("Backward0", "Backward1", "Backward"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


class LRP:
    """Layer-wise relevance propagation on an unmodified model.

    >>> lrp = LRP(model)                                   # default composite and canonizers
    >>> att = lrp.attribute(x, target=281, layers=["layer3", "input"])
    >>> att.relevance["layer3"].shape                      # (B, 256, 14, 14)

    ``composite`` chooses the rules (see :class:`~visionlens.lrp.composite.Composite`);
    ``canonizers`` default to ``[NoInplace(), ResidualAdd()]``.
    """

    def __init__(self, model: nn.Module, composite: Composite | None = None, canonizers: Sequence[Canonizer] | None = None):
        self.model = eager_module(model)  # a compiled model's eager module: the rules are hooks
        self.composite = composite if composite is not None else Composite()
        self.canonizers = list(canonizers) if canonizers is not None else default_canonizers()

    # ----- hooks

    def _register(self, units: list[Unit], layers: dict[str, nn.Module], state: dict) -> list:
        handles = []
        names = {id(u.module): u.name for u in units}

        def pre_hook(unit: Unit):
            def hook(module, args):
                active = torch.is_grad_enabled() and any(torch.is_tensor(a) and a.requires_grad for a in args)
                if active and unit.rule is None:
                    raise LRPError(missing_rule_message(unit.name, module))
                state["stack"].append(active)
                if active:
                    torch.set_grad_enabled(False)

            return hook

        def post_hook(unit: Unit):
            def hook(module, args, output):
                if not state["stack"].pop():
                    return None
                torch.set_grad_enabled(True)
                if not torch.is_tensor(output):
                    raise LRPError(f"module '{unit.name}' returns {type(output).__name__}; LRP rules need a single tensor output")
                tensors = [a for a in args if torch.is_tensor(a)]
                out = _Propagate.apply(unit, output.detach(), *tensors)
                state["nodes"][out.grad_fn] = unit.name
                return out

            return hook

        def capture(name: str):
            def hook(module, args, output):
                if not torch.is_tensor(output):
                    raise LayerError(f"layer '{name}' returns {type(output).__name__}, not a tensor; choose another layer")
                state["calls"][name] = state["calls"].get(name, 0) + 1
                if name in state["captured"]:  # a module called again (a block's shared ReLU): like every
                    state["captured"][name] = output  # method, explain its last call (the graph runs through it)
                    return None
                if state["leaf"] is None:
                    leaf = output.detach().requires_grad_(True)
                    torch.set_grad_enabled(True)  # restored when the caller's no_grad block exits
                    state["leaf"] = leaf
                    state["captured"][name] = leaf
                    return leaf.clone()
                state["captured"][name] = output
                return None

            return hook

        for unit in units:
            handles.append(unit.module.register_forward_pre_hook(pre_hook(unit)))
            if unit.rule is not None:
                handles.append(unit.module.register_forward_hook(post_hook(unit)))
        for name, module in layers.items():  # after the rule hooks: they see the rule's output
            handles.append(module.register_forward_hook(capture(name)))
        state["names"] = names
        return handles

    @staticmethod
    def _check_graph(output: torch.Tensor, state: dict) -> None:
        """Every autograd node between the output and the requested layers must be a rule node or a
        reshape; anything else is a functional operation without a rule."""
        rule_cls = _Propagate._backward_cls
        seen = set()
        todo = [(output.grad_fn, "the model output")]
        while todo:
            node, consumer = todo.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            if isinstance(node, rule_cls):
                consumer = f"module '{state['nodes'].get(node, '?')}'"
            elif type(node).__name__ == "AccumulateGrad":
                continue
            elif type(node).__name__ not in _RESHAPES:
                raise LRPError(
                    f"LRP has no rule for the functional operation '{_op_name(node)}' that feeds {consumer}; "
                    "express it as a module (a canonizer, e.g. visionlens.lrp.ResidualAdd.register(Block, forward)) "
                    "and register a rule for that module"
                )
            todo += [(nxt, consumer) for nxt, _ in node.next_functions]

    # ----- main entry

    def attribute(
        self,
        x: torch.Tensor,
        target: Target = None,
        layers: Sequence[str | nn.Module] | str | nn.Module | None = None,
        contrastive: bool = True,
    ) -> Attribution:
        """Forward ``x`` and propagate relevance from ``target`` to ``layers`` (names, modules, or
        ``"input"``; ``None`` means the input). Returns an :class:`Attribution`."""
        if not torch.is_tensor(x) or not x.dtype.is_floating_point:
            raise InputError("input must be a float tensor")
        if layers is None:
            layers = [INPUT]
        elif isinstance(layers, (str, nn.Module)):
            layers = [layers]
        resolved: dict[str, nn.Module] = {}
        want_input = False
        for layer in layers:
            if isinstance(layer, str) and layer == INPUT:
                want_input = True
                continue
            name, module = resolve_layer(self.model, layer)
            resolved[name] = module
        x = x.to(model_device(self.model))
        model = self.model
        with preserved_model_state(model), ExitStack() as stack:
            stack.enter_context(canonized(model, self.canonizers))
            units = self.composite.units(model)
            self._check_layers(units, resolved)
            state = {"stack": [], "nodes": {}, "captured": {}, "leaf": None, "calls": {}}
            handles = self._register(units, resolved, state)
            stack.callback(lambda: [h.remove() for h in handles])
            with torch.no_grad():
                if want_input:
                    x = x.detach().requires_grad_(True)
                    state["leaf"] = x
                    torch.set_grad_enabled(True)
                try:
                    output = model(x)
                except RuntimeError as err:
                    if "_Propagate" in str(err) and "inplace" in str(err):
                        raise LRPError(
                            "an in-place operation (e.g. `out += identity`) modifies a module output; "
                            "express it as a module with a canonizer (visionlens.lrp.ResidualAdd.register)"
                        ) from None
                    raise
            try:  # a tuple's only tensor, a Hugging Face output's logits, ...
                output = model_output(output)
            except AmbiguousOutputError:
                raise
            except InputError:
                pass  # refused just below
            if not torch.is_tensor(output) or output.dim() != 2:
                raise InputError("LRP needs a model whose output is a (B, num_classes) tensor")
            check_output_finite(output)
            missing = [n for n in resolved if n not in state["captured"]]
            if missing:
                raise LayerError(f"layer '{missing[0]}' was not executed in the forward pass; choose a layer the model uses")
            if not output.requires_grad:
                raise LayerError("the model output does not depend on the requested layer(s); choose a layer before the output")
            start, targets = initial_relevance(target, output, contrastive)
            self._check_graph(output, state)
            names = ([INPUT] if want_input else []) + list(resolved)
            tensors = [x if n == INPUT else state["captured"][n] for n in names]
            grads = torch.autograd.grad(output, tensors, start, allow_unused=True)
        result = Attribution(output=output.detach(), targets=targets, start=start, calls=dict(state["calls"]))
        for n, t, g in zip(names, tensors, grads):
            result.activations[n] = t.detach()
            result.relevance[n] = torch.zeros_like(t) if g is None else g.detach()
        return result

    def _check_layers(self, units: list[Unit], layers: dict[str, nn.Module]) -> None:
        for name in layers:
            for unit in units:
                if unit.rule is not None and name.startswith(unit.name + "."):
                    raise LayerError(
                        f"layer '{name}' is inside '{unit.name}', which LRP treats as one unit ({unit.rule!r}); "
                        f"choose '{unit.name}' or another layer"
                    )
