"""SFAM, Similar Feature Activation Map (Liao et al., arXiv:2506.01636), for embedding models,
(the Grad-CAM and Relevance-CAM baselines on the same similarity targets, and the result
types, are in :mod:`visionlens.methods.similarity`).

For a query embedding ``e`` and reference(s) ``r`` (spec §3.2):

1. contributions ``c_d``: cosine ``ê_d r̂_d``; Euclidean ``−(e_d − r_d)²`` (default) or
   ``e_d r_d`` (``euclid_mode="cross_term"``); averaged over several references;
2. CIS ``CIS_d = c_d / |Σ_d c_d|`` (``Σ_d CIS_d = sign(s)``);
3. ``w = minmax(CIS)`` (or ``relu``, ``none``);
4. channel coefficients ``α_k = Σ_ij ∂(w · e)/∂A^k_ij``, a vector-Jacobian product from the
   embedding ``e`` the metric uses (after the model's projection head and L2 normalisation) to the
   layer: ``α = w`` for a GAP head, ``α = Jᵀw`` (``J = ∂e/∂GAP(A)``) for a projection head
   (``through_norm=False`` starts from the embedding before an Embedder's L2 normalisation);
5. ``M = ReLU(Σ_k α_k A^k)``, bilinear resize, min-max.

The weights are symmetric in query and reference, so :meth:`SFAM.pair` gives both images' maps
from one set of weights.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.hooks import ActivationCapture, autograd_ready, preserved_model_state, warn_if_reused
from ..core.layers import check_spatial, model_device
from ..core.result import normalize_maps
from ..core.similarity import (
    EUCLID_MODES,
    NORMALIZATIONS,
    as_references,
    check_embeddings,
    contribution_scores,
    contributions,
    normalize_scores,
    similarity,
)
from ..errors import InputError
from ..models.embedder import Embedder
from .base import check_input, warn_if_flat
from .similarity import (  # the result types and baselines stay importable from here
    PairExplanation, SimilarityExplanation, SimilarityGradCAM, SimilarityMethod, SimilarityRelevanceCAM,
)

__all__ = ["SFAM", "PairExplanation", "SimilarityExplanation", "SimilarityGradCAM", "SimilarityMethod",
           "SimilarityRelevanceCAM"]


class SFAM(SimilarityMethod):
    """Similar Feature Activation Map: channel weights from the per-dimension contributions to the
    similarity (CIS), routed to the layer by a vector-Jacobian product, then ``Σ_k α_k A^k``.

    ``normalize``: ``minmax`` (default), ``relu`` or ``none`` for the CIS; ``euclid_mode``:
    ``difference`` (default, ``c_d = −(e_d − r_d)²``) or ``cross_term`` (``c_d = e_d r_d``);
    ``through_norm``: back-propagate ``w`` from the normalised embedding (default) or, for an
    :class:`~visionlens.models.Embedder` with ``normalize=True``, from the one before it.
    """

    name = "sfam"

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None, metric: str = "cosine",
                 normalize: str = "minmax", euclid_mode: str = "difference", through_norm: bool = True):
        super().__init__(model, layer, metric)
        self.through_norm = through_norm
        if normalize not in NORMALIZATIONS:
            raise InputError(f"unknown CIS normalisation {normalize!r}; choose from: {', '.join(NORMALIZATIONS)}")
        if euclid_mode not in EUCLID_MODES:
            raise InputError(f"unknown euclid_mode {euclid_mode!r}; choose from: {', '.join(EUCLID_MODES)}")
        self.normalize, self.euclid_mode = normalize, euclid_mode

    def weights(self, e: torch.Tensor, refs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(CIS, w)`` for embeddings ``e`` ``(B, D)`` and references ``(B, M, D)``."""
        cis = contribution_scores(contributions(e, refs, self.metric, self.euclid_mode))
        return cis, normalize_scores(cis, self.normalize)

    def explain(self, x: torch.Tensor, refs: torch.Tensor) -> SimilarityExplanation:
        check_input(x)
        x = autograd_ready(x.to(model_device(self.model)))
        with preserved_model_state(self.model):
            name, module = self.resolve(x)
            with ActivationCapture({name: module}, grad=True) as capture, torch.no_grad():
                if self.through_norm:  # e itself is back-propagated (through any L2 normalisation)
                    z = self.model(x)
                    e = self._finish(z) if not isinstance(self.model, Embedder) else z
                else:
                    z = self._forward(x)
                    e = self._finish(z)
                e = e.detach()
                check_embeddings(e, "embeddings")
                refs = as_references(refs.to(e.device, e.dtype), x.shape[0], e.shape[1])
                activation = capture.get(name)
                warn_if_reused(name, capture.calls.get(name, 1))
                check_spatial(name, activation)
                scores = similarity(e, refs, self.metric)
                cis, w = self.weights(e, refs)
                if not z.requires_grad:
                    raise InputError(f"the embedding does not depend on layer '{name}'; choose a layer before the embedding")
                (grad,) = torch.autograd.grad(z, activation, grad_outputs=w.to(z.dtype), allow_unused=True)
                if grad is None:
                    raise InputError(f"the embedding does not depend on layer '{name}'; choose a layer before the embedding")
                alpha = grad.sum(dim=(2, 3))
            activation = activation.detach()
            raw = torch.einsum("bk,bkhw->bhw", alpha.detach().to(activation.dtype), activation)
        maps = normalize_maps(raw, x.shape[-2:], relu=True)
        result = SimilarityExplanation(
            maps=maps, raw=raw, targets=None, scores=scores, logits=e, method=self.name, layer=name,
            references=refs.detach(), metric=self.metric, cis=cis, weights=w, coefficients=alpha.detach(),
        )
        warn_if_flat({self.name: result}, self.model, x, advice=_flat_similarity_advice)
        return result


def _flat_similarity_advice(negative: bool) -> str:
    """Why an SFAM map is flat, and what to try."""
    if negative:
        return ("the map is negative everywhere (at this layer the image's features only lower the similarity); "
                "try another layer or the other metric")
    return ("the similarity does not vary over this layer's positions (e.g. a uniform image, or an embedding that "
            "does not depend on this layer); try another layer")
