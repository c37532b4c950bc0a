"""Concept discovery for several classes with outputs on disk: per class a saved reducer and
concept sheets (Bessel and ICE views), plus ``concepts.json``, ``metrics.csv`` and ``index.html``.
Used by ``visionlens concepts`` and the benchmark."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

from ..core.layers import resolve_layer
from ..errors import InputError
from ..metrics.concepts import DEFAULT_COHERENCE, average_scores
from ..io import save_atomic
from ..outputs import check_out_dir, recorded_run
from .collect import CALC_LIMIT, collect_rows, layer_activations
from .discovery import best_part_iou, discover_class
from .factory import make_reducer
from .sheet import concept_sheet, concepts_section_html, save_sheet, write_concepts_page


def parse_classes(spec: str, available: list[int]) -> list[int]:
    """``all`` or a comma list of indices and ranges (``151-155,207``); each must be in the data."""
    if spec in (None, "", "all"):
        return list(available)
    chosen: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                chosen += list(range(int(lo), int(hi) + 1))
            elif part:
                chosen.append(int(part))
        except ValueError:
            raise InputError(f"--classes: '{part}' is not a class index or range (e.g. 0,3 or 151-155)") from None
    missing = [c for c in chosen if c not in set(available)]
    if missing:
        raise InputError(f"--classes: class(es) {missing[:5]} have no images in the data")
    if not chosen:
        raise InputError("--classes selects no class")
    return chosen


def run_concepts(model, layer: str | None, source, classes: list[int], out: Path, reducer: str = "vae",
                 n_concepts: int = 10, reducer_options: dict | None = None, n_images: int = 32,
                 batch_size: int = 32, weight_mode: str = "autograd", coherence: str = DEFAULT_COHERENCE,
                 pooled: bool = False, threshold: float = 0.5, max_numel: int = CALC_LIMIT, seed: int = 0,
                 progress: bool = True, data_name: str = "") -> dict:
    """Discover concepts for ``classes`` and write everything under ``out``; returns the summary."""
    out = Path(out)
    planned = _planned_files(classes, pooled)
    own = recorded_run(out, "concepts.json", planned, keys=("reducer", "classes"))  # an earlier run's folder
    check_out_dir(out, planned, own=own)
    net = model.module
    name, module = resolve_layer(net, layer or model.layer or "")
    options = dict(reducer_options or {})
    make_reducer(reducer, n_concepts, **options)  # validate before any work
    first = source.items(classes[0], 1)
    if not first:
        raise InputError(f"no images of class {classes[0]} in the data")
    layer_activations(net, name, module, source.load(first)["x"].to(model.device))  # a 4-D feature map?
    (out / "reducers").mkdir(parents=True, exist_ok=True)
    (out / "sheets").mkdir(exist_ok=True)
    started = time.perf_counter()
    shared = None
    if pooled:  # one reducer for the whole group of classes, scored per class
        items = [it for c in classes for it in source.items(c, n_images)]
        shared = make_reducer(reducer, n_concepts, **options)
        rows, _ = collect_rows(net, name, module, source, items, batch_size, max_numel, seed, progress, "activations (pooled)")
        shared.fit(rows, progress=progress)
        shared.save(out / "reducers" / "pooled.pt")
    results, html_rows = {}, []
    for cls in classes:
        red = shared or make_reducer(reducer, n_concepts, **options)
        found = discover_class(model, name, source, cls, red, n_images=n_images, batch_size=batch_size,
                               weight_mode=weight_mode, coherence=coherence, max_numel=max_numel, fit=shared is None,
                               seed=seed, progress=progress)
        ious = best_part_iou(found, threshold)
        found.extras["part_iou"] = ious
        if shared is None:
            red.save(out / "reducers" / f"class_{cls}.pt")
        sheets = {}
        for view in ("bessel", "ice"):
            path = save_sheet(concept_sheet(found, view, threshold=threshold), out / "sheets" / f"class_{cls}_{view}.png")
            sheets[view] = str(path.relative_to(out))
        results[cls] = {
            "name": found.class_name, "images": len(found.items), "scores": found.scores,
            "weights": found.weights.tolist(), "ranking": found.ranking, "prototypes": found.prototypes,
            "rows_seen": found.rows_seen, "rows_used": found.rows_used, "sheets": sheets,
            "part_iou": ious, "part_names": ([source.part_names[p] for p in ious["part"]] if ious else None),
        }
        html_rows.append({"name": f"{cls}: {found.class_name}", "scores": found.scores, "sheets": sheets})
    summary = {
        "model": model.name, "model_source": model.describe(), "layer": name, "data": data_name, "reducer": reducer, "n_concepts": n_concepts,
        "reducer_options": options, "weight_mode": weight_mode, "coherence": coherence, "pooled": pooled,
        "images_per_class": n_images, "seed": seed, "wall_s": round(time.perf_counter() - started, 1),
        "average": average_scores({c: r["scores"] for c, r in results.items()}),
        "classes": {str(c): r for c, r in results.items()},
    }
    ious = [v for r in results.values() if r["part_iou"] for v in r["part_iou"]["iou"]]
    if ious:
        rand = [v for r in results.values() if r["part_iou"] for v in r["part_iou"]["random_iou"]]
        summary["average"]["best_part_iou"] = sum(ious) / len(ious)
        summary["average"]["random_iou"] = sum(rand) / len(rand)
    _write_text(out / "concepts.json", json.dumps(summary, indent=2))
    _write_text(out / "metrics.csv", _metrics_csv(summary))
    title = f"visionlens concepts: {model.name} @ {name}, {reducer} (c'={n_concepts}), data {data_name}"
    section = concepts_section_html(f"{reducer} concepts at {name}", html_rows)
    write_concepts_page(out / "index.html", title, [section])
    return summary


def _planned_files(classes: list[int], pooled: bool) -> list[str]:
    """Every file ``run_concepts`` writes under its folder."""
    reducers = ["reducers/pooled.pt"] if pooled else [f"reducers/class_{c}.pt" for c in classes]
    sheets = [f"sheets/class_{c}_{view}.png" for c in classes for view in ("bessel", "ice")]
    return ["concepts.json", "metrics.csv", "index.html", *reducers, *sheets]


def _write_text(dest: Path, text: str) -> None:
    save_atomic(lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), dest)


def _metrics_csv(summary: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["class", "name", "fidelity", "coherence", "faith", "mean_best_part_iou"])
    for cls, r in summary["classes"].items():
        iou = r["part_iou"]["iou"] if r["part_iou"] else []
        writer.writerow([cls, r["name"], f"{r['scores']['fidelity']:.3f}", f"{r['scores']['coherence']:.3f}",
                         f"{r['scores']['faith']:.3f}", f"{sum(iou) / len(iou):.3f}" if iou else ""])
    a = summary["average"]
    writer.writerow(["mean", "", f"{a['fidelity']:.3f}", f"{a['coherence']:.3f}", f"{a['faith']:.3f}",
                     f"{a['best_part_iou']:.3f}" if "best_part_iou" in a else ""])
    return buf.getvalue()
