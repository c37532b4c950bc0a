"""Explaining why two images are similar: the base of the similarity methods, their result
types, and the Grad-CAM and Relevance-CAM baselines on a similarity target (SFAM is in
:mod:`visionlens.methods.sfam`, the similarity NAFlow in :mod:`visionlens.methods.naflow`).

A similarity method is ``Method(model, layer=None, metric="cosine")(x, reference)`` on an
embedding model; ``.pair(a, b)`` explains each pair both ways from one batch of ``2B``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.hooks import preserved_model_state
from ..core.layers import find_last_spatial_layer, model_device, resolve_layer
from ..core.result import Explanation
from ..core.similarity import SimilarityTarget, as_references, check_embeddings, check_metric
from ..core.vit import recognised_vit
from ..errors import InputError
from ..models.embedder import Embedder
from .base import Method, check_input, input_mismatch_as_input_error
from .gradcam import GradCAM
from .relevance_cam import RelevanceCAM


@dataclass
class SimilarityExplanation(Explanation):
    """An :class:`Explanation` of a similarity: ``scores`` are the similarities ``s``, ``logits``
    the query embeddings ``e`` ``(B, D)``, ``targets`` is ``None``. ``references``: ``(B, M, D)``.
    SFAM also fills ``cis`` and ``weights`` (``(B, D)``) and ``coefficients`` (``(B, K)``)."""

    references: torch.Tensor | None = None
    metric: str = "cosine"
    cis: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    coefficients: torch.Tensor | None = None

    @property
    def embeddings(self) -> torch.Tensor:
        return self.logits


@dataclass
class PairExplanation:
    """Both maps of image pairs: ``query`` explains ``a`` against ``b``, ``reference`` explains ``b``
    against ``a`` (same similarity, and for SFAM the same weights)."""

    query: SimilarityExplanation
    reference: SimilarityExplanation

    @property
    def scores(self) -> torch.Tensor:
        return self.query.scores


def _split(exp: SimilarityExplanation, n: int) -> tuple[SimilarityExplanation, SimilarityExplanation]:
    def part(sl):
        pick = lambda t: None if t is None else t[sl]  # noqa: E731
        return SimilarityExplanation(
            maps=exp.maps[sl], raw=exp.raw[sl], targets=None, scores=exp.scores[sl], logits=exp.logits[sl],
            method=exp.method, layer=exp.layer, references=pick(exp.references), metric=exp.metric,
            cis=pick(exp.cis), weights=pick(exp.weights), coefficients=pick(exp.coefficients),
        )

    return part(slice(0, n)), part(slice(n, None))


def pair_batch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``cat([a, b])`` for explaining pairs ``(a[i], b[i])`` both ways in one batch of ``2B``
    (``b`` may hold one image for all of ``a``); checked."""
    check_input(a)
    check_input(b)
    if b.shape[0] == 1 and a.shape[0] > 1:
        b = b.expand(a.shape[0], -1, -1, -1)
    if a.shape[0] != b.shape[0] or a.shape[1:] != b.shape[1:]:
        raise InputError(f"pair images must have matching shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.cat([a, b.to(a.device)])


class SimilarityMethod(Method):
    """Shared flow: ``Method(model, layer=None, metric="cosine")(x, reference)``.

    ``model``: an :class:`~visionlens.models.Embedder` (or any module returning ``(B, D)``
    embeddings). ``reference``: a :class:`SimilarityTarget`, reference images ``(B or 1, C, H, W)``
    (embedded by the same model), or embeddings ``(D,)``, ``(B, D)``, ``(B, M, D)`` taken after
    the model's normalisation. ``layer``: a module or a dotted name (relative to the embedder's
    backbone or to the model), or ``None`` for the embedding layer (the GAP input).
    """

    name = "similarity"
    kind = "similarity"

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None, metric: str = "cosine"):
        super().__init__(model)
        self.metric = check_metric(metric)
        self.layer = layer
        self._resolved: tuple[str, nn.Module] | None = None
        if layer is not None:
            self._resolved = self._resolve_layer(layer)

    def _resolve_layer(self, layer) -> tuple[str, nn.Module]:
        if isinstance(self.model, Embedder):
            return self.model.resolve(layer)
        return resolve_layer(self.model, layer)

    def resolve(self, x: torch.Tensor) -> tuple[str, nn.Module]:
        if self._resolved is None:
            backbone = self.model.backbone if isinstance(self.model, Embedder) else self.model
            if recognised_vit(backbone) is not None:  # its spatial layers are the patch embedding, not features to weigh
                raise InputError(f"{self.name} explains CNN feature maps and {type(backbone).__name__} is a Vision "
                                 "Transformer: the similarity methods (explain-pair, retrieve) take CNN embedders; "
                                 "explain a ViT's images one by one with daam, chefer or attnlrp")
            if isinstance(self.model, Embedder):
                self._resolved = self._resolve_layer(self.model.default_layer(x))
            else:
                self._resolved = self._resolve_layer(find_last_spatial_layer(self.model, x))
        return self._resolved

    @property
    def post_norm(self) -> bool:
        """Whether the model L2-normalises its embedding outside the back-propagated part."""
        return isinstance(self.model, Embedder) and self.model.normalize

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """``z``: the embedding before an Embedder's L2 normalisation."""
        return self.model(x, normalize=False) if isinstance(self.model, Embedder) else self.model(x)

    def _finish(self, z: torch.Tensor) -> torch.Tensor:
        if not torch.is_tensor(z) or z.dim() != 2:
            shape = tuple(z.shape) if torch.is_tensor(z) else type(z).__name__
            raise InputError(f"an embedding model must return (B, D), got {shape}; wrap it with visionlens.models.Embedder")
        return torch.nn.functional.normalize(z, dim=1) if self.post_norm else z

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Embeddings ``(B, D)`` (after the model's normalisation) in eval mode; model restored."""
        check_input(x)
        x = x.to(model_device(self.model))
        with preserved_model_state(self.model):
            parts = [self._finish(self._forward(x[i:i + batch_size])) for i in range(0, x.shape[0], batch_size)]
        e = torch.cat(parts)
        check_embeddings(e, "embeddings")
        return e

    def references(self, reference, batch_size: int, dim: int | None = None) -> torch.Tensor | SimilarityTarget:
        """Reference embeddings ``(B, M, D)`` (or as given, when the dimension is not known yet)."""
        if isinstance(reference, SimilarityTarget):
            if reference.metric != self.metric:
                raise InputError(f"the target's metric is '{reference.metric}' but the method's is '{self.metric}'; use one")
            refs = reference.references
        elif torch.is_tensor(reference) and reference.dim() == 4:
            if reference.shape[0] not in (1, batch_size):
                raise InputError(f"got {reference.shape[0]} reference images for {batch_size} queries; give one per query or one for all")
            refs = self.embed(reference)
        elif torch.is_tensor(reference):
            refs = reference.detach()
        else:
            raise InputError(
                f"reference must be images (B, C, H, W), embeddings or a SimilarityTarget, got {type(reference).__name__}"
            )
        if dim is None:
            return refs
        return as_references(refs, batch_size, dim)

    def __call__(self, x: torch.Tensor, reference) -> SimilarityExplanation:
        check_input(x)
        with input_mismatch_as_input_error(self.model, x):
            refs = self.references(reference, x.shape[0])
            return self.explain(x, refs)

    def explain(self, x: torch.Tensor, refs: torch.Tensor) -> SimilarityExplanation:
        raise NotImplementedError

    def pair(self, a: torch.Tensor, b: torch.Tensor) -> PairExplanation:
        """Explain each pair ``(a[i], b[i])`` both ways: ``a`` against ``b`` and ``b`` against ``a``
        (one batch of ``2B``). ``b`` may hold one image for all of ``a``."""
        x = pair_batch(a, b)
        with input_mismatch_as_input_error(self.model, x):
            e = self.embed(x)
            n = a.shape[0]
            refs = torch.cat([e[n:], e[:n]])[:, None]
            return PairExplanation(*_split(self.explain(x, refs), n))


class SimilarityGradCAM(SimilarityMethod):
    """Grad-CAM on the similarity score (the tutorial approach): ``α_k = mean_ij ∂s/∂A^k_ij`` with
    the gradient through the model's normalisation, ``M = ReLU(Σ_k α_k A^k)``."""

    name = "gradcam"

    def explain(self, x: torch.Tensor, refs: torch.Tensor) -> SimilarityExplanation:
        check_input(x)
        name, module = self.resolve(x)
        target = SimilarityTarget(refs, self.metric, normalize=self.post_norm)
        model = self.model.without_normalization() if isinstance(self.model, Embedder) else self.model
        exp = GradCAM(model, module)(x, target)
        return SimilarityExplanation(
            maps=exp.maps, raw=exp.raw, targets=None, scores=exp.scores, logits=self._finish(exp.logits),
            method=self.name, layer=name, references=target.resolve(exp.logits), metric=self.metric,
        )


class SimilarityRelevanceCAM(SimilarityMethod):
    """Relevance-CAM started from the similarity: the start relevance on the embedding is the
    gradient of ``s`` with the L2 normalisation held constant (``r̂/‖z‖`` for the cosine,
    ``−2(e − r)/‖z‖`` on normalised embeddings for the Euclidean score, ``−2(z − r)`` without
    normalisation); it is propagated with the LRP rules of :mod:`visionlens.lrp` to the layer,
    ``w_k = mean_ij R^k_ij``, ``M = Σ_k w_k A^k`` (no ReLU, as Relevance-CAM)."""

    name = "relevance-cam"

    def explain(self, x: torch.Tensor, refs: torch.Tensor) -> SimilarityExplanation:
        check_input(x)
        name, module = self.resolve(x)
        target = SimilarityTarget(refs, self.metric, normalize=self.post_norm, hold_norm=True)
        model = self.model.without_normalization() if isinstance(self.model, Embedder) else self.model
        exp = RelevanceCAM(model, module)(x, target)
        return SimilarityExplanation(
            maps=exp.maps, raw=exp.raw, targets=None, scores=exp.scores, logits=self._finish(exp.logits),
            method=self.name, layer=name, references=target.resolve(exp.logits), metric=self.metric,
        )
