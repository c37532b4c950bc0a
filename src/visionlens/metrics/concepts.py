"""Concept-explainer metrics (TraNCE / ICE; spec sections 6.3 and 7.7), all in percent, higher is better.

Inputs are the model outputs ``C(A)`` and ``C(A')`` (``(N, K)``) on images of class ``y`` only,
where ``A'`` is the reducer's reconstruction of the layer activations ``A``.

* **Fidelity** ``= 100 (1 - e_y)``, ``e_y = mean_x |C_y(A) - C_y(A')| / (|mean_x C_y(A)| + 1e-4)``
  (ICE's fidelity error; the percent mapping is inferred).
* **Coherence**: the paper's definition is unknown; three candidates (``COHERENCE_MODES``):
  ``pearson`` (default) ``100 r(C_y(A), C_y(A'))`` across images; ``stability`` ``100 (1 - std_x``
  of the relative error); ``agreement`` ``100 *`` share of images with ``argmax C(A') = argmax C(A)``.
* **Faith** ``= (Fidelity + Coherence) / 2`` (checked on the CoherentICE poster numbers).
"""

from __future__ import annotations

import torch

from ..errors import InputError

COHERENCE_MODES = ("pearson", "stability", "agreement")
DEFAULT_COHERENCE = "pearson"


def _check(original: torch.Tensor, reconstructed: torch.Tensor, cls: int) -> None:
    if original.shape != reconstructed.shape or original.dim() != 2 or len(original) == 0:
        raise InputError(f"expected two (N, K) output tensors of the same shape, got {tuple(original.shape)} "
                         f"and {tuple(reconstructed.shape)}")
    if not 0 <= cls < original.shape[1]:
        raise InputError(f"class {cls} is outside the model's {original.shape[1]} outputs")


def _relative_errors(original, reconstructed, cls):
    y, y_rec = original[:, cls].double(), reconstructed[:, cls].double()
    return (y - y_rec).abs() / (y.mean().abs() + 1e-4)


def fidelity(original: torch.Tensor, reconstructed: torch.Tensor, cls: int) -> float:
    _check(original, reconstructed, cls)
    return float(100.0 * (1.0 - _relative_errors(original, reconstructed, cls).mean()))


def coherence(original: torch.Tensor, reconstructed: torch.Tensor, cls: int, mode: str = DEFAULT_COHERENCE) -> float:
    _check(original, reconstructed, cls)
    if mode == "pearson":
        raw, raw_rec = original[:, cls].double(), reconstructed[:, cls].double()
        if len(raw) < 2:
            raise InputError("Pearson coherence needs at least 2 images of the class; use --coherence agreement")
        y, y_rec = raw - raw.mean(), raw_rec - raw_rec.mean()
        denom = (y.norm() * y_rec.norm()).item()
        if denom == 0:  # a constant output: coherent only if the reconstruction is exact (not merely constant too)
            return 100.0 if torch.equal(raw, raw_rec) else 0.0
        return float(100.0 * (y @ y_rec) / denom)
    if mode == "stability":
        errors = _relative_errors(original, reconstructed, cls)
        return float(100.0 * (1.0 - (errors.std(unbiased=False) if len(errors) > 1 else errors.new_zeros(()))))
    if mode == "agreement":
        return float(100.0 * (original.argmax(1) == reconstructed.argmax(1)).double().mean())
    raise InputError(f"unknown coherence '{mode}'; choose from: {', '.join(COHERENCE_MODES)}")


def faith(fidelity_percent: float, coherence_percent: float) -> float:
    return (float(fidelity_percent) + float(coherence_percent)) / 2.0


def concept_scores(original: torch.Tensor, reconstructed: torch.Tensor, cls: int,
                   mode: str = DEFAULT_COHERENCE) -> dict[str, float]:
    """``{"fidelity", "coherence", "faith"}`` for one class."""
    fid = fidelity(original, reconstructed, cls)
    coh = coherence(original, reconstructed, cls, mode)
    return {"fidelity": fid, "coherence": coh, "faith": faith(fid, coh)}


def average_scores(per_class: dict) -> dict[str, float]:
    """Mean of each score over classes (``per_class``: class -> scores dict)."""
    if not per_class:
        raise InputError("no classes to average")
    keys = next(iter(per_class.values())).keys()
    return {k: sum(s[k] for s in per_class.values()) / len(per_class) for k in keys}
