"""Concept discovery for several classes with outputs on disk: per class a saved reducer and
concept sheets (Bessel and ICE views), plus ``concepts.json``, ``metrics.csv`` and ``index.html``.
Used by ``visionlens concepts`` and the benchmark."""

from __future__ import annotations

import csv
import io
import json
import time
import warnings
from pathlib import Path

from ..core.layers import model_device, resolve_layer
from ..checks import SEED_MAX, check_number
from ..errors import InputError, VisionlensWarning
from ..metrics.concepts import DEFAULT_COHERENCE, average_scores
from ..io import save_atomic
from ..outputs import check_out_dir, staged_out_dir
from .collect import CALC_LIMIT, collect_rows, layer_and_output
from .discovery import best_part_iou, discover_class
from .factory import make_reducer
from .sheet import concept_sheet, concepts_section_html, fixed, save_sheet, write_concepts_page

MIN_IMAGES = 2  # per class: Coherence compares images (Pearson needs two)
FEW_IMAGES = 3  # below this, Pearson Coherence is always +-100
SCORES = ("fidelity", "coherence", "faith")


def parse_classes(spec: str, available: list[int]) -> list[int]:
    """``all`` or a comma list of indices and ranges (``151-155,207``); each must be in the data."""
    if spec in (None, "", "all"):
        return list(available)
    chosen: list[int] = []
    have = set(available)
    for part in spec.split(","):
        part = part.strip()
        try:
            lo, hi = (int(v) for v in part.split("-", 1)) if "-" in part[1:] else (int(part),) * 2 if part else (0, -1)
        except ValueError:
            raise InputError(f"--classes: '{part}' is not a class index or range (e.g. 0,3 or 151-155)") from None
        if hi - lo >= len(have):  # more classes than the data holds: one line, not a list of a trillion
            raise InputError(f"--classes: the range {part} is wider than the {len(have)} classes of the data")
        chosen += list(range(lo, hi + 1))
    missing = [c for c in chosen if c not in have]
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
    """Discover concepts for ``classes`` and write everything under ``out``; returns the summary.
    Bad input raises before any work. An unreadable photo is left out (``summary["unreadable"]``),
    a class left with fewer than two images is skipped (``summary["skipped"]``). The files appear
    only when the run completes, and replace those of an earlier run in ``out``."""
    out = Path(out)
    net = model.module
    seed = check_number("seed", seed, minimum=0, maximum=SEED_MAX, integer=True)
    if not (layer or model.layer):
        raise InputError(f"--layer: {model.name} has no default concept layer; name a convolutional feature map "
                         f"(its last block, e.g. layer4 of a ResNet; `visionlens layers {model.name}` lists them)")
    name, module = resolve_layer(net, layer or model.layer)
    options = dict(reducer_options or {})
    make_reducer(reducer, n_concepts, **options)  # validate before any work
    if n_images < MIN_IMAGES:
        raise InputError(f"{n_images} image per class is too few: concept discovery needs at least {MIN_IMAGES} "
                         "(Coherence compares images); use --images 2 or more, or --views 2 or more with photos")
    counts, skipped = _readable_classes(source, classes, n_images)
    _check_layer(net, name, module, source, counts, n_concepts)
    earlier = _earlier_files(out)
    check_out_dir(out, _planned_files(list(counts), pooled), own=set(earlier))
    _warn_few_images(counts, coherence)
    started = time.perf_counter()
    with staged_out_dir(out, earlier=earlier) as stage:  # an interrupted run leaves ``out`` as it was
        shared = None
        if pooled:  # one reducer for the whole group of classes, scored per class
            items = [it for c in counts for it in source.items(c, n_images)]
            shared = _fit_pooled(make_reducer(reducer, n_concepts, **options), net, name, module, source, items,
                                 batch_size, max_numel, seed, progress)
            shared.save(_path(stage, "reducers/pooled.pt"))
        results, html_rows = {}, []
        for cls in counts:
            red = shared or make_reducer(reducer, n_concepts, **options)
            found = discover_class(model, name, source, cls, red, n_images=n_images, batch_size=batch_size,
                                   weight_mode=weight_mode, coherence=coherence, max_numel=max_numel,
                                   fit=shared is None, seed=seed, progress=progress)
            results[cls] = _class_result(found, source, stage, threshold, save_reducer=shared is None)
            html_rows.append({"name": f"{cls}: {found.class_name}", "scores": found.scores,
                              "sheets": results[cls]["sheets"]})
        summary = {
            "model": model.name, "model_source": model.describe(), "layer": name, "data": data_name,
            "reducer": reducer, "n_concepts": n_concepts, "reducer_options": options, "weight_mode": weight_mode,
            "coherence": coherence, "pooled": pooled, "images_per_class": n_images, "seed": seed,
            "wall_s": round(time.perf_counter() - started, 1), "average": _average(results),
            "classes": {str(c): r for c, r in results.items()},
            "unreadable": list(getattr(source, "unreadable", [])), "skipped": skipped,
        }
        title = f"visionlens concepts: {model.name} @ {name}, {reducer} (c'={n_concepts}), data {data_name}"
        _write_summary(stage, summary, title, concepts_section_html(f"{reducer} concepts at {name}", html_rows))
    return summary


