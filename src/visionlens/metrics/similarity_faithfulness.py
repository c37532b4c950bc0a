"""Faithfulness of a similarity explanation: deletion / insertion of the query's pixels, scored by
the similarity of the perturbed query's embedding to its reference's embedding.

The embedder and the fixed reference embeddings become one scorer, :class:`ReferenceSimilarity`
(``x -> (B, M)`` similarities to the ``M`` references), read by :class:`SimilarityScore` (the raw
score of each image against its own reference, no softmax), so the RISE protocol of
:mod:`visionlens.metrics.faithfulness` runs unchanged: deletion replaces the most salient pixels
first by the substrate (zeros, the dataset mean), insertion puts them back into the blurred query.
"""

from __future__ import annotations

import torch
from torch import nn

from ..core.hooks import preserved_model_state
from ..core.similarity import check_embeddings, check_metric, similarity
from ..errors import InputError
from . import faithfulness


class ReferenceSimilarity(nn.Module):
    """``x -> s(e(x), r_m)`` ``(B, M)``: the similarity of each image's embedding (the model's
    output, after its own normalisation) to each of ``M`` fixed reference embeddings ``(M, D)``
    (``(D,)`` is one reference)."""

    def __init__(self, embedder: nn.Module, references: torch.Tensor, metric: str = "cosine"):
        super().__init__()
        self.embedder, self.metric = embedder, check_metric(metric)
        refs = check_embeddings(references, "reference embeddings").detach()
        if refs.dim() == 1:
            refs = refs[None]
        if refs.dim() != 2:
            raise InputError(f"reference embeddings must be (D,) or (M, D), got {tuple(refs.shape)}")
        self.register_buffer("references", refs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embedder(x)
        if not torch.is_tensor(e) or e.dim() != 2 or e.shape[1] != self.references.shape[1]:
            shape = tuple(e.shape) if torch.is_tensor(e) else type(e).__name__
            raise InputError(f"the embedder must return (B, {self.references.shape[1]}) embeddings like its "
                             f"references, got {shape}")
        b, m = e.shape[0], self.references.shape[0]
        pairs = e.repeat_interleave(m, 0), self.references.to(e).repeat(b, 1)[:, None]
        return similarity(*pairs, self.metric).view(b, m)


class SimilarityScore(faithfulness.Confidence):
    """The raw score ``out[i, target[i]]`` (no softmax): the similarity to the image's own
    reference. ``predict`` pairs image ``i`` with reference ``i``."""

    def __call__(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return out.float().gather(1, target[:, None].to(out.device))[:, 0]

    def predict(self, out: torch.Tensor) -> torch.Tensor:
        if out.shape[0] > out.shape[1]:
            raise InputError(f"{out.shape[0]} images but {out.shape[1]} references; give one reference per image")
        return torch.arange(out.shape[0], device=out.device)


def _scorer(embedder: nn.Module, x: torch.Tensor, references: torch.Tensor, metric: str) -> ReferenceSimilarity:
    refs = references if references.dim() == 2 else references.reshape(1, -1)
    if refs.shape[0] not in (1, x.shape[0]):
        raise InputError(f"got {refs.shape[0]} reference embeddings for {x.shape[0]} queries; give one per query or one for all")
    device = next(iter(embedder.parameters()), torch.empty(0)).device
    return ReferenceSimilarity(embedder, refs.expand(x.shape[0], -1), metric).to(device)


def _targets(x: torch.Tensor) -> torch.Tensor:
    return torch.arange(x.shape[0])


def similarity_curves(embedder: nn.Module, x: torch.Tensor, maps: torch.Tensor, references: torch.Tensor,
                      mode: str = "deletion", metric: str = "cosine", **kw) -> torch.Tensor:
    """Deletion or insertion curves ``(B, n + 1)`` of the similarity of each perturbed query
    ``x[i]`` to ``references[i]`` (``(B, D)``, or ``(D,)`` for all); ``kw`` as
    :func:`~visionlens.metrics.faithfulness.causal_curves` (``step``, ``substrate``, ``batch_size``, ``ends``)."""
    scorer = _scorer(embedder, x, references, metric)
    with preserved_model_state(embedder):
        curves, _ = faithfulness.causal_curves(scorer, x, maps, mode, _targets(x), confidence=SimilarityScore(), **kw)
    return curves


def similarity_curve_ends(embedder: nn.Module, x: torch.Tensor, references: torch.Tensor, mode: str,
                          metric: str = "cosine", **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """The first and last scores of the ``mode`` curves (they do not depend on the map, so methods
    compared on the same queries can share them through ``ends=``)."""
    scorer = _scorer(embedder, x, references, metric)
    with preserved_model_state(embedder):
        return faithfulness.curve_ends(scorer, x, _targets(x), mode, confidence=SimilarityScore(), **kw)


def similarity_deletion(embedder, x, maps, references, metric: str = "cosine", **kw) -> torch.Tensor:
    """Deletion AUC of the similarity per query (lower is better)."""
    return faithfulness.trapezoid_auc(similarity_curves(embedder, x, maps, references, "deletion", metric, **kw))


def similarity_insertion(embedder, x, maps, references, metric: str = "cosine", **kw) -> torch.Tensor:
    """Insertion AUC of the similarity per query (higher is better)."""
    return faithfulness.trapezoid_auc(similarity_curves(embedder, x, maps, references, "insertion", metric, **kw))

