"""Score the LGD pipeline on the synthetic referring benchmark and build the ablation table.

Term scores are computed once per sample (all three terms); every (alpha, beta) setting and
ablation row is then a re-weighting of the same numbers. alpha and beta are tuned on the
``val`` split over ``GRID`` and reported on ``test`` (tuning on the test split would not be
zero-shot-clean).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from visionlens.core.progress import Progress

from .metrics import ReferMetrics
from .pipeline import LGD
from .scores import LGDConfig, fuse, select
from .synthetic import benchmark

GRID = (0.0, 0.25, 0.5, 1.0, 2.0)
ROWS = ("vanilla", "+attribute", "+surrounding", "all")


def collect(samples, lgd: LGD, proposer, progress: bool = False) -> list[dict]:
    """Per sample: the proposals, their three term scores, the ground truth and the kind."""
    bar = Progress(len(samples), "lgd scores", enabled=progress)
    rows = []
    for s in samples:
        masks = proposer.propose(s.image, s)
        scores, desc = lgd.term_scores(s.image, s.expression, masks, image_id=s.image_id, scene=s.entities)
        rows.append({"masks": masks, "scores": scores, "gt": s.mask, "kind": s.kind, "descriptions": desc})
        bar.update(1)
    return rows


def evaluate(rows: list[dict], config: LGDConfig, by_kind: bool = False) -> dict:
    """oIoU / mIoU / Pr@K of the argmax under ``config`` (and per expression kind)."""
    overall, kinds = ReferMetrics(), {}
    for r in rows:
        pred = r["masks"][select(fuse(r["scores"], config))].numpy()
        overall.add(pred, r["gt"])
        if by_kind:
            kinds.setdefault(r["kind"], ReferMetrics()).add(pred, r["gt"])
    out = overall.summary()
    if by_kind:
        out["by_kind"] = {k: m.summary() for k, m in sorted(kinds.items())}
    return out


def tune(rows: list[dict], row: str, grid=GRID, metric: str = "mIoU") -> tuple[float, float]:
    """Best (alpha, beta) for ablation ``row`` on ``rows`` (first best in grid order)."""
    alphas = grid if row in ("+attribute", "all") else (0.0,)
    betas = grid if row in ("+surrounding", "all") else (0.0,)
    best, arg = -1.0, (0.0, 0.0)
    for a, b in itertools.product(alphas, betas):
        v = evaluate(rows, LGDConfig.ablation(row, alpha=a, beta=b))[metric]
        if v > best + 1e-12:
            best, arg = v, (a, b)
    return arg


def ablation_table(encoder, describer, proposer, n_val: int = 200, n_test: int = 400, seed: int = 0,
                   progress: bool = False, samples: tuple | None = None) -> dict:
    """The four ablation rows: weights tuned on val, metrics on test (overall and per kind).
    ``samples`` = (val, test) lists reuses already rendered benchmark samples."""
    torch.set_num_threads(1)
    lgd = LGD(encoder, describer, LGDConfig())
    if samples is None:
        bar = Progress(n_val + n_test, "rendering scenes", enabled=progress)
        samples = benchmark("val", n_val, seed, bar=bar), benchmark("test", n_test, seed, bar=bar)
    val_s, test_s = samples
    val = collect(val_s, lgd, proposer, progress)
    test = collect(test_s, lgd, proposer, progress)
    table = []
    for row in ROWS:
        a, b = tune(val, row)
        res = evaluate(test, LGDConfig.ablation(row, alpha=a, beta=b), by_kind=True)
        table.append({"row": row, "alpha": a, "beta": b, **res})
    return {"rows": table, "n_val": len(val), "n_test": len(test), "seed": seed,
            "proposer": getattr(proposer, "name", type(proposer).__name__),
            "encoder": getattr(encoder, "name", type(encoder).__name__),
            "describer": getattr(describer, "name", type(describer).__name__),
            "mean_proposals": float(np.mean([len(r["masks"]) for r in test]))}


def markdown(result: dict) -> str:
    lines = ["| row | alpha | beta | oIoU | mIoU | Pr@0.5 | Pr@0.9 | " + " | ".join(f"mIoU {k}" for k in result["rows"][0]["by_kind"]) + " |",
             "|---" * (6 + len(result["rows"][0]["by_kind"])) + "|---|"]
    for r in result["rows"]:
        kinds = " | ".join(f"{100 * v['mIoU']:.1f}" for v in r["by_kind"].values())
        lines.append(f"| {r['row']} | {r['alpha']:g} | {r['beta']:g} | {100 * r['oIoU']:.1f} | {100 * r['mIoU']:.1f} | "
                     f"{100 * r['Pr@0.5']:.1f} | {100 * r['Pr@0.9']:.1f} | {kinds} |")
    return "\n".join(lines)
