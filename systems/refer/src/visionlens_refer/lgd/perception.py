"""A describer that perceives from pixels: the toy VLM names the proposals, no scene graph.

:class:`RegionScoreDescriber` stands in for the MLLM on the synthetic benchmark without reading
the scene graph. For the image's proposals (the pipeline passes their region features):

1. every region is named by its best-scoring caption "A photo of a NAME" (local feature) over
   the synthetic vocabulary: the 10 object classes, the 8 part names and the 35 distractor
   names; the name's vocabulary gives the region's kind (object, part, distractor);
2. an object's parts are the part regions lying mostly inside it;
3. the expression's grammar (category, "the thing with a ...", spatial word, "the one next to
   the ...") is resolved on these perceived regions, by score, never by the ground truth;
4. the attribute / surrounding sentence is written about the perceived referent with the same
   caption formats as the oracle :class:`~.describers.SceneDescriber`.

Perception errors (a wrong name, a missed part, a fragment taken for an object) pass into the
descriptions, as an MLLM's would. It shares the encoder with the pipeline, so its mistakes are
not independent of the expression score's.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from visionlens.data.world import CLASS_NAMES, PART_NAMES, SHAPES
from visionlens.errors import InputError

from .captions import attribute_caption, surrounding_caption
from .prompts import KINDS, clean_description
from .synthetic import DISTRACTOR_COLOUR_NAMES, SPATIAL, Entity, article

INSIDE = 0.8  # share of a part region's pixels inside an object for it to count as that object's part


def vocabulary() -> list[tuple[str, str]]:
    """``(kind, name)`` for every name a region can get."""
    distractors = [f"{c} {s}" for c in DISTRACTOR_COLOUR_NAMES for s in SHAPES]
    return ([("object", n) for n in CLASS_NAMES] + [("part", n) for n in PART_NAMES]
            + [("distractor", n) for n in distractors])


class RegionScoreDescriber:
    """``RegionScoreDescriber(encoder)`` with a toy-VLM-style ``encoder`` (``encode_text``);
    ``describe(image, expression, kind, regions=...)`` needs the proposals' features."""

    needs_regions = True

    def __init__(self, encoder):
        self.encoder = encoder
        self.vocab = vocabulary()
        self.name_features = encoder.encode_text([f"A photo of {article(n)}" for _, n in self.vocab])
        self.name = f"region-scores({getattr(encoder, 'name', type(encoder).__name__)})"

    def describe(self, image, expression: str, kind: str, image_id: str = "", scene=None, regions=None) -> str:
        if kind not in KINDS:
            raise InputError(f"unknown description kind {kind!r}; choose from {', '.join(KINDS)}")
        if regions is None:
            raise InputError("the region-score describer needs the proposals' features (run it through LGD)")
        entities, scores = self.perceive(regions)
        ref = resolve_perceived(expression, entities, scores, self.vocab)
        if ref is None:
            return ""
        text = attribute_caption(entities[ref]) if kind == "attribute" else surrounding_caption(entities, ref)
        return clean_description(text)

    def perceive(self, regions) -> tuple[list[Entity], torch.Tensor]:
        """The regions as named :class:`Entity` objects, and every region's name scores (N, V)."""
        scores = regions.f_local.float() @ self.name_features.T
        best = scores.argmax(1).tolist()
        masks = regions.masks.bool().numpy()
        entities = [Entity(self.vocab[b][0], self.vocab[b][1], masks[i]) for i, b in enumerate(best)]
        for obj in (e for e in entities if e.kind == "object"):
            area = obj.mask.sum()
            obj.parts = sorted({p.name for p in entities if p.kind == "part" and p.mask.sum() < area
                                and (p.mask & obj.mask).sum() >= INSIDE * p.mask.sum()})
        return entities, scores


def resolve_perceived(expression: str, entities: list[Entity], scores: torch.Tensor, vocab) -> int | None:
    """The perceived object the expression refers to (best score where the grammar names a
    thing), or None when the expression is not in the grammar or no object was perceived."""
    text = expression.lower().strip().rstrip(".")
    objs = [i for i, e in enumerate(entities) if e.kind == "object"]
    if not objs:
        return None
    column = {name: j for j, (_, name) in enumerate(vocab)}
    if m := re.fullmatch(r"the one next to the (.+)", text):
        if m.group(1) not in column:
            return None
        others = [i for i in range(len(entities)) if i not in objs] or list(range(len(entities)))
        anchor = max(others, key=lambda i: float(scores[i, column[m.group(1)]]))
        return min((i for i in objs if i != anchor), default=None,
                   key=lambda i: float(np.hypot(*(entities[i].centre - entities[anchor].centre))))
    if m := re.fullmatch(r"the (\w+) one", text):
        if m.group(1) not in SPATIAL:
            return None
        axis, sign = SPATIAL[m.group(1)]
        return min(objs, key=lambda i: sign * entities[i].centre[axis])
    if m := re.fullmatch(r"the thing with an? (.+)", text):
        part = m.group(1)
        having = [i for i in objs if part in entities[i].parts]
        if len(having) == 1 or part not in column:
            return having[0] if having else None
        pool = having or objs
        return max(pool, key=lambda i: _best_part_score(i, entities, scores, column[part]))
    if m := re.fullmatch(r"the (.+)", text):
        if m.group(1) not in column:
            return None
        return max(objs, key=lambda i: float(scores[i, column[m.group(1)]]))
    return None


def _best_part_score(obj: int, entities: list[Entity], scores: torch.Tensor, col: int) -> float:
    """The best score for one part name among the regions inside object ``obj`` (itself included)."""
    inside = [j for j, e in enumerate(entities)
              if j == obj or (e.mask & entities[obj].mask).sum() >= INSIDE * max(1, e.mask.sum())]
    return max(float(scores[j, col]) for j in inside)

