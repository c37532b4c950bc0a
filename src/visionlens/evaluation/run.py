"""The loop behind ``visionlens evaluate``: models x methods x metrics on a data set, batch by batch,
appended to the folder's results file (:mod:`.store`), then the report card (:mod:`.report`).

Data streams in batches, each within a byte budget (:data:`.data.BATCH_BYTES`) whatever the batch
size asked for. Batches are fixed by image index, so a resumed batch is computed exactly as in an
uninterrupted run. At the end: ``report.csv`` / ``report.json`` (method x metric: mean, 95 % CI,
n), ``index.html`` with example overlays, and ``manifest.json`` (versions, seed, device, timings,
batch sizes, arguments).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import metrics as M
from ..checks import check_number
from ..core.inference import checked_inference_copy
from ..core.progress import Progress
from ..errors import InputError
from ..io import versions
from ..models.zoo import ZOO, ZooModel, load_model, resolve_device
from . import data as _data
from . import store as _store
from .explainers import build_explainers
from .report import aggregate, save_examples, write_report_card
from .scoring import batch_metrics, metric_context


# --- the arguments ----------------------------------------------------------------------------

def _checked_numbers(n, batch_size, step, gallery_size, examples) -> tuple:
    """The numeric arguments as integers, each checked (one :class:`InputError` line naming the flag)."""
    if n is not None:
        n = check_number("--n", n, minimum=1, integer=True)
    batch_size = check_number("--batch-size", batch_size, minimum=1, integer=True)
    if step is not None:
        step = check_number("--step", step, integer=True)
        if step < 1:
            raise InputError(f"--step must be at least 1 pixel (got {step}); leave it out for RISE's step, the image width")
    gallery_size = check_number("--gallery-size", gallery_size, minimum=1, integer=True)
    examples = check_number("examples", examples, minimum=0, integer=True)
    return n, batch_size, step, gallery_size, examples


def _metric_names(metrics: list[str] | None) -> list[str]:
    """The metrics named (``all``: every one; none: the defaults), each checked to be known."""
    names = list(M.default_metrics() if not metrics else (list(M.METRICS) if metrics == ["all"] else metrics))
    for m in names:
        M.get_metric(m)
    return names


def _available(names: list[str], metrics: list[str] | None, spec: dict, data: str) -> list[str]:
    """The metrics of ``names`` that ``spec`` has the ground truth for; one named that needs what
    the data lacks is refused."""
    available = _data.ground_truth(spec)
    if metrics and metrics != ["all"]:  # asked for by name: say why one cannot be computed here
        for m in names:
            lacking = [need for need in M.METRICS[m].needs if need not in available]
            if lacking:
                raise InputError(f"metric '{m}' needs object {lacking[0]}, which --data {data} does not have "
                                 "(--data world has masks and boxes)")
    return [m for m in names if set(M.METRICS[m].needs) <= available]


def _check_models_fit(models: list[str], spec: dict, data: str) -> None:
    """Every model takes the data: world models world data, ImageNet models images of its classes."""
    top = max(label for _, _, label in spec["items"]) if spec["kind"] == "folder" else -1
    for m in models:
        world_model = ZOO[m].task.startswith("world")
        if (spec["kind"] == "world") != world_model:
            raise InputError(f"model '{m}' does not fit --data {data}: world models take world data, ImageNet models images")
        if ZOO[m].task == "imagenet" and top >= 1000:
            raise InputError(f"bad --data '{data}': class_index {top} in labels.csv is not an ImageNet-1k class "
                             f"(0-999) of model '{m}'")


def _checked_choices(models: list[str], methods: list[str], metrics: list[str] | None,
                     data: str) -> tuple[list[str], dict]:
    """The metrics to report and the parsed data, after checking models, methods and metrics against them."""
    from ..methods import METHODS, SIMILARITY_METHODS
    from ..pipeline import parse_method

    for m in models:
        if m not in ZOO:
            raise InputError(f"unknown model '{m}'; choose from: {', '.join(ZOO)}")
    known = list(METHODS) + [m for m in SIMILARITY_METHODS if m not in METHODS]
    for m in methods:
        if parse_method(m)[0] not in known:
            raise InputError(f"unknown method '{m}'; choose from: {', '.join(known)} (sfam: embedding models only)")
    names = _metric_names(metrics)
    spec = _data.parse_data(data)
    names = _available(names, metrics, spec, data)
    _check_models_fit(models, spec, data)
    return names, spec


# --- the loop ---------------------------------------------------------------------------------

@dataclass
class _Run:
    """What the models of one command share: where results go and which images are this run's."""

    out: Path
    f: object                        # the locked results file
    spec: dict
    mine: list                       # (image id, source, label) of this run's images
    offset: int                      # index of mine[0] among the command's images
    metrics: list[str]               # computed for every new record (the folder's list)
    done: set
    step: int | None
    batch_size: int
    examples: int
    device: str | None
    progress: bool
    gallery_size: int
    fast_scoring: bool
    compile: bool
    timings: dict = field(default_factory=dict)
    scoring: dict = field(default_factory=dict)
    batches: dict = field(default_factory=dict)


