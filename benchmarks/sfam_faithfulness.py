"""SFAM against Grad-CAM and Relevance-CAM on the similarity, on ImageNet retrieval pairs: the
deletion and insertion AUC of the similarity of the perturbed query to its reference (RISE
protocol, visionlens.metrics.similarity_faithfulness), with paired differences and 95 % CIs.

    python benchmarks/sfam_faithfulness.py --data /work/shared/data/imagenet-sample --pairs dogs --n 59
    python benchmarks/sfam_faithfulness.py --data samples --pairs views --n 20   # a clean clone

Pairs (query, reference), each of the same class: ``class`` two photos of one class index;
``dogs`` two photos of neighbouring ImageNet dog breeds (151-268: the class "dog", for a folder
with one photo per class such as the ImageNet sample); ``views`` a photo's centre crop and its
mirrored corner crop. Model: ``--model`` (default mobilenet_v2) as an embedder, its pooled
penultimate features. ImageNet photos have no object masks, so there is no mass or pointing here
(benchmarks/sfam_planted.py has both on the synthetic world). The helpers below are shared with
that benchmark.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from visionlens import SFAM, SimilarityGradCAM, SimilarityRelevanceCAM
from visionlens.evaluation import ci95
from visionlens.metrics.similarity_faithfulness import similarity_curve_ends, similarity_curves
from visionlens.metrics.faithfulness import trapezoid_auc

import _cli

METHODS = {"sfam": SFAM, "gradcam": SimilarityGradCAM, "relevance-cam": SimilarityRelevanceCAM}
HIGHER_IS_BETTER = {"mass": True, "mass (grown)": True, "pointing": True, "deletion": False, "insertion": True}


def query_maps(method, xq: torch.Tensor, xr: torch.Tensor, chunk: int) -> torch.Tensor:
    """The query maps of ``method`` for each pair ``(xq[i], xr[i])``."""
    return torch.cat([method(xq[i:i + chunk], xr[i:i + chunk]).maps.detach() for i in range(0, len(xq), chunk)])


def faithfulness(emb, xq: torch.Tensor, refs: torch.Tensor, maps_by_method: dict, metric: str, step: int,
                 chunk: int) -> dict[str, dict[str, np.ndarray]]:
    """Deletion and insertion AUC of the similarity per query, per method; the curve ends (which
    do not depend on the map) are computed once and shared by the methods."""
    out = {name: {"deletion": [], "insertion": []} for name in maps_by_method}
    for i in range(0, len(xq), chunk):
        x, r = xq[i:i + chunk], refs[i:i + chunk]
        for mode in ("deletion", "insertion"):
            ends = similarity_curve_ends(emb, x, r, mode, metric)
            for name, maps in maps_by_method.items():
                curves = similarity_curves(emb, x, maps[i:i + chunk], r, mode, metric, step=step, ends=ends)
                out[name][mode].append(trapezoid_auc(curves).cpu())
    return {name: {k: torch.cat(v).numpy() for k, v in scores.items()} for name, scores in out.items()}


def localisation(maps: torch.Tensor, mask: torch.Tensor, grown: torch.Tensor) -> dict[str, np.ndarray]:
    """Share of the map's mass on the object (exact and grown) and the pointing-game hit."""
    total = maps.flatten(1).sum(1).clamp_min(1e-12)
    hit = mask.flatten(1).float().gather(1, maps.flatten(1).argmax(1)[:, None])[:, 0]
    return {"mass": ((maps * mask).flatten(1).sum(1) / total).numpy(),
            "mass (grown)": ((maps * grown).flatten(1).sum(1) / total).numpy(), "pointing": hit.numpy()}


def means_table(results: dict, metrics: list[str]) -> list[str]:
    lines = ["| method | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    for name, scores in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{scores[m].mean():.3f} ± {ci95(scores[m]):.3f}" for m in metrics) + " |")
    return lines


def paired_table(results: dict, metrics: list[str], method: str = "sfam") -> list[str]:
    """``method − baseline`` per query: mean, 95 % CI (1.96 standard errors), verdict."""
    lines = [f"| {method} − baseline | metric | mean difference | 95 % CI | n | verdict |", "|---|---|---|---|---|---|"]
    for base in results:
        if base == method or base.startswith(method + " "):
            continue
        for m in metrics:
            d = results[method][m] - results[base][m]
            half, sign = ci95(d), 1 if HIGHER_IS_BETTER[m] else -1
            lo, hi = sign * (d.mean() - half), sign * (d.mean() + half)
            verdict = "better" if min(lo, hi) > 0 else "worse" if max(lo, hi) < 0 else "tie"
            lines.append(f"| {base} | {m} | {d.mean():+.4f} | [{d.mean() - half:+.4f}, {d.mean() + half:+.4f}] | "
                         f"{len(d)} | {verdict} |")
    return lines


