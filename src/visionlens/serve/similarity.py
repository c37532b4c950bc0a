"""The Similarity view's work: why two images are similar (SFAM and the similarity baselines), and a
query ranked against a gallery with maps for the top matches.

It reuses what ``visionlens explain-pair`` and ``retrieve`` use: the embedding model of a loaded
classifier (:func:`~visionlens.models.embedder.embedding_model`: the pooled penultimate features),
the similarity methods as :mod:`visionlens.retrieval` builds them, their ``embed``, the ranking of
:func:`~visionlens.core.similarity.rank` and the pair explanations of the retrieval."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..core.similarity import check_metric, rank
from ..errors import InputError, VisionlensError
from ..models.embedder import embedding_model
from ..models.zoo import ZooModel
from ..retrieval import explain_pairs, similarity_methods
from ..viz.labels import signed_method
from .pictures import colour_bar, data_url, heat_url

SIMILARITY_CHOICES = ("sfam", "gradcam", "relevance-cam")  # naflow's per-layer similarity flow is not offered here
MAX_GALLERY = 200
MAX_TOP = 10
EMBED_BATCH = 16


def check_request(methods: list[str], metric: str, top: int | None = None) -> list[str]:
    """The chosen methods (known, without repeats); one :class:`InputError` line otherwise."""
    check_metric(metric)
    methods = list(dict.fromkeys(m.strip() for m in methods if m and m.strip()))
    if not methods:
        raise InputError(f"choose at least one similarity method: {', '.join(SIMILARITY_CHOICES)}")
    for m in methods:
        if m not in SIMILARITY_CHOICES:
            raise InputError(f"unknown similarity method '{m}'; choose from: {', '.join(SIMILARITY_CHOICES)}")
    if top is not None and not 1 <= top <= MAX_TOP:
        raise InputError(f"top must be between 1 and {MAX_TOP}, got {top}")
    return methods


def embedder_of(model: ZooModel) -> ZooModel:
    """The embedding model of a loaded classifier (the same module: nothing is loaded again)."""
    return embedding_model(model)


def pair_maps(results: dict, i: int, cmap: str) -> list[dict]:
    """Per method: the query's and the match's map of pair ``i``, coloured, with the colour bar."""
    shown = []
    for method, pair in results.items():
        signed = signed_method(method)
        query, match = (_picture(e, i, signed) for e in (pair.query, pair.reference))
        shown.append({"method": method, "layer": pair.query.layer, "signed": signed, "query": heat_url(query, cmap, signed),
                      "match": heat_url(match, cmap, signed), **colour_bar(cmap, signed)})
    return shown


def _picture(explanation, i: int, signed: bool):
    """Map ``i`` at the image's size: the normalised map, or a signed method's raw map upsampled."""
    size = explanation.maps.shape[-2:]
    if not signed:
        return explanation.maps[i].detach().float().cpu().numpy()
    raw = explanation.raw[i].detach().float()[None, None]
    return F.interpolate(raw, size=size, mode="bilinear", align_corners=False)[0, 0].cpu().numpy()


def explain_pair(model: ZooModel, views: tuple, methods: list[str], metric: str, cmap: str) -> dict:
    """Both images' maps by each method and their similarity (the caller holds the device lock)."""
    emb = embedder_of(model)
    explainers = similarity_methods(emb, methods, None, metric)
    xa, xb = (emb.preprocess.normalize(v)[None].to(emb.device) for v in views)
    results = {m: ex.pair(xa, xb) for m, ex in explainers.items()}
    first = next(iter(results.values()))
    return {"metric": metric, "score": float(first.scores[0]), "views": [data_url(v) for v in views],
            "maps": pair_maps(results, 0, cmap)}


def _embed(embed, emb: ZooModel, views: list) -> torch.Tensor:
    xs = torch.stack([emb.preprocess.normalize(v) for v in views])
    parts = [embed(xs[s:s + EMBED_BATCH].to(emb.device)).detach().float().cpu() for s in range(0, len(xs), EMBED_BATCH)]
    return torch.cat(parts)


def gallery_views(load, refs: list[str]) -> tuple[list[str], list, list[dict]]:
    """The readable gallery images as ``(refs, views, failures)``; one that cannot be read (not
    served, missing, unreadable) is skipped and reported (as ``retrieve`` does)."""
    kept, views, failures = [], [], []
    for ref in refs:
        try:
            views.append(load(ref))
            kept.append(ref)
        except VisionlensError as err:
            failures.append({"image": ref, "error": str(err).splitlines()[0]})
    if not kept:
        raise InputError(f"no readable image in the gallery ({failures[0]['image']}: {failures[0]['error']})")
    return kept, views, failures


def rank_gallery(model: ZooModel, query: tuple, gallery: tuple, methods: list[str], metric: str, top: int,
                 cmap: str) -> dict:
    """Rank ``gallery`` (``(refs, views)``) for ``query`` (``(ref, view)``) and explain the ``top``
    matches; a query that is in the gallery is left out of its own ranking (the caller holds the
    device lock)."""
    refs, views = gallery
    emb = embedder_of(model)
    explainers = similarity_methods(emb, methods, None, metric)
    embed = next(iter(explainers.values())).embed
    own = refs.index(query[0]) if query[0] in refs else None
    k = min(top, len(refs) - (own is not None))
    if k < 1:
        raise InputError("the gallery holds only the query itself; add images or choose another query")
    order, scores = rank(_embed(embed, emb, [query[1]]), _embed(embed, emb, views), metric, k=k, exclude=[own])
    picked = order[0].tolist()
    xq = emb.preprocess.normalize(query[1])[None].to(emb.device)
    xm = torch.stack([emb.preprocess.normalize(views[j]) for j in picked]).to(emb.device)
    results = {m: chunks[0] for m, chunks in explain_pairs(explainers, xq.expand(k, -1, -1, -1), xm, k).items()}
    matches = [{"image": refs[j], "rank": r + 1, "score": float(scores[0, r]), "view": data_url(views[j]),
                "maps": pair_maps(results, r, cmap)} for r, j in enumerate(picked)]
    return {"metric": metric, "query_view": data_url(query[1]), "gallery": len(refs),
            "excluded_query": own is not None, "matches": matches}