@dataclass
class _ModelRun:
    """One model's part of the run: its live explainers, batch size, progress and scoring module."""

    name: str
    model: ZooModel
    live: dict                       # method -> explainer, for the methods not skipped
    batch: int                       # images per batch
    bar: Progress
    scorer: torch.nn.Module | None = None


def _skip(run: _Run, model: str, method: str, err: Exception) -> None:
    _store.write_records(run.f, [_store.skipped_record(model, method, err)])


def _start_model(run: _Run, model_name: str, methods: list[str]) -> _ModelRun:
    """The model loaded, its explainers made (those that cannot be are recorded as skipped), and its batch sizes."""
    model = load_model(model_name, device=run.device)
    todo = [mm for mm in methods if (model.name, mm, "*") not in run.done]
    live, failed = build_explainers(model, todo, run.spec, run.gallery_size, run.compile)
    for mm, err in failed.items():
        _skip(run, model.name, mm, err)
    per_image = _data.image_bytes(model)
    batch = _data.image_batch(run.batch_size, len(run.mine), per_image)
    run.batches[model_name] = {"images": batch, "scoring": _data.scoring_batch(batch, per_image)}
    bar = Progress(len(run.mine) * max(len(live), 1), f"{model_name}", enabled=run.progress)
    return _ModelRun(model_name, model, live, batch, bar)


def _scorer(run: _Run, m: _ModelRun, b: _data.Batch) -> torch.nn.Module:
    """The module the metrics' forward passes run (the checked inference copy, or the model itself)."""
    if not run.fast_scoring:
        scorer, run.scoring[m.name] = m.model.module, "model itself"
        return scorer
    per_image = _data.image_bytes(m.model)
    compile_batch = _data.scoring_batch(m.batch, per_image) if run.compile else None
    scorer, run.scoring[m.name] = checked_inference_copy(m.model.module, b.x.to(m.model.device),
                                                         compile_batch=compile_batch)
    return scorer


def _evaluate_method(run: _Run, m: _ModelRun, method: str, b: _data.Batch, start: int, ends_cache: dict) -> None:
    """One method on one batch: explained, scored, its new records appended (or the method skipped from here on)."""
    t0 = time.perf_counter()
    try:
        res = m.live[method](b.x.to(m.model.device), b.labels)
        context = metric_context(m.model, b, res, run.step, m.batch, m.scorer, ends_cache)
        values = batch_metrics(context, run.metrics)
    except Exception as err:  # noqa: BLE001 - reported as skipped, not a crash
        _skip(run, m.name, method, err)
        del m.live[method]
        m.bar.update(len(run.mine) - start)
        return
    key = f"{m.name}/{method}"
    run.timings[key] = run.timings.get(key, 0.0) + time.perf_counter() - t0
    if run.offset + start < run.examples:  # overlays of the first images of the command
        save_examples(run.out / "examples", m.name, method, b.raw, res.maps, run.offset + start, run.examples)
    recs = _store.image_records(m.name, method, b.ids, b.labels, res.predicted, res.extra, values, run.done)
    _store.write_records(run.f, recs)
    run.done.update((m.name, method, r["image"]) for r in recs)
    m.bar.update(len(b.ids))


def _evaluate_batch(run: _Run, m: _ModelRun, start: int) -> None:
    """Every live method on the batch of images from ``start``, where some of its images are not done."""
    chunk = run.mine[start:start + m.batch]
    missing = {mm: [i for i, _, _ in chunk if (m.name, mm, i) not in run.done] for mm in m.live}
    if not any(missing.values()):
        m.bar.skip(len(chunk) * len(m.live))
        return
    b = _data.load_batch(run.spec, chunk, m.model)
    ends_cache: dict = {}
    if m.scorer is None:
        m.scorer = _scorer(run, m, b)
    for mm in list(m.live):
        if not missing[mm]:
            m.bar.skip(len(chunk))
            continue
        _evaluate_method(run, m, mm, b, start, ends_cache)


def _evaluate_model(run: _Run, model_name: str, methods: list[str]) -> None:
    """Every method not done yet on ``model_name``, batch by batch, appended to the results file."""
    m = _start_model(run, model_name, methods)
    for start in range(0, len(run.mine), m.batch):
        _evaluate_batch(run, m, start)


