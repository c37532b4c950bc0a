"""Sentences about synthetic-scene entities: the appearance ("attribute") and surrounding
captions. The toy VLM is trained on them, and the rule-based describer writes them for the
referent it resolves, in the formats LGD's prompts ask the MLLM for."""

from __future__ import annotations

import numpy as np

from .synthetic import Entity, article


def neighbours(entities: list[Entity], index: int, k: int = 3) -> list[int]:
    """The ``k`` nearest objects/distractors to entity ``index`` (centre distance; no parts)."""
    c = entities[index].centre
    cand = [(float(np.hypot(*(e.centre - c))), j) for j, e in enumerate(entities)
            if j != index and e.kind != "part"]
    return [j for _, j in sorted(cand)[:k]]


def attribute_caption(e: Entity, parts: list[str] | None = None) -> str:
    """'A photo of a lantern with a blue square and a red disc' (``parts`` default: all)."""
    parts = e.parts if parts is None else parts
    text = f"A photo of {article(e.name)}"
    if parts:
        text += " with " + " and ".join(article(p) for p in parts)
    return text


def surrounding_caption(entities: list[Entity], index: int, names: list[int] | None = None, k: int = 2) -> str:
    """'A photo of a lantern surrounded by a grey ring and a kite' (``names``: entity indices)."""
    near = neighbours(entities, index, k) if names is None else names
    text = f"A photo of {article(entities[index].name)}"
    if near:
        text += " surrounded by " + " and ".join(article(entities[j].name) for j in near)
    return text


def random_captions(entities: list[Entity], index: int, rng: np.random.Generator) -> tuple[str, str]:
    """A randomised (attribute, surrounding) caption pair for training."""
    e = entities[index]
    parts = list(e.parts)
    if parts and rng.random() < 0.8:
        rng.shuffle(parts)
        parts = parts[:int(rng.integers(1, len(parts) + 1))]
    else:
        parts = []
    near = neighbours(entities, index, 3)
    take = near[:int(rng.integers(1, 3))] if near else []
    if len(near) > 2 and rng.random() < 0.3:
        take = [near[0], near[2]]
    return attribute_caption(e, parts), surrounding_caption(entities, index, take)
