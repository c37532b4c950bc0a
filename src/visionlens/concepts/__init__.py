"""Concept explanations (TraNCE, with ICE's NMF as the baseline): discover what a class's
activations at one layer are made of, score the explainer (Fidelity, Coherence, Faith) and render
concept sheets. Entry points: :func:`discover_class`, :func:`run_concepts`, ``visionlens concepts``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["ClassConcepts", "best_part_iou", "concept_weights", "discover_class", "explain_image"], "discovery"),
    **dict.fromkeys(["load_reducer", "make_reducer"], "factory"),
    **dict.fromkeys(["IdentityReducer", "NMFReducer", "Reducer"], "reducers"),
    "run_concepts": "run",
    "VAEReducer": "vae",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .discovery import ClassConcepts, best_part_iou, concept_weights, discover_class, explain_image
    from .factory import load_reducer, make_reducer
    from .reducers import IdentityReducer, NMFReducer, Reducer
    from .run import run_concepts
    from .vae import VAEReducer

__all__ = ["ClassConcepts", "IdentityReducer", "NMFReducer", "Reducer", "VAEReducer", "best_part_iou",
           "concept_weights", "discover_class", "explain_image", "load_reducer", "make_reducer", "run_concepts"]
