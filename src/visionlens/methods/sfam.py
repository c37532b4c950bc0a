"""SFAM, Similar Feature Activation Map (Liao et al., arXiv:2506.01636), for embedding models,
with Grad-CAM and Relevance-CAM baselines on the same similarity targets.

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

from dataclasses import dataclass

import torch
from torch import nn

from ..core.hooks import ActivationCapture, preserved_model_state
from ..core.layers import _param_device, check_spatial, find_last_spatial_layer, resolve_layer
from ..core.result import Explanation, normalize_maps
from ..core.similarity import (
    EUCLID_MODES,
    NORMALIZATIONS,
    SimilarityTarget,
    as_references,
    check_embeddings,
    check_metric,
    contribution_scores,
    contributions,
    normalize_scores,
    similarity,
)
from ..errors import InputError
from ..models.embedder import Embedder
from .base import check_input


def _is_vit(model: nn.Module) -> bool:
    from ..core.vit import find_vit
    from ..errors import LayerError

    try:
        find_vit(model)
    except LayerError:
        return False
    return True
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


class SimilarityMethod:
    """Shared flow: ``Method(model, layer=None, metric="cosine")(x, reference)``.

    ``model``: an :class:`~visionlens.models.Embedder` (or any module returning ``(B, D)``
    embeddings). ``reference``: a :class:`SimilarityTarget`, reference images ``(B or 1, C, H, W)``
    (embedded by the same model), or embeddings ``(D,)``, ``(B, D)``, ``(B, M, D)`` taken after
    the model's normalisation. ``layer``: a module or a dotted name (relative to the embedder's
    backbone or to the model), or ``None`` for the embedding layer (the GAP input).
    """

    name = "similarity"

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None, metric: str = "cosine"):
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
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
            if _is_vit(backbone):  # its spatial layers are the patch embedding, not features to weigh
                raise InputError(f"{self.name} explains CNN feature maps; {type(backbone).__name__} is a ViT "
                                 "(use daam for ViTs, or pass layer=... to pick a feature map yourself)")
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
        x = x.to(_param_device(self.model))
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
        refs = self.references(reference, x.shape[0])
        return self.explain(x, refs)

    def explain(self, x: torch.Tensor, refs: torch.Tensor) -> SimilarityExplanation:
        raise NotImplementedError

    def pair(self, a: torch.Tensor, b: torch.Tensor) -> PairExplanation:
        """Explain each pair ``(a[i], b[i])`` both ways: ``a`` against ``b`` and ``b`` against ``a``
        (one batch of ``2B``). ``b`` may hold one image for all of ``a``."""
        x = pair_batch(a, b)
        e = self.embed(x)
        n = a.shape[0]
        refs = torch.cat([e[n:], e[:n]])[:, None]
        return PairExplanation(*_split(self.explain(x, refs), n))


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
        x = x.to(_param_device(self.model))
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
        return SimilarityExplanation(
            maps=maps, raw=raw, targets=None, scores=scores, logits=e, method=self.name, layer=name,
            references=refs.detach(), metric=self.metric, cis=cis, weights=w, coefficients=alpha.detach(),
        )


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


SIMILARITY_METHODS = {"sfam": SFAM, "gradcam": SimilarityGradCAM, "relevance-cam": SimilarityRelevanceCAM}
