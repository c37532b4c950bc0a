"""Layer-wise relevance propagation through hooks on unmodified models (after Zennit's design).

* ``rules``: how relevance passes one module (z+, z^B, z-rule, pass-through, gating);
* ``composite``: which rule applies to which module, by type or dotted name;
* ``canonizers``: temporary, reversible rewrites (residual additions as ``Add`` modules, no in-place ops);
* ``engine``: :class:`LRP`, which runs the forward pass and propagates relevance to any layer;
* ``attention``: AttnLRP's rules for transformers (softmax, attention products, LayerNorm, GELU) in
  the gradient x input form, attached to a ViT by :class:`AttnLRPRules`.
"""

from .attention import AttnLRPRules, identity_rule, layer_norm_rule, uniform_rule
from .canonizers import Add, Canonizer, NoInplace, ResidualAdd, canonized, default_canonizers
from .composite import Composite, default_rules, register_rule
from .engine import INPUT, LRP, Attribution, initial_relevance
from .rules import Gating, Pass, Rule, ZBox, ZPlus, ZRule

__all__ = [
    "Add", "Attribution", "AttnLRPRules", "Canonizer", "Composite", "Gating", "INPUT", "LRP", "NoInplace", "Pass", "ResidualAdd", "Rule",
    "ZBox", "ZPlus", "ZRule", "canonized", "default_canonizers", "default_rules", "identity_rule", "initial_relevance",
    "layer_norm_rule", "register_rule", "uniform_rule",
]
