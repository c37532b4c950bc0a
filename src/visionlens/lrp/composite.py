"""Composites: which rule applies to which module, chosen by dotted name or by module type.

Lookup order for a module: its dotted name in ``name_rules``; the first layer (``first_rule``,
z^B by default); ``type_rules`` given to the composite; then the global table (extended with
:func:`register_rule`). A type is a class (matched with ``isinstance``) or a fully qualified class
name such as ``"torchvision.ops.misc.SqueezeExcitation"`` (matched along the class's MRO without
importing the library). A module that gets a rule is one *unit*: its children get no rule of their
own (this is how a whole squeeze-excitation block is handled by one gating rule).

A leaf module without a rule, or a container with parameters of its own, gets no rule; if it is
reached by the relevance computation the engine stops with an :class:`~visionlens.errors.LRPError`
that names the module and says how to register a rule, so relevance is never silently wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .canonizers import Add
from .rules import Gating, Pass, Rule, ZBox, ZPlus, ZRule

TypeKey = type | str

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.Hardswish, nn.GELU, nn.Mish)
_DROPOUT = (nn.modules.dropout._DropoutNd, "torchvision.ops.stochastic_depth.StochasticDepth", "timm.layers.drop.DropPath",
            "timm.layers.drop.DropBlock2d")

# The rules of the reference (mongeoroo/Relevance-CAM), extended to the modules of torchvision/timm CNNs.
_DEFAULT_RULES: list[tuple[TypeKey, Rule]] = [
    ((nn.Conv1d, nn.Conv2d, nn.Conv3d), ZPlus(bias="twice")),
    (nn.Linear, ZPlus(bias="none")),
    (nn.modules.batchnorm._BatchNorm, Pass()),
    (_ACTIVATIONS, Pass()),
    (_DROPOUT, Pass()),
    ((nn.Identity, nn.Flatten), Pass()),
    ((nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d), ZRule(positive=True)),
    ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
      nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d), ZRule()),
    (Add, ZRule()),
    (("torchvision.ops.misc.SqueezeExcitation", "timm.layers.squeeze_excite.SEModule",
      "timm.models._efficientnet_blocks.SqueezeExcite"), Gating()),
]
_FIRST_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _flatten(key) -> tuple:
    return tuple(key) if isinstance(key, tuple) else (key,)


def _matches(module: nn.Module, key: TypeKey) -> bool:
    if isinstance(key, str):
        return any(f"{c.__module__}.{c.__qualname__}" == key for c in type(module).__mro__)
    return isinstance(module, key)


def register_rule(module_type: TypeKey | tuple, rule: Rule) -> None:
    """Add ``rule`` for ``module_type`` (a class, a qualified class name, or a tuple of them) to the
    global table used by every composite; it takes precedence over the built-in entries."""
    if not isinstance(rule, Rule):
        raise TypeError(f"rule must be a visionlens.lrp.rules.Rule, got {type(rule).__name__}")
    _DEFAULT_RULES.insert(0, (module_type, rule))


def default_rules() -> list[tuple[TypeKey, Rule]]:
    """The global ``(type, rule)`` table, first match wins."""
    return list(_DEFAULT_RULES)


@dataclass
class Unit:
    """A module that is handled as one piece: ``rule`` is ``None`` when there is none for it."""

    name: str
    module: nn.Module
    rule: Rule | None


class Composite:
    """Rule choice for a whole model.

    ``type_rules``: ``{type or qualified name or tuple: rule}`` (before the global table);
    ``name_rules``: ``{dotted name: rule}`` (highest precedence); ``first_layer``: the dotted name of
    the first layer, ``"auto"`` (the first conv/linear module in definition order) or ``None``
    (no special first layer); ``first_rule``: its rule (z^B with per-image bounds by default).
    """

    def __init__(
        self,
        type_rules: dict | None = None,
        name_rules: dict[str, Rule] | None = None,
        first_layer: str | None = "auto",
        first_rule: Rule | None = None,
    ):
        self.type_rules: list[tuple[TypeKey, Rule]] = list((type_rules or {}).items())
        self.name_rules = dict(name_rules or {})
        self.first_layer = first_layer
        self.first_rule = first_rule if first_rule is not None else ZBox()

    def register(self, module_type: TypeKey | tuple, rule: Rule) -> "Composite":
        """Add a type rule to this composite only (before the ones it has); returns ``self``."""
        self.type_rules.insert(0, (module_type, rule))
        return self

    def _first_name(self, model: nn.Module) -> str | None:
        if self.first_layer != "auto":
            return self.first_layer
        for name, module in model.named_modules():
            if isinstance(module, _FIRST_TYPES):
                return name
        return None

    def rule_for(self, name: str, module: nn.Module, first: str | None = None) -> Rule | None:
        if name in self.name_rules:
            return self.name_rules[name]
        if first is not None and name == first:
            return self.first_rule
        for key, rule in self.type_rules + _DEFAULT_RULES:
            if any(_matches(module, k) for k in _flatten(key)):
                return rule
        return None

    def units(self, model: nn.Module) -> list[Unit]:
        """The modules that receive relevance hooks: every module with a rule (its children are
        skipped), every leaf module without one and every container with parameters of its own."""
        first = self._first_name(model)
        units: list[Unit] = []
        covered: list[str] = []
        for name, module in model.named_modules():
            if not name or any(name.startswith(p + ".") for p in covered):
                continue
            rule = self.rule_for(name, module, first)
            if rule is not None:
                units.append(Unit(name, module, rule))
                covered.append(name)
            elif not module._modules or module._parameters:
                units.append(Unit(name, module, None))
        unknown = set(self.name_rules) - {n for n, _ in model.named_modules()}
        if unknown:
            from ..errors import LRPError

            raise LRPError(f"name_rules name modules that are not in the model: {', '.join(sorted(unknown))}")
        return units


def missing_rule_message(name: str, module: nn.Module) -> str:
    cls = type(module)
    qual = f"{cls.__module__}.{cls.__qualname__}"
    has_params = any(True for _ in module.parameters(recurse=False))
    what = "module with parameters" if has_params else "module of a type"
    return (
        f"LRP has no rule for {what} '{name}' ({qual}); register one, e.g. "
        f"visionlens.lrp.register_rule({cls.__name__}, visionlens.lrp.rules.ZPlus()) or "
        f"Composite(name_rules={{'{name}': rule}})"
    )
