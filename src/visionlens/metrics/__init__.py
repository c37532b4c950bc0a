"""Evaluation metrics, one module per family; ``METRICS`` maps names to their metadata and their
``compute`` function.

Every metric declares its direction (``higher_is_better``), its ``category`` (faithfulness,
localisation, randomisation) and what it ``applies_to`` / ``needs`` (a classifier or an
embedding model through a :class:`~.faithfulness.Confidence`; ground-truth masks or boxes), so a
report can be built from the registry (as Quantus does). Its ``compute(context) -> (B,) tensor``
gives one value per image from a :class:`~.context.MetricContext`, so that ``visionlens evaluate``
computes every metric by one loop over the registry: a new metric is one entry of ``METRICS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import InputError
from .context import MetricContext
from .faithfulness import (Confidence, KNNConfidence, PrototypeConfidence, SimilarityConfidence, causal_curves,
                           curve_ends, deletion, drop_increase, gaussian_blur, insertion, pixel_ranks, rise_kernel,
                           trapezoid_auc)
from .localisation import (box_iou, box_of, boxes_to_mask, energy_pointing_game, largest_component,
                           localisation_error, per_class_mean, pointing_game, relevance_mass, relevance_rank)
from .sanity import model_randomisation, parameter_layers, passes, randomisation_score, spearman

Compute = Callable[[MetricContext], torch.Tensor]


@dataclass(frozen=True)
class MetricInfo:
    """A metric of the registry. ``compute(context)`` returns its (B,) per-image values (None for a
    metric summarised from another one's values: ``per_class_of`` names that per-image metric,
    averaged per class first, then over classes). ``default``: computed when no metrics are named."""

    name: str
    higher_is_better: bool
    category: str
    applies_to: tuple[str, ...]   # model kinds: "classifier", "embedding"
    needs: tuple[str, ...]        # ground truth: "masks", "boxes"; or "model" only
    unit: str
    description: str
    compute: Compute | None = field(default=None, compare=False, repr=False)
    per_class_of: str | None = None
    default: bool = True

    @property
    def direction(self) -> str:
        return "higher" if self.higher_is_better else "lower"

    @property
    def recorded_as(self) -> str:
        """The name of the per-image values this metric is reported from."""
        return self.per_class_of or self.name


# --- compute functions: (context) -> (B,) values ----------------------------------------------
# (module globals looked up at call time, so that a patched metric function is the one used)

def _ends(c: MetricContext, mode: str):
    """The map-independent first and last points of the softmax deletion/insertion curves, scored
    once per target and batch (other confidences may carry per-method state: not shared)."""
    if c.ends_cache is None or not (c.confidence is None or type(c.confidence) is Confidence):
        return None
    key = (mode, tuple(c.target.tolist()))
    if key not in c.ends_cache:
        c.ends_cache[key] = curve_ends(c.scorer, c.x, c.target, mode, **c.scoring)
    return c.ends_cache[key]


def _causal_auc(c: MetricContext, mode: str) -> torch.Tensor:
    """Deletion or insertion AUC per image; the curves are kept in ``c.shared["curves"][mode]``
    (``(B, n + 1)``) for the report card's mean curves."""
    curves = causal_curves(c.scorer, c.x, c.maps, mode, c.target, step=c.step, ends=_ends(c, mode), **c.scoring)[0]
    c.shared.setdefault("curves", {})[mode] = curves.detach().cpu()
    return trapezoid_auc(curves)


def _deletion(c: MetricContext) -> torch.Tensor:
    return _causal_auc(c, "deletion")


def _insertion(c: MetricContext) -> torch.Tensor:
    return _causal_auc(c, "insertion")


def _drop_increase(c: MetricContext) -> tuple[torch.Tensor, torch.Tensor]:
    return c.once("drop-increase", lambda: drop_increase(c.scorer, c.x, c.maps, c.mean, c.std, c.target, **c.scoring))