def _readable_classes(source, classes: list[int], n_images: int) -> tuple[dict[int, int], dict[str, str]]:
    """``({class: readable images}, {class: why it is skipped})``: unreadable photos are left out
    (the source names them), a class with fewer than :data:`MIN_IMAGES` left is skipped. Raises
    :class:`InputError` when no class is left."""
    readable = getattr(source, "readable_items", source.items)
    counts, skipped = {}, {}
    for cls in classes:
        n = len(readable(cls, n_images))
        if n >= MIN_IMAGES:
            counts[cls] = n
        else:
            skipped[str(cls)] = (f"class {cls} ({_class_name(source, cls)}) has {n} readable image(s); concept "
                                 f"discovery needs at least {MIN_IMAGES}")
    if counts:
        return counts, skipped
    bad = list(getattr(source, "unreadable", []))
    if len(skipped) == 1 and not bad:
        raise InputError(next(iter(skipped.values())))
    raise InputError(f"no class has {MIN_IMAGES} readable images"
                     + (f" ({len(bad)} unreadable, the first: {bad[0]})" if bad else ""))


def _class_name(source, cls: int) -> str:
    names = source.class_names
    return names[cls] if names and 0 <= cls < len(names) else f"class {cls}"


def _check_layer(net, name: str, module, source, counts: dict[int, int], n_concepts: int) -> None:
    """Refuse, from one image's forward pass, a layer without a 4-D feature map, fewer channels than
    ``n_concepts``, or a class the model has no output for (it failed after the work)."""
    from ..core.vit import model_output

    x = source.load(source.items(next(iter(counts)), 1))["x"].to(model_device(net))
    act, output = layer_and_output(net, name, module, x)
    channels = act.shape[1]
    if n_concepts > channels:
        raise InputError(f"--n-concepts {n_concepts} is more than the {channels} channels of layer '{name}'; "
                         f"choose at most {channels}")
    out = model_output(output)
    beyond = [c for c in counts if c >= out.shape[-1]]
    if out.dim() == 2 and beyond:
        raise InputError(f"--classes: class(es) {beyond[:5]} of the data are beyond the model's {out.shape[-1]} outputs; "
                         "choose classes the model predicts (or a model trained on these classes)")


def _warn_few_images(counts: dict[int, int], coherence: str) -> None:
    """One warning naming the classes whose Pearson Coherence is degenerate (fewer than 3 images)."""
    few = [str(c) for c, n in counts.items() if n < FEW_IMAGES]
    if few and coherence == "pearson":
        warnings.warn(f"class(es) {', '.join(few[:10])}{' ...' if len(few) > 10 else ''} have fewer than "
                      f"{FEW_IMAGES} images: Pearson Coherence is always +-100 with 2; use --images "
                      f"{FEW_IMAGES} or more, or --coherence agreement", VisionlensWarning, stacklevel=3)


def _fit_pooled(red, net, name: str, module, source, items: list, batch_size: int, max_numel: int, seed: int,
                progress: bool):
    """``red`` fitted on the activations of ``items`` (every chosen class's images)."""
    rows, _ = collect_rows(net, name, module, source, items, batch_size, max_numel, seed, progress,
                           "activations (pooled)")
    red.fit(rows, progress=progress)
    return red


def _path(stage: Path, name: str) -> Path:
    """``stage / name`` with its folder made."""
    dest = stage / name
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest


def _class_result(found, source, stage: Path, threshold: float, save_reducer: bool) -> dict:
    """Save a class's reducer (unless pooled) and sheets under ``stage``; its entry of ``concepts.json``."""
    cls = found.cls
    ious = best_part_iou(found, threshold)
    found.extras["part_iou"] = ious
    if save_reducer:
        found.reducer.save(_path(stage, f"reducers/class_{cls}.pt"))
    sheets = {}
    for view in ("bessel", "ice"):
        sheets[view] = f"sheets/class_{cls}_{view}.png"
        save_sheet(concept_sheet(found, view, threshold=threshold), _path(stage, sheets[view]))
    return {
        "name": found.class_name, "images": len(found.items), "scores": found.scores,
        "weights": found.weights.tolist(), "ranking": found.ranking, "prototypes": found.prototypes,
        "rows_seen": found.rows_seen, "rows_used": found.rows_used, "sheets": sheets,
        "part_iou": ious, "part_names": ([source.part_names[p] for p in ious["part"]] if ious else None),
    }


def _average(results: dict) -> dict:
    """Mean scores over classes, with the mean best-part IoU and its random baseline when known."""
    average = average_scores({c: r["scores"] for c, r in results.items()})
    ious = [v for r in results.values() if r["part_iou"] for v in r["part_iou"]["iou"]]
    if ious:
        rand = [v for r in results.values() if r["part_iou"] for v in r["part_iou"]["random_iou"]]
        average["best_part_iou"] = sum(ious) / len(ious)
        average["random_iou"] = sum(rand) / len(rand)
    return average


def _write_summary(stage: Path, summary: dict, title: str, section: str) -> None:
    _write_text(stage / "concepts.json", json.dumps(summary, indent=2))
    _write_text(stage / "metrics.csv", _metrics_csv(summary))
    write_concepts_page(stage / "index.html", title, [section])


def _earlier_files(out: Path) -> list[str]:
    """The files an earlier run wrote in ``out``, from its ``concepts.json`` (none without one)."""
    try:
        record = json.loads((out / "concepts.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not (isinstance(record, dict) and "reducer" in record and isinstance(record.get("classes"), dict)):
        return []
    classes = [int(c) for c in record["classes"] if c.isascii() and c.isdigit()]
    return _planned_files(classes, record.get("pooled") is True)


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
        writer.writerow([cls, r["name"], *(fixed(r["scores"][k], 3) for k in SCORES),
                         fixed(sum(iou) / len(iou), 3) if iou else ""])
    a = summary["average"]
    writer.writerow(["mean", "", *(fixed(a[k], 3) for k in SCORES),
                     fixed(a["best_part_iou"], 3) if "best_part_iou" in a else ""])
    return buf.getvalue()