def _manifest(run: _Run, command: dict, names: list[str], t_start: float) -> dict:
    """What the report card was made with: the command, versions, device, timings, batch sizes, metrics."""
    return {"command": command, "scoring": run.scoring, "batches": run.batches,
            "versions": versions(), "device": str(resolve_device(run.device)),
            "seconds_this_run": round(time.perf_counter() - t_start, 2),
            "seconds_per_model_method_this_run": {k: round(v, 2) for k, v in run.timings.items()},
            "metrics": {k: {"direction": v.direction, "category": v.category, "description": v.description}
                        for k, v in M.METRICS.items() if k in names}}


def _run_models(run: _Run, models: list[str], methods: list[str], settings: dict, path: Path,
                created: list[Path]) -> None:
    """Every model into the locked results file ``run.f`` at ``path``, after checking ``settings``
    against the folder's; a run that stops before its first result removes what it made (while it
    still holds the lock: no other run has the file open)."""
    fresh = os.fstat(run.f.fileno()).st_size == 0
    try:
        (run.out / "examples").mkdir(exist_ok=True)
        run.done = {(r["model"], r["method"], r["image"]) for r in _store.read_folder_results(run.out)}
        run.metrics = _store.settle_settings(run.out, settings, bool(run.done))
        for model_name in models:
            _evaluate_model(run, model_name, methods)
    except BaseException:
        if fresh and os.fstat(run.f.fileno()).st_size == 0:
            _store.remove_new_files(run.out, path, created)
        raise


def evaluate(models: list[str], methods: list[str], data: str = "world:test", n: int | None = 100, batch_size: int = 16,
             device: str | None = "cpu", out: str | Path = "visionlens-eval", metrics: list[str] | None = None,
             step: int | None = None, seed: int = 0, examples: int = 4, progress: bool = True,
             gallery_size: int = 1000, fast_scoring: bool = True, compile: bool = False,
             shard: str | tuple[int, int] | None = None) -> dict:
    """Run (or resume) the evaluation and write the report card; returns the report dict.

    ``shard="K/N"`` computes only the K-th of N contiguous blocks of the first ``n`` images, into
    the folder's own results file for that shard, so that the N parts can run at the same time
    (processes, or machines whose files are then copied into one folder). The report card always
    covers all first ``n`` images done so far, in every results file of the folder.

    Embedding models (spec 7.6) are scored through a confidence instead of a softmax: methods for
    similarity (SFAM, Grad-CAM and Relevance-CAM on the similarity) explain each image's
    similarity to its nearest neighbour in a gallery (the first ``gallery_size`` training images),
    scored by the clamped cosine to that reference; class-free flow methods (DAAM with a k-NN bank,
    rollout) use the k-NN vote mass of the predicted class over the same gallery.

    With ``fast_scoring`` the forward passes of deletion, insertion and Average Drop run on a
    BatchNorm-folded, channels-last copy of the model (:mod:`visionlens.core.inference`), used only
    if it matches the model on the first batch; the manifest says which one scored. ``compile``
    also compiles that copy (``torch.compile``, one fixed batch size) for the metrics and for the
    masked passes of methods that take it (Score-CAM): a minute or so of compiling per model,
    then about 1.4-1.5x faster scoring on this project's CPU (docs/benchmarks.md)."""
    n, batch_size, step, gallery_size, examples = _checked_numbers(n, batch_size, step, gallery_size, examples)
    names, spec = _checked_choices(models, methods, metrics, data)
    if shard is not None:
        shard = _store.parse_shard(shard if isinstance(shard, str) else f"{shard[0]}/{shard[1]}")
    out = Path(out)
    path = out / _store.results_file(shard)
    created = [d for d in (out, out / "examples") if not d.exists()]
    items = _data.data_items(spec, n)
    offset, stop = _store.shard_bounds(len(items), shard)
    torch.manual_seed(seed)
    t_start = time.perf_counter()
    with _store.open_for_append(path) as f:
        run = _Run(out, f, spec, items[offset:stop], offset, names, set(), step, batch_size, examples, device,
                   progress, gallery_size, fast_scoring, compile)
        settings = _store.run_settings(spec, names, step, seed, gallery_size)
        _run_models(run, models, methods, settings, path, created)
    # the report card covers the images of this command, all shards: a folder that also holds results
    # for more images (an earlier, larger --n) reports the first --n, e.g. a long run's progress so far
    wanted = {i for i, _, _ in items}
    report = aggregate([r for r in _store.read_folder_results(out, warn=False) if r["image"] == "*" or r["image"] in wanted],
                       models, methods, names)
    command = {"models": models, "methods": methods, "data": data, "n": n, "batch_size": batch_size,
               "device": str(device), "metrics": names, "step": step, "seed": seed, "gallery_size": gallery_size,
               "fast_scoring": fast_scoring, "compile": compile,
               "shard": None if shard is None else f"{shard[0]}/{shard[1]}"}
    write_report_card(out, report, _manifest(run, command, names, t_start))
    return report
