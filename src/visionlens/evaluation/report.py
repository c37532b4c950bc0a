"""The report of an evaluation: per model x method x metric mean, 95 % CI and n (:func:`aggregate`),
written as ``report.csv`` / ``report.json`` / ``manifest.json`` and the ``index.html`` report card
with example overlays; :func:`markdown_table` for the docs."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .. import metrics as M
from ..io import save_atomic, write_json
from ..viz.overlay import overlay


def ci95(values: np.ndarray) -> float:
    """Half-width of the 95 % confidence interval of the mean (normal approximation, 1.96 standard
    errors); NaN for fewer than two values."""
    return 1.96 * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan")


def _finite(v) -> bool:
    """Whether a recorded metric value counts (None: undefined; NaN/infinity from older files likewise)."""
    return v is not None and math.isfinite(v)


def _per_class_of(metric: str) -> str | None:
    """The per-image metric that ``metric`` averages per class first (None: ``metric`` is per image)."""
    info = M.METRICS.get(metric)
    return None if info is None else info.per_class_of


def _values(recs: list[dict], metric: str) -> np.ndarray:
    """The values one cell summarises: per image, or per class (the mean of the class's images)."""
    source = _per_class_of(metric)
    if source is None:
        return np.array([r["metrics"][metric] for r in recs if _finite(r["metrics"].get(metric))], float)
    per_class: dict[int, list[float]] = {}
    for r in recs:
        if _finite(r["metrics"].get(source)):
            per_class.setdefault(r["label"], []).append(r["metrics"][source])
    return np.array([np.mean(v) for v in per_class.values()], float)


def aggregate(records: list[dict], models: list[str], methods: list[str], names: list[str]) -> dict:
    """Mean, 95 % CI (normal approximation, 1.96 standard errors) and n per model x method x metric."""
    rows, skipped = [], []
    for model in models:
        for method in methods:
            recs = [r for r in records if r["model"] == model and r["method"] == method]
            skip = [r for r in recs if r.get("image") == "*"]
            if skip:
                skipped.append({"model": model, "method": method, "reason": skip[0]["skipped"]})
                continue
            for metric in names:
                vals = _values(recs, metric)
                if len(vals):
                    rows.append({"model": model, "method": method, "metric": metric, "mean": float(vals.mean()),
                                 "ci95": float(ci95(vals)), "n": int(len(vals)),
                                 "direction": M.METRICS[metric].direction})
    return {"rows": rows, "skipped": skipped, "curves": mean_curves(records, models, methods)}


def mean_curves(records: list[dict], models: list[str], methods: list[str]) -> dict:
    """``{model: {method: {"deletion": [...], "insertion": [...]}}}``: the mean curve over the images
    whose records hold one (all of the same length; records without curves are left out)."""
    out: dict = {}
    for model in models:
        for method in methods:
            found: dict[str, list] = {}
            for r in records:
                if r["model"] == model and r["method"] == method:
                    for mode, curve in (r.get("curves") or {}).items():
                        found.setdefault(mode, []).append(curve)
            means = {mode: np.mean(np.array(cs, float), axis=0).round(4).tolist()
                     for mode, cs in found.items() if len({len(c) for c in cs}) == 1}
            if means:
                out.setdefault(model, {})[method] = means
    return out


def write_report_card(out: Path, report: dict, manifest: dict) -> None:
    """``report.csv``, ``report.json``, ``manifest.json`` (strict JSON) and ``index.html`` in ``out``."""
    from ..viz.report_card import report_card_html

    buf = io.StringIO()
    w = csv.DictWriter(buf, ["model", "method", "metric", "mean", "ci95", "n", "direction"], lineterminator="\n")
    w.writeheader()
    w.writerows(report["rows"])
    save_atomic(lambda t: Path(t).write_text(buf.getvalue(), encoding="utf-8"), out / "report.csv")
    write_json(report, out / "report.json", indent=1)  # strict JSON: an undefined CI (n = 1) is null
    write_json(manifest, out / "manifest.json", indent=1)
    text = report_card_html(report, manifest, sorted(p.name for p in (out / "examples").glob("*.png")))
    if text is not None:  # None: Jinja2 is missing (one line on stderr said so)
        save_atomic(lambda t: Path(t).write_text(text, encoding="utf-8"), out / "index.html")


def save_examples(folder: Path, model: str, method: str, raw: torch.Tensor, maps: torch.Tensor, first: int,
                  k: int, positions=None) -> None:
    """Overlays of the batch's images (``raw``, in [0, 1]) whose index among the command's images
    (``first`` + their position in the batch: ``positions[j]``, or ``j``) is below ``k``, and each
    image itself once."""
    for j in range(len(raw)):
        index = first + (positions[j] if positions is not None else j)
        if index >= k:
            continue
        img = Image.fromarray((raw[j].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8))
        name = f"{model}.{method}.{index}.png".replace("/", "_").replace("@", "_at_")
        ov = overlay(img, maps[j].float().cpu().numpy())
        save_atomic(lambda t, o=ov: o.save(t, format="PNG"), folder / name)
        view = folder / f"{model}.{index}.png".replace("/", "_")
        if not view.exists():
            save_atomic(lambda t, i=img: i.save(t, format="PNG"), view)


def markdown_table(report: dict, model: str) -> str:
    """The method x metric table of one model as Markdown (mean ± 95 % CI). A cell over fewer images
    than the table's largest n (e.g. maps that became constant under randomisation, where the
    correlation is undefined) says its own n; the per-class pointing game says its number of classes."""
    rows = [r for r in report["rows"] if r["model"] == model]
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], r["metric"]): r for r in rows}
    n_max = max((r["n"] for r in rows if _per_class_of(r["metric"]) is None), default=0)

    def shown(v: dict | None) -> str:
        if v is None:
            return ""
        text = f"{v['mean']:.3f}" + (f" ± {v['ci95']:.3f}" if _finite(v["ci95"]) else "")
        if _per_class_of(v["metric"]) is not None:
            return f"{text} ({v['n']} classes)"
        return text + (f" (n = {v['n']})" if v["n"] < n_max else "")

    head = "| method | " + " | ".join(f"{m} ({'↑' if M.METRICS[m].higher_is_better else '↓'})" for m in metrics) + " |"
    lines = [head, "|---" * (len(metrics) + 1) + "|"]
    for me in methods:
        lines.append(f"| `{me}` | " + " | ".join(shown(cell.get((me, m))) for m in metrics) + " |")
    return "\n".join(lines)
