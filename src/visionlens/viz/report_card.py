"""The evaluation report card as one HTML page: method x metric tables per model (mean ± 95 % CI
at the CI's precision, n, direction, the best value per column marked), skipped methods with the
reason, captioned example overlays with their colour bar, deletion/insertion curves per method
(inline SVG, where the report holds curves) and the manifest."""

from __future__ import annotations

import math
import re

from ..io import dumps
from .render import colorbar, render

_EXAMPLE = re.compile(r"^(?P<prefix>.+)\.(?P<index>\d+)\.png$")
_CURVE_COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def format_ci(mean: float | None, ci: float | None) -> str:
    """``mean ± ci`` with the CI to two significant digits and the mean to the same decimal place
    (``20.000, 26.133`` -> ``20 ± 26``; ``0.4567, 0.0123`` -> ``0.457 ± 0.012``); the mean alone
    (three significant digits) where the CI is undefined, ``± 0`` where every value is equal;
    ``—`` for an undefined mean."""
    if not _finite(mean):
        return "—"
    if not _finite(ci) or ci < 0:
        return f"{mean:.3g}" if abs(mean) >= 1e-3 or mean == 0 else f"{mean:.2e}"
    if ci == 0:  # every value equal
        return f"{mean:.3g} ± 0"
    place = 1 - math.floor(math.log10(ci))  # decimal place of the CI's second significant digit
    decimals = max(place, 0)
    rounded_mean, rounded_ci = round(mean, place), round(ci, place)
    return f"{rounded_mean:.{decimals}f} ± {rounded_ci:.{decimals}f}"


def _best_methods(rows: list[dict]) -> dict[str, set[str]]:
    """Per metric, the method(s) with the best mean in the metric's direction (of two or more, not
    all tied); means equal to a relative 1e-6 tie (identical maps scored in different batches differ
    by float rounding)."""
    best: dict[str, set[str]] = {}
    for metric in dict.fromkeys(r["metric"] for r in rows):
        scored = [r for r in rows if r["metric"] == metric and _finite(r["mean"])]
        if len(scored) < 2:
            continue
        pick = max if scored[0]["direction"] == "higher" else min
        top = pick(r["mean"] for r in scored)
        winners = {r["method"] for r in scored if math.isclose(r["mean"], top, rel_tol=1e-6, abs_tol=1e-12)}
        if len(winners) < len(scored):  # a column where every method ties has no best
            best[metric] = winners
    return best


def _examples(model: str, method: str, example_files: list[str]) -> list[dict]:
    """The example overlays of ``model`` x ``method`` with captions (method and image number)."""
    prefix = f"{model}.{method}".replace("/", "_").replace("@", "_at_")
    shown = []
    for name in example_files:
        match = _EXAMPLE.match(name)
        if match and match["prefix"] == prefix:
            shown.append({"file": f"examples/{name}", "caption": f"{method}, image {int(match['index']) + 1}"})
    return shown


def _inputs(model: str, example_files: list[str]) -> list[dict]:
    """The example images themselves (``MODEL.INDEX.png``), captioned with their number."""
    prefix = model.replace("/", "_").replace("@", "_at_")
    return [{"file": f"examples/{name}", "caption": f"image {int(m['index']) + 1} (input)"}
            for name in example_files if (m := _EXAMPLE.match(name)) and m["prefix"] == prefix]


def _polyline(values: list[float], width: int, height: int, pad: int) -> str:
    """SVG points of a curve on [0, 1] x [0, 1] in a ``width`` x ``height`` box."""
    n = max(len(values) - 1, 1)
    return " ".join(f"{pad + (width - 2 * pad) * i / n:.1f},{height - pad - (height - 2 * pad) * min(max(v, 0.0), 1.0):.1f}"
                    for i, v in enumerate(values))


def _curve_plots(curves: dict, width: int = 300, height: int = 180, pad: int = 24) -> list[dict]:
    """One plot per kind (deletion, insertion): per method a coloured polyline and its legend."""
    plots = []
    for kind in ("deletion", "insertion"):
        lines = [{"method": method, "color": _CURVE_COLORS[i % len(_CURVE_COLORS)],
                  "points": _polyline([float(v) for v in per_kind[kind]], width, height, pad)}
                 for i, (method, per_kind) in enumerate(curves.items()) if per_kind.get(kind)]
        if lines:
            plots.append({"kind": kind, "lines": lines, "width": width, "height": height, "pad": pad})
    return plots


def _cell(r: dict | None, best: bool) -> dict | None:
    return None if r is None else {"text": format_ci(r["mean"], r["ci95"]), "n": r["n"], "best": best}


def _model_section(model: str, report: dict, example_files: list[str]) -> dict:
    """What the page shows of one model: its table, example overlays, curves and skipped methods."""
    rows = [r for r in report["rows"] if r["model"] == model]
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    cell = {(r["method"], r["metric"]): r for r in rows}
    best = _best_methods(rows)
    direction = {r["metric"]: r["direction"] for r in rows}  # the first method may lack a metric
    table = [{"method": me, "examples": _examples(model, me, example_files),
              "cells": [_cell(cell.get((me, m)), me in best.get(m, ())) for m in metrics]}
             for me in dict.fromkeys(r["method"] for r in rows)]
    return {"model": model, "inputs": _inputs(model, example_files), "table": table,
            "metrics": [{"name": m, "direction": direction[m]} for m in metrics],
            "skipped": [s for s in report["skipped"] if s["model"] == model],
            "curves": _curve_plots((report.get("curves") or {}).get(model, {}))}


def report_card_html(report: dict, manifest: dict, example_files: list[str], cmap: str | None = None) -> str | None:
    """The page's text; None without Jinja2. ``report["curves"]`` (optional): ``{model: {method:
    {"deletion": [...], "insertion": [...]}}}``, mean softmax scores from the first to the last step."""
    models = list(dict.fromkeys([r["model"] for r in report["rows"]] + [s["model"] for s in report["skipped"]]))
    return render("report_card.html.j2", title="visionlens report card",
                  models=[_model_section(m, report, example_files) for m in models],
                  unreadable=report.get("unreadable", []),
                  bars=[colorbar(cmap, False, "example overlays: normalised maps (per image)")],
                  manifest=dumps(manifest, indent=1))