def _loc_error(c: MetricContext) -> torch.Tensor:
    correct = (c.target.cpu() == c.labels) if c.correct is None else c.correct.cpu()
    return localisation_error(c.maps, c.boxes, correct)[0]


def _randomisation(c: MetricContext) -> torch.Tensor:
    return randomisation_score(model_randomisation(c.module, c.explain_fn, c.x, c.target, seed=c.seed))


_ANY = ("classifier", "embedding")
METRICS: dict[str, MetricInfo] = {m.name: m for m in [
    MetricInfo("deletion", False, "faithfulness", _ANY, ("model",), "AUC",
               "RISE deletion AUC: confidence as the most salient pixels are replaced by the mean colour",
               _deletion),
    MetricInfo("insertion", True, "faithfulness", _ANY, ("model",), "AUC",
               "RISE insertion AUC: confidence as the most salient pixels are restored on a blurred image",
               _insertion),
    MetricInfo("average-drop", False, "faithfulness", _ANY, ("model",), "%",
               "Average Drop: 100 * mean max(0, Y_c - O_c) / Y_c on the softmax probability, O on x_raw * map",
               lambda c: 100 * _drop_increase(c)[0]),
    MetricInfo("increase-confidence", True, "faithfulness", _ANY, ("model",), "%",
               "Increase in Confidence: 100 * mean 1[O_c > Y_c]",
               lambda c: 100 * _drop_increase(c)[1]),
    MetricInfo("pointing-game", True, "localisation", _ANY, ("masks",), "fraction",
               "the map's maximum within 15 px of the object mask (per-image mean)",
               lambda c: pointing_game(c.maps, c.masks)),
    MetricInfo("pointing-game-classes", True, "localisation", _ANY, ("masks",), "fraction",
               "pointing game accuracy per class, then averaged over classes (the original protocol; CI over classes)",
               per_class_of="pointing-game"),
    MetricInfo("energy-pointing-game", True, "localisation", _ANY, ("boxes",), "fraction",
               "share of the min-max normalised map inside the object box (Score-CAM)",
               lambda c: energy_pointing_game(c.maps, c.boxes)),
    MetricInfo("relevance-mass", True, "localisation", _ANY, ("masks",), "fraction",
               "share of the map inside the object mask",
               lambda c: relevance_mass(c.maps, c.masks)),
    MetricInfo("relevance-rank", True, "localisation", _ANY, ("masks",), "fraction",
               "share of the |mask| top-ranked pixels inside the mask",
               lambda c: relevance_rank(c.maps, c.masks)),
    MetricInfo("loc-error", False, "localisation", ("classifier",), ("boxes",), "fraction",
               "top-1 localisation error: a wrong prediction, or IoU < 0.5 between the object box and the box "
               "of the largest component of the map thresholded at 20 % of its max",
               _loc_error),
    MetricInfo("randomisation", False, "randomisation", _ANY, ("model",), "Spearman",
               "rank correlation with the original map after cascading randomisation of every layer",
               _randomisation, default=False),  # opt-in: one map per layer
]}


def get_metric(name: str) -> MetricInfo:
    if name not in METRICS:
        raise InputError(f"unknown metric '{name}'; choose from: {', '.join(METRICS)}")
    return METRICS[name]


def default_metrics() -> list[str]:
    """The metrics computed when none are named: every registered one not marked opt-in."""
    return [name for name, info in METRICS.items() if info.default]


__all__ = ["METRICS", "MetricInfo", "MetricContext", "Compute", "get_metric", "default_metrics", "Confidence",
           "KNNConfidence", "PrototypeConfidence", "SimilarityConfidence", "causal_curves", "curve_ends", "deletion",
           "insertion", "drop_increase", "gaussian_blur", "pixel_ranks", "rise_kernel", "trapezoid_auc", "box_iou", "box_of",
           "boxes_to_mask", "energy_pointing_game", "largest_component", "localisation_error", "per_class_mean",
           "pointing_game", "relevance_mass", "relevance_rank", "model_randomisation", "parameter_layers", "passes",
           "randomisation_score", "spearman"]
