"""Concept explanations (TraNCE, with ICE's NMF as the baseline): discover what a class's
activations at one layer are made of, score the explainer (Fidelity, Coherence, Faith) and render
concept sheets. Entry points: :func:`discover_class`, :func:`run_concepts`, ``visionlens concepts``."""

from .discovery import ClassConcepts, best_part_iou, concept_weights, discover_class, explain_image
from .factory import load_reducer, make_reducer
from .reducers import IdentityReducer, NMFReducer, Reducer
from .run import run_concepts
from .vae import VAEReducer

__all__ = ["ClassConcepts", "IdentityReducer", "NMFReducer", "Reducer", "VAEReducer", "best_part_iou",
           "concept_weights", "discover_class", "explain_image", "load_reducer", "make_reducer", "run_concepts"]
