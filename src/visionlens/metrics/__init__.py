"""Evaluation metrics, one module per family; ``METRICS`` maps names to their metadata.

Every metric declares its direction (``higher_is_better``), its ``category`` (faithfulness,
localisation, randomisation) and what it ``applies_to`` / ``needs`` (a classifier or an
embedding model through a :class:`~.faithfulness.Confidence`; ground-truth masks or boxes), so a
report can be built from the registry (as Quantus does).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from .faithfulness import (Confidence, KNNConfidence, PrototypeConfidence, SimilarityConfidence, causal_curves,
                           curve_ends, deletion, drop_increase, gaussian_blur, insertion, pixel_ranks, trapezoid_auc)
from .localisation import (box_iou, box_of, boxes_to_mask, energy_pointing_game, largest_component,
                           localisation_error, per_class_mean, pointing_game, relevance_mass, relevance_rank)
from .sanity import model_randomisation, parameter_layers, passes, randomisation_score, spearman


@dataclass(frozen=True)
class MetricInfo:
    name: str
    higher_is_better: bool
    category: str
    applies_to: tuple[str, ...]   # model kinds: "classifier", "embedding"
    needs: tuple[str, ...]        # ground truth: "masks", "boxes"; or "model" only
    unit: str
    description: str

    @property
    def direction(self) -> str:
        return "higher" if self.higher_is_better else "lower"


_ANY = ("classifier", "embedding")
METRICS: dict[str, MetricInfo] = {m.name: m for m in [
    MetricInfo("deletion", False, "faithfulness", _ANY, ("model",), "AUC",
               "RISE deletion AUC: confidence as the most salient pixels are replaced by the mean colour"),
    MetricInfo("insertion", True, "faithfulness", _ANY, ("model",), "AUC",
               "RISE insertion AUC: confidence as the most salient pixels are restored on a blurred image"),
    MetricInfo("average-drop", False, "faithfulness", _ANY, ("model",), "%",
               "Average Drop: 100 * mean max(0, Y_c - O_c) / Y_c on the softmax probability, O on x_raw * map"),
    MetricInfo("increase-confidence", True, "faithfulness", _ANY, ("model",), "%",
               "Increase in Confidence: 100 * mean 1[O_c > Y_c]"),
    MetricInfo("pointing-game", True, "localisation", _ANY, ("masks",), "fraction",
               "the map's maximum within 15 px of the object mask (per-image mean)"),
    MetricInfo("pointing-game-classes", True, "localisation", _ANY, ("masks",), "fraction",
               "pointing game accuracy per class, then averaged over classes (the original protocol; CI over classes)"),
    MetricInfo("energy-pointing-game", True, "localisation", _ANY, ("boxes",), "fraction",
               "share of the min-max normalised map inside the object box (Score-CAM)"),
    MetricInfo("relevance-mass", True, "localisation", _ANY, ("masks",), "fraction",
               "share of the map inside the object mask"),
    MetricInfo("relevance-rank", True, "localisation", _ANY, ("masks",), "fraction",
               "share of the |mask| top-ranked pixels inside the mask"),
    MetricInfo("loc-error", False, "localisation", ("classifier",), ("boxes",), "fraction",
               "GT-known localisation error: IoU < 0.5 between the object box and the box of the largest "
               "component of the map thresholded at 20 % of its max"),
    MetricInfo("randomisation", False, "randomisation", _ANY, ("model",), "Spearman",
               "rank correlation with the original map after cascading randomisation of every layer"),
]}


def get_metric(name: str) -> MetricInfo:
    if name not in METRICS:
        raise InputError(f"unknown metric '{name}'; choose from: {', '.join(METRICS)}")
    return METRICS[name]


__all__ = ["METRICS", "MetricInfo", "get_metric", "Confidence", "KNNConfidence", "PrototypeConfidence",
           "SimilarityConfidence", "causal_curves", "curve_ends", "deletion", "insertion", "drop_increase", "gaussian_blur",
           "pixel_ranks", "trapezoid_auc", "box_iou", "box_of", "boxes_to_mask", "energy_pointing_game",
           "largest_component", "localisation_error", "per_class_mean", "pointing_game", "relevance_mass",
           "relevance_rank", "model_randomisation", "parameter_layers", "passes", "randomisation_score", "spearman"]