@torch.no_grad()
def weight_analysis(emb, xq: torch.Tensor, xr: torch.Tensor, metric: str) -> str:
    """Where SFAM's weights go. ``w_d >= 0`` asks the layer for *more* of dimension ``d``; where
    the shared value is negative (``ê_d, r̂_d < 0``, possible after a projection head) that
    lowers the similarity, while Grad-CAM's weight there, ``∂s/∂ê_d = r̂_d``, is negative."""
    from visionlens.core.similarity import contributions

    sfam = SFAM(emb, metric=metric)
    e, r = sfam.embed(xq), sfam.embed(xr)
    c = contributions(e, r[:, None], metric)
    w = sfam.weights(e, r[:, None])[1]
    share = lambda keep: ((w * keep).sum(1) / w.sum(1)).numpy()  # noqa: E731
    negative, shared_negative = share(r < 0), share((r < 0) & (e < 0))
    return (f"SFAM weights: {share(c <= 0).mean():.3f} of Σw on dimensions with c_d <= 0; {negative.mean():.3f} ± "
            f"{ci95(negative):.3f} on dimensions with r_d < 0 (Grad-CAM's weight there is negative), "
            f"{shared_negative.mean():.3f} ± {ci95(shared_negative):.3f} on dimensions where both e_d and r_d are < 0; "
            f"{float((r < 0).float().mean()):.3f} of the reference coordinates are negative")


def photo_pairs(data: str, model, pairs: str, n: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """``n`` (query, reference) pairs of the same class from ``data`` (a labels.csv folder or samples)."""
    from visionlens.concepts.sources import open_source

    source = open_source(data, model, views=8 if pairs == "views" else 1)
    if pairs == "views":
        items = [(source.items(c, 8)[0], source.items(c, 8)[5]) for c in source.classes()]
    elif pairs == "dogs":
        dogs = [c for c in source.classes() if 151 <= c <= 268]
        items = [(source.items(a, 1)[0], source.items(b, 1)[0]) for a, b in zip(dogs[::2], dogs[1::2])]
    else:
        items = [(source.items(c, 2)[0], source.items(c, 2)[1]) for c in source.classes() if len(source.items(c, 2)) == 2]
    items = items[:n]
    if not items:
        _cli.fail(f"no {pairs} pairs in {data}")
    q, r = source.load([a for a, _ in items])["x"], source.load([b for _, b in items])["x"]
    return q, r, [f"{a[0].name} ~ {b[0].name}" for a, b in items]


def main() -> None:
    ap = _cli.Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/work/shared/data/imagenet-sample", help="labels.csv folder or 'samples'")
    ap.add_argument("--pairs", default="dogs", choices=["class", "dogs", "views"])
    ap.add_argument("--n", type=_cli.positive_int, default=59, help="number of pairs (at most)")
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"])
    ap.add_argument("--step", type=_cli.positive_int, default=224 * 8, help="pixels per deletion/insertion step (RISE: the width)")
    ap.add_argument("--chunk", type=_cli.positive_int, default=8, help="queries per batch")
    args = ap.parse_args()
    import visionlens
    from visionlens.models import load_model

    started = time.perf_counter()
    emb = visionlens.embedder(args.model)
    xq, xr, names = photo_pairs(args.data, load_model(args.model), args.pairs, args.n)
    refs = SFAM(emb, metric=args.metric).embed(xr)
    maps = {name: query_maps(cls(emb, metric=args.metric), xq, xr, args.chunk) for name, cls in METHODS.items()}
    results = faithfulness(emb, xq, refs, maps, args.metric, args.step, args.chunk)
    metrics = ["deletion", "insertion"]
    print(f"{len(names)} {args.pairs} pairs from {args.data}, {args.model}, {args.metric}, step {args.step} px, "
          f"{time.perf_counter() - started:.0f} s")
    print("\n".join(means_table(results, metrics)), "\n")
    print("\n".join(paired_table(results, metrics)), "\n")
    print(weight_analysis(emb, xq, xr, args.metric))


if __name__ == "__main__":
    _cli.run(main)
