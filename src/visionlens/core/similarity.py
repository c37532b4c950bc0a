"""Similarity targets for embedding models: what a query is compared with, and how.

A metric model has no classes; what is explained is a similarity ``s(e, r)`` between the query's
embedding ``e`` (taken after the model's own projection head and normalisation) and a reference:
one reference image's embedding, a given embedding, a class prototype (mean of support
embeddings) or the top-k neighbours in a gallery. Two metrics:

* ``cosine``:    ``s = ê · r̂`` with ``ê = e/‖e‖``;
* ``euclidean``: ``s = −‖e − r‖²`` (ProtoNet's logit; larger is more similar).

With ``M`` references per query the score is the mean of the ``M`` similarities. A
:class:`SimilarityTarget` is also a callable target (``output -> (B,) scores``), so Grad-CAM and
the LRP engine accept it as they accept any score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError
from .hooks import autograd_ready

METRICS = ("cosine", "euclidean")
EUCLID_MODES = ("difference", "cross_term")


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; choose from: {', '.join(METRICS)}")
    return metric


def check_embeddings(e: torch.Tensor, what: str = "embeddings") -> torch.Tensor:
    """Raise an :class:`InputError` unless ``e`` is a finite, non-empty float tensor."""
    if not torch.is_tensor(e):
        raise InputError(f"{what} must be a torch.Tensor, got {type(e).__name__}")
    if e.numel() == 0:
        raise InputError(f"{what} are empty")
    if not e.dtype.is_floating_point:
        raise InputError(f"{what} must be float, got {e.dtype}")
    if not bool(torch.isfinite(e).all()):
        raise InputError(f"{what} contain NaN or infinite values; check the model and its input")
    return e


def as_references(references: torch.Tensor, batch_size: int, dim: int) -> torch.Tensor:
    """Bring reference embeddings to ``(B, M, D)``: ``(D,)`` is one reference for every query,
    ``(B, D)`` one per query, ``(B, M, D)`` (or ``(1, M, D)``) ``M`` per query."""
    check_embeddings(references, "reference embeddings")
    r = autograd_ready(references)
    if r.dim() == 1:
        r = r[None, None]
    elif r.dim() == 2:
        if r.shape[0] not in (1, batch_size):
            raise InputError(
                f"got {r.shape[0]} reference embeddings for {batch_size} queries; give one per query, one for all, "
                "or a (B, M, D) tensor of M references per query"
            )
        r = r[:, None]
    elif r.dim() != 3:
        raise InputError(f"reference embeddings must be (D,), (B, D) or (B, M, D), got {tuple(r.shape)}")
    if r.shape[0] not in (1, batch_size):
        raise InputError(f"got references for {r.shape[0]} queries, but the batch has {batch_size}")
    if r.shape[-1] != dim:
        raise InputError(
            f"reference embeddings have {r.shape[-1]} dimensions but the model's embedding has {dim}; "
            "embed the references with the same model (and layer)"
        )
    return r.expand(batch_size, -1, -1)


def similarity(e: torch.Tensor, r: torch.Tensor, metric: str = "cosine") -> torch.Tensor:
    """``s(e, r)`` for ``e`` ``(B, D)`` and ``r`` ``(B, M, D)``: the mean over the ``M`` references, ``(B,)``."""
    check_metric(metric)
    if metric == "cosine":
        return torch.einsum("bd,bmd->bm", F.normalize(e, dim=-1), F.normalize(r, dim=-1)).mean(1)
    return -(e[:, None, :] - r).pow(2).sum(-1).mean(1)


def contributions(e: torch.Tensor, r: torch.Tensor, metric: str = "cosine", euclid_mode: str = "difference") -> torch.Tensor:
    """Per-dimension contributions ``c_d`` ``(B, D)``, averaged over the ``M`` references.

    * cosine: ``c_d = ê_d r̂_d`` (so ``Σ_d c_d = s``);
    * euclidean, ``difference`` (default): ``c_d = −(e_d − r_d)²`` (so ``Σ_d c_d = s``);
    * euclidean, ``cross_term``: ``c_d = e_d r_d``, the only pair-dependent part of
      ``−‖e − r‖² = 2 e·r − ‖e‖² − ‖r‖²``; on unit-norm embeddings it equals the cosine ``c_d``.
    """
    check_metric(metric)
    if euclid_mode not in EUCLID_MODES:
        raise InputError(f"unknown euclid_mode {euclid_mode!r}; choose from: {', '.join(EUCLID_MODES)}")
    if metric == "cosine":
        c = F.normalize(e, dim=-1)[:, None, :] * F.normalize(r, dim=-1)
    elif euclid_mode == "difference":
        c = -(e[:, None, :] - r).pow(2)
    else:
        c = e[:, None, :] * r
    return c.mean(1)


def contribution_scores(c: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """CIS: ``CIS_d = c_d / |Σ_d c_d|``, the signed share of the total (``Σ_d CIS_d = sign(Σ c)``).
    A zero total leaves ``c`` unscaled."""
    total = c.sum(dim=1, keepdim=True).abs()
    return c / torch.where(total > eps, total, torch.ones_like(total))


NORMALIZATIONS = ("minmax", "relu", "none")


def normalize_scores(cis: torch.Tensor, mode: str = "minmax") -> torch.Tensor:
    """``minmax`` (default): ``(CIS − min)/(max − min)`` per sample, all ones if constant;
    ``relu``: ``max(CIS, 0)``; ``none``: unchanged."""
    if mode == "minmax":
        low = cis.min(dim=1, keepdim=True).values
        span = cis.max(dim=1, keepdim=True).values - low
        return torch.where(span > 0, (cis - low) / torch.where(span > 0, span, torch.ones_like(span)), torch.ones_like(cis))
    if mode == "relu":
        return cis.clamp_min(0)
    if mode == "none":
        return cis
    raise InputError(f"unknown CIS normalisation {mode!r}; choose from: {', '.join(NORMALIZATIONS)}")


@dataclass
class SimilarityTarget:
    """A reference to compare with: ``references`` are embeddings ``(D,)``, ``(B, D)`` or
    ``(B, M, D)`` from the same model (after its normalisation), with ``metric``.

    Build one with :meth:`embedding`, :meth:`prototype` or :meth:`neighbours`; a reference *image*
    is embedded by the method that uses it (``SFAM(...)(x, reference_images)``). Called on a model
    output it returns the ``(B,)`` similarity scores, so it is a callable target for Grad-CAM
    (``normalize=True`` L2-normalises the output first; ``hold_norm=True`` treats that norm as a
    constant in the gradient).
    """

    references: torch.Tensor
    metric: str = "cosine"
    normalize: bool = False
    hold_norm: bool = False

    def __post_init__(self):
        check_metric(self.metric)
        check_embeddings(self.references, "reference embeddings")
        if self.references.dim() not in (1, 2, 3):
            raise InputError(f"reference embeddings must be (D,), (B, D) or (B, M, D), got {tuple(self.references.shape)}")

    @classmethod
    def embedding(cls, reference: torch.Tensor, metric: str = "cosine") -> "SimilarityTarget":
        """Compare with given embedding(s)."""
        return cls(reference.detach(), metric)

    @classmethod
    def prototype(cls, support: torch.Tensor, metric: str = "cosine") -> "SimilarityTarget":
        """Compare with a class prototype: the mean of the support embeddings ``(N, D)`` (for the
        cosine, of the unit-normalised ones)."""
        check_embeddings(support, "support embeddings")
        if support.dim() != 2:
            raise InputError(f"support embeddings must be (N, D), got {tuple(support.shape)}")
        s = F.normalize(support, dim=1) if metric == "cosine" else support
        return cls(s.mean(0).detach(), metric)

    @classmethod
    def neighbours(cls, query: torch.Tensor, gallery: torch.Tensor, k: int = 1, metric: str = "cosine",
                   exclude_self: bool = False) -> "SimilarityTarget":
        """Compare each query ``(B, D)`` with its top-``k`` neighbours in ``gallery`` ``(N, D)``."""
        order, _ = rank(query, gallery, metric, k=k, exclude_self=exclude_self)
        return cls(gallery[order].detach(), metric)

    def resolve(self, e: torch.Tensor) -> torch.Tensor:
        """The references as ``(B, M, D)`` for query embeddings ``e`` ``(B, D)``."""
        return as_references(self.references.to(e.device, e.dtype), e.shape[0], e.shape[1])

    def embed(self, output: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(output) or output.dim() != 2:
            shape = tuple(output.shape) if torch.is_tensor(output) else type(output).__name__
            raise InputError(f"a similarity target needs a model output of shape (B, D) (an embedding), got {shape}")
        if not self.normalize:
            return output
        norm = output.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return output / (norm.detach() if self.hold_norm else norm)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        e = self.embed(output)
        return similarity(e, self.resolve(e), self.metric)


def rank(query: torch.Tensor, gallery: torch.Tensor, metric: str = "cosine", k: int | None = None,
         exclude_self: bool = False, exclude: list[int | None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank ``gallery`` ``(N, D)`` for each query ``(B, D)``: returns ``(indices, scores)``, both
    ``(B, k)``, most similar first (ties by gallery order). ``exclude_self`` drops gallery item
    ``i`` for query ``i`` (query = gallery); ``exclude[i]`` (an index or ``None``) drops one
    gallery item for query ``i`` (the query's own file in the gallery)."""
    check_embeddings(query, "query embeddings")
    check_embeddings(gallery, "gallery embeddings")
    if query.dim() == 1:
        query = query[None]
    if gallery.dim() != 2 or gallery.shape[0] == 0:
        raise InputError(f"gallery embeddings must be a non-empty (N, D) tensor, got {tuple(gallery.shape)}")
    if query.shape[-1] != gallery.shape[-1]:
        raise InputError(f"query embeddings have {query.shape[-1]} dimensions, gallery {gallery.shape[-1]}; use one model for both")
    gallery = gallery.to(query.device, query.dtype)
    if metric == "cosine":
        scores = F.normalize(query, dim=1) @ F.normalize(gallery, dim=1).t()
    else:
        check_metric(metric)
        scores = -torch.cdist(query, gallery).pow(2)
    if exclude_self:
        scores = scores.clone()
        n = min(scores.shape)
        scores[torch.arange(n), torch.arange(n)] = -float("inf")
    if exclude is not None:
        scores = scores.clone()
        for i, j in enumerate(exclude):
            if j is not None:
                scores[i, j] = -float("inf")
    k = scores.shape[1] if k is None else k
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    k = min(k, scores.shape[1])
    sorted_scores, order = scores.sort(dim=1, descending=True, stable=True)
    return order[:, :k], sorted_scores[:, :k]
