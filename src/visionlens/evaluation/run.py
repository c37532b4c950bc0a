"""The loop behind ``visionlens evaluate``: models x methods x metrics on a data set, batch by batch,
appended to the folder's results file (:mod:`.store`), then the report card (:mod:`.report`).

Data streams in batches, each within a byte budget (:data:`.data.BATCH_BYTES`) whatever the batch
size asked for. Batches are fixed by image index, so a resumed batch is computed exactly as in an
uninterrupted run. At the end: ``report.csv`` / ``report.json`` (method x metric: mean, 95 % CI,
n), ``index.html`` with example overlays, and ``manifest.json`` (versions, seed, device, timings,
batch sizes, arguments).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .. import metrics as M
from ..checks import SEED_MAX, check_number
from ..core.inference import checked_inference_copy
from ..core.progress import Progress
from ..errors import InputError
from ..io import versions
from ..metrics.faithfulness import curve_length
from ..models.preprocessing import Preprocess
from ..models.zoo import ZOO, ZooModel, imagenet_classes, load_model, resolve_device
from . import data as _data
from . import store as _store
from .explainers import build_explainers, explain_together
from .report import aggregate, save_examples, write_report_card
from .scoring import batch_metrics, joint_curves, joint_names, metric_context


# --- the arguments ----------------------------------------------------------------------------

@contextlib.contextmanager
def _seeded(seed: int):
    """torch's global generators seeded with ``seed`` during the run, the caller's states restored
    after it (the Python API leaves the user's random state as it was)."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
        torch.manual_seed(seed)
        yield


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
    if metrics is not None and not metrics:
        raise InputError("--metrics names no metric; give some (e.g. deletion,insertion), 'all', or leave it out "
                         "for the defaults")
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


@dataclass
class _ModelSource:
    """A model of the command before its turn: its name in the results, what it was loaded from
    (recorded in settings.json), its task and class names, and how to get it (zoo models are
    loaded when their turn comes; specs and modules once, up front, to check them)."""

    name: str
    source: dict
    task: str
    class_names: tuple | None
    loaded: ZooModel | None = None
    weights: str | Path | None = None

    def load(self, device) -> ZooModel:
        if self.loaded is None:
            return load_model(self.name, device=device, weights=self.weights)
        return self.loaded


def _file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _state_sha256(module: torch.nn.Module) -> str:
    """A digest of a module's parameters and buffers (what its results depend on)."""
    h = hashlib.sha256()
    for key, value in module.state_dict().items():
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _preprocess_text(pre) -> object:
    return pre.describe() if hasattr(pre, "describe") else repr(pre)


def _zoo_source(name: str, weights) -> _ModelSource:
    from ..data.world import CLASS_NAMES

    entry = ZOO[name]
    names = imagenet_classes() if entry.task == "imagenet" else tuple(CLASS_NAMES)
    source = {"spec": name, "weights": "zoo" if weights is None else f"sha256:{_file_sha256(weights)}"}
    return _ModelSource(name, source, entry.task, names, None, weights)


def _loaded_source(name: str, model: ZooModel, source: dict) -> _ModelSource:
    for attr in ("mean", "std", "crop"):
        if not hasattr(model.preprocess, attr):
            raise InputError(f"model '{name}': its preprocess has no {attr}; give a visionlens.models.Preprocess "
                             "(resize, crop, mean, std)")
    loaded_from = (getattr(model, "source", None) or {}).get("spec", model.name)
    task = ZOO[loaded_from].task if loaded_from in ZOO else "classifier"  # a zoo model keeps its kind
    model = replace(model, name=name)
    return _ModelSource(name, {**source, "preprocess": _preprocess_text(model.preprocess)}, task,
                        model.class_names, model)


def _spec_source(name: str, spec: str, weights, device) -> _ModelSource:
    """A model spec (``timm:NAME``, ``torchvision:NAME``, ``hf:ID_OR_DIR``), loaded to check it."""
    model = load_model(spec, device=device, weights=weights)
    if weights is not None:
        weights_of = f"sha256:{_file_sha256(weights)}"
    else:
        weights_of = (getattr(model, "source", None) or {}).get("weights", "default")
    return _loaded_source(name, model, {"spec": spec, "weights": weights_of})


def _module_source(name: str | None, module) -> _ModelSource:
    """An ``nn.Module`` (preprocess from its ``preprocess`` attribute, else ImageNet's) or a :class:`ZooModel`."""
    if not isinstance(module, ZooModel):
        pre = getattr(module, "preprocess", None)
        module = load_model(module, preprocess=pre if isinstance(pre, Preprocess) else None,
                            class_names=getattr(module, "class_names", None))
    name = name or module.name
    return _loaded_source(name, module, {"spec": f"module:{type(module.module).__qualname__}",
                                         "weights": f"sha256:{_state_sha256(module.module)}"})


def _model_entries(models) -> list[tuple[str | None, object]]:
    """(name or None, model) per model given: a spec, an ``nn.Module``, a ZooModel, a list of them,
    or a dict from the names to use in the results to them."""
    if isinstance(models, dict):
        return [(str(k), v) for k, v in models.items()]
    if isinstance(models, (str, torch.nn.Module, ZooModel)):
        return [(None, models)]
    return [(None, m) for m in models]


def _resolve_models(models, weights, device) -> list[_ModelSource]:
    """Every model checked (an unknown name or a bad spec is one line, before any work)."""
    entries = _model_entries(models)
    if not entries:
        raise InputError("no model given; use --models NAME[,NAME...] (zoo names or timm:, torchvision:, hf: specs)")
    if weights is not None and len(entries) > 1:
        raise InputError(f"--weights applies to one model, and {len(entries)} are given; evaluate them one at a time")
    found = []
    for name, m in entries:
        if isinstance(m, str) and ":" in m:
            found.append(_spec_source(name or m, m, weights, device))
        elif isinstance(m, str):
            if m not in ZOO:
                raise InputError(f"unknown model '{m}'; choose from: {', '.join(ZOO)}, or a spec timm:NAME, "
                                 "torchvision:NAME (with --weights FILE or pretrained) or hf:ID_OR_DIR")
            found.append(_zoo_source(m, weights) if name is None else
                         _loaded_source(name, load_model(m, device=device, weights=weights),
                                        _zoo_source(m, weights).source))
        elif isinstance(m, (torch.nn.Module, ZooModel)):
            found.append(_module_source(name, m))
        else:
            raise InputError(f"a model must be a name, a spec or an nn.Module, not {type(m).__name__}")
    names = [s.name for s in found]
    twice = [n for n in names if names.count(n) > 1]
    if twice:
        raise InputError(f"two models are named '{twice[0]}'; give each a name of its own (a dict of name -> model)")
    return found


def _label_maps(models: list[_ModelSource], spec: dict, data: str) -> dict[str, list[int] | None]:
    """Per model, the class index of each of the data's classes; the labels are checked to be classes
    of every model (one line naming the first that is not)."""
    maps = {}
    for m in models:
        world_model = m.task.startswith("world")
        if m.task != "classifier" and (spec["kind"] == "world") != world_model:
            raise InputError(f"model '{m.name}' does not fit --data {data}: world models take world data, "
                             "ImageNet models images")
        maps[m.name] = _data.label_map(spec, m.name, m.class_names)
        labels = [lab for _, _, lab in spec.get("items", []) if lab >= 0]
        if m.class_names is None or not labels:
            continue
        top = max(labels if maps[m.name] is None else (maps[m.name][lab] for lab in labels))
        if top >= len(m.class_names):
            where = "labels.csv" if spec["kind"] == "folder" else "the data"
            what = ("an ImageNet-1k class (0-999)" if len(m.class_names) == 1000
                    else f"a class (0-{len(m.class_names) - 1})")
            raise InputError(f"bad --data '{data}': class_index {top} in {where} is not {what} of model '{m.name}'")
    return maps


def _checked_choices(methods: list[str], metrics: list[str] | None, data, n: int | None,
                     data_options: dict) -> tuple[list[str], dict]:
    """The metrics to report and the parsed data, after checking methods and metrics against them."""
    from ..methods import METHODS, SIMILARITY_METHODS
    from ..methods.registry import unknown_method
    from ..pipeline import parse_method

    known = list(METHODS) + [m for m in SIMILARITY_METHODS if m not in METHODS]
    for m in methods:
        if parse_method(m)[0] not in known:
            raise InputError(unknown_method(parse_method(m)[0], known, note=" (sfam: embedding models only)"))
    names = _metric_names(metrics)
    spec = _data.parse_data(data, n=n, **data_options)
    names = _available(names, metrics, spec, spec["name"])
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
    label_maps: dict = field(default_factory=dict)  # model name -> data class position -> model class
    timings: dict = field(default_factory=dict)
    scoring: dict = field(default_factory=dict)
    batches: dict = field(default_factory=dict)
    seed: int = 0
    engine: object = None            # computes the models' batches elsewhere (ray_engine.RayEngine); None: here
    workers: int | None = None       # image-decoding processes (None: chosen from the data and the CPUs)
    scoring_batch: int | None = None # the most images per scoring pass (None: the device's memory bound)
    unreadable: dict = field(default_factory=dict)  # image id -> why it cannot be read (left out)


@dataclass
class _ModelRun:
    """One model's part of the run: its live explainers, batch size, progress and scoring module."""

    name: str
    model: ZooModel
    live: dict                       # method -> explainer, for the methods not skipped
    batch: int                       # images per batch
    bar: Progress
    scorer: torch.nn.Module | None = None
    scoring: int | None = None       # images per scoring forward pass (set with the scorer)


def _skip(run: _Run, model: str, method: str, err: Exception) -> None:
    _store.write_records(run.f, [_store.skipped_record(model, method, err)])


def _start_model(run: _Run, source: _ModelSource, methods: list[str]) -> _ModelRun:
    """The model loaded, its explainers made (those that cannot be are recorded as skipped), and its batch sizes."""
    model, model_name = source.load(run.device), source.name
    todo = [mm for mm in methods if (model.name, mm, "*") not in run.done]
    live, failed = build_explainers(model, todo, run.spec, run.gallery_size, run.compile, task=source.task)
    for mm, err in failed.items():
        _skip(run, model.name, mm, err)
    per_image = _data.image_bytes(model)
    batch = _data.image_batch(run.batch_size, len(run.mine), per_image)
    run.batches[model_name] = {"images": batch, "scoring": _data.scoring_batch(batch, per_image)}
    bar = Progress(len(run.mine) * max(len(live), 1), f"{model_name}", enabled=run.progress)
    return _ModelRun(model_name, model, live, batch, bar)


class _Logits(torch.nn.Module):
    """A model as the metrics score it: its output as one tensor (a Hugging Face ``ModelOutput``'s
    logits, a dict's ``out``; a tensor as it is)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..core.vit import model_output

        return model_output(self.inner(x))


def _scorer(run: _Run, m: _ModelRun, b: _data.Batch) -> torch.nn.Module:
    """The module the metrics' forward passes run (the checked inference copy, or the model itself),
    and the images per scoring pass (``m.scoring``): a bound from the device's free memory, or with
    ``compile`` the compiled graph's one batch size (shared with Score-CAM's masked passes)."""
    x = b.x.to(m.model.device)
    compile_batch = _data.scoring_batch(m.batch, _data.image_bytes(m.model)) if run.compile else None
    if not run.fast_scoring:
        scorer, run.scoring[m.name] = m.model.module, "model itself"
    else:
        scorer, run.scoring[m.name] = checked_inference_copy(m.model.module, x, compile_batch=compile_batch)
    bound = _data.scoring_bound(_Logits(scorer), x, run.scoring_batch, timed=compile_batch is None)
    m.scoring = bound if compile_batch is None else min(bound, compile_batch)
    run.batches[m.name]["scoring"] = m.scoring
    return _Logits(scorer)


class _BatchBar:
    """The progress bar inside one batch: each method's share (its images) moves in parts, one for
    its maps and one per metric, so the bar moves during the scoring, not only between batches."""

    def __init__(self, bar: Progress, n: int, parts: int, methods: list[str]):
        self.bar, self.n, self.parts = bar, n, parts
        self.moved = dict.fromkeys(methods, 0.0)

    def part(self, method: str, count: float = 1.0) -> None:
        step = min(count * self.n / self.parts, self.n - self.moved[method])
        self.moved[method] += step
        self.bar.update(step)

    def finish(self, method: str, total: float | None = None) -> None:
        """The method's share done (``total``: more than this batch, e.g. the rest of the run)."""
        self.bar.update((self.n if total is None else total) - self.moved.pop(method))


def _explain(run: _Run, m: _ModelRun, methods: list[str], b: _data.Batch, start: int, bar: _BatchBar) -> dict:
    """Each method's :class:`ExplainedBatch` of the batch (a method that fails is skipped from here on);
    CAM-family methods share one pass where they can (:func:`.explainers.explain_together`)."""
    explained = _explain_shared(run, m, methods, b, bar)
    for method in (mm for mm in methods if mm not in explained):
        t0 = time.perf_counter()
        try:
            explained[method] = m.live[method](b.x.to(m.model.device), b.labels)
        except Exception as err:  # noqa: BLE001 - reported as skipped, not a crash
            _drop(run, m, method, err, start, bar)
            continue
        run.timings[f"{m.name}/{method}"] = run.timings.get(f"{m.name}/{method}", 0.0) + time.perf_counter() - t0
        bar.part(method)
    return explained


def _explain_shared(run: _Run, m: _ModelRun, methods: list[str], b: _data.Batch, bar: _BatchBar) -> dict:
    """The methods that can share one explaining pass, explained in it (``{}`` if none can, or it fails:
    each method then runs on its own, where a failure skips only that method)."""
    t0 = time.perf_counter()
    try:
        explained = explain_together({mm: m.live[mm] for mm in methods}, b.x.to(m.model.device), b.labels)
    except Exception:  # noqa: BLE001 - explained one by one instead
        return {}
    for method in explained:
        key = f"{m.name}/{method}"
        run.timings[key] = run.timings.get(key, 0.0) + (time.perf_counter() - t0) / len(explained)
        bar.part(method)
    return explained


def _drop(run: _Run, m: _ModelRun, method: str, err: Exception, start: int, bar: _BatchBar) -> None:
    _skip(run, m.name, method, err)
    del m.live[method]
    bar.finish(method, len(run.mine) - start)


def _joint(run: _Run, contexts: dict, bar: _BatchBar) -> dict:
    """Deletion and insertion of every method scored together (:func:`.scoring.joint_curves`), the
    bar moving with each pass; ``{}`` if that fails (each method is then scored on its own)."""
    shares = {mm: len(joint_names(run.metrics, c)) for mm, c in contexts.items()}
    if not any(shares.values()):
        return {}
    n, _, h, w = next(iter(contexts.values())).x.shape
    images = n * (curve_length(h, w, run.step)[1] - 1) * sum(shares.values())

    def on_chunk(count: int) -> None:  # each method's curve metrics move by the share of passes done
        for mm, share in shares.items():
            bar.part(mm, share * count / max(1, images))

    try:
        given = joint_curves(list(contexts.values()), run.metrics, on_chunk)
    except Exception:  # noqa: BLE001 - scored per method below, where a failure skips only that method
        for c in contexts.values():
            c.shared.pop("curves", None)
        return {}
    return dict(zip(contexts, given))


def _score(run: _Run, m: _ModelRun, method: str, b: _data.Batch, res, context, given: dict, start: int,
           bar: _BatchBar) -> None:
    """One method's metrics on the batch (those not ``given``), its new records appended."""
    t0 = time.perf_counter()
    try:
        values = batch_metrics(context, run.metrics, on_metric=lambda _name: bar.part(method), given=given)
    except Exception as err:  # noqa: BLE001 - reported as skipped, not a crash
        _drop(run, m, method, err, start, bar)
        return
    key = f"{m.name}/{method}"
    run.timings[key] = run.timings.get(key, 0.0) + time.perf_counter() - t0
    if run.offset + start < run.examples:  # overlays of the first images of the command
        save_examples(run.out / "examples", m.name, method, b.raw, res.maps, run.offset + start, run.examples,
                      b.positions)
    recs = _store.image_records(m.name, method, b.ids, b.labels, res.predicted, res.extra, values, run.done,
                                curves=context.shared.get("curves"))
    _store.write_records(run.f, recs)
    run.done.update((m.name, method, r["image"]) for r in recs)
    bar.finish(method)


def _missing(run: _Run, m: _ModelRun, start: int) -> tuple[list, dict]:
    """The batch from ``start`` (labels as the model's classes) and, per live method, its images not done."""
    chunk = _data.model_labels(run.mine[start:start + m.batch], run.label_maps.get(m.name))
    return chunk, {mm: [i for i, _, _ in chunk if (m.name, mm, i) not in run.done] for mm in m.live}


def _evaluate_batch(run: _Run, m: _ModelRun, start: int, b: _data.Batch | None = None) -> None:
    """Every live method on the batch of images from ``start`` (``b``: the batch, loaded already),
    where some of its images are not done: all maps first, then deletion and insertion of all
    methods together, then each method's other metrics."""
    chunk, missing = _missing(run, m, start)
    todo = [mm for mm in m.live if missing[mm]]
    m.bar.skip(len(chunk) * (len(m.live) - len(todo)))
    if not todo:
        return
    b = _data.load_batch(run.spec, chunk, m.model, skip_unreadable=True) if b is None else b
    run.unreadable.update(b.unreadable)
    m.bar.skip(len(b.unreadable) * len(todo))
    if not b.ids:
        return
    if m.scorer is None:
        m.scorer = _scorer(run, m, b)
    bar = _BatchBar(m.bar, len(b.ids), 1 + len(run.metrics), todo)
    explained = _explain(run, m, todo, b, start, bar)
    ends_cache: dict = {}
    contexts = {mm: metric_context(m.model, b, res, run.step, m.batch, m.scorer, ends_cache, m.scoring,
                                   seed=run.seed) for mm, res in explained.items()}
    t0 = time.perf_counter()
    given = _joint(run, contexts, bar)
    for mm in contexts:  # the joint passes' time, shared out among the methods
        key = f"{m.name}/{mm}"
        run.timings[key] = run.timings.get(key, 0.0) + (time.perf_counter() - t0) / len(contexts)
    for mm, res in explained.items():
        _score(run, m, mm, b, res, contexts[mm], given.get(mm, {}), start, bar)


def _evaluate_model(run: _Run, source: _ModelSource, methods: list[str]) -> None:
    """Every method not done yet on the model, batch by batch, appended to the results file; the
    batches' images decoded ahead by :func:`.data.prefetched` while the previous ones are scored."""
    m = _start_model(run, source, methods)
    starts = list(range(0, len(run.mine), m.batch))
    todo = [s for s in starts if any(_missing(run, m, s)[1].values())]
    chunks = [_missing(run, m, s)[0] for s in todo]
    workers = _data.loader_workers(run.spec, run.workers, len(todo))
    loaded = iter(_data.prefetched(run.spec, chunks, m.model, workers))
    wanted = set(todo)
    for start in starts:
        _evaluate_batch(run, m, start, next(loaded) if start in wanted else None)


def _manifest(run: _Run, command: dict, names: list[str], t_start: float) -> dict:
    """What the report card was made with: the command, versions, device, timings, batch sizes, metrics."""
    return {"command": command, "scoring": run.scoring, "batches": run.batches,
            "versions": versions(), "device": str(resolve_device(run.device)),
            "seconds_this_run": round(time.perf_counter() - t_start, 2),
            "seconds_per_model_method_this_run": {k: round(v, 2) for k, v in run.timings.items()},
            "metrics": {k: {"direction": v.direction, "category": v.category, "description": v.description}
                        for k, v in M.METRICS.items() if k in names}}


def _check_some_readable(run: _Run) -> None:
    """Stop with one line when no image of the run could be read: a report of no cells helps no one."""
    ids = {i for i, _, _ in run.mine}
    if ids and ids <= set(run.unreadable):
        image, why = min(run.unreadable.items())
        more = f" (and {len(ids) - 1} more)" if len(ids) > 1 else ""
        raise InputError(f"none of the {len(ids)} image(s) of the data could be read: {why}{more}; nothing was written")


def _check_something_scored(run: _Run) -> None:
    """Stop with one line, leaving nothing, when every method was skipped on every model (a bad
    ``METHOD@LAYER``, methods that none of the models can run): a report of no cells helps no one."""
    records = _store.read_folder_results(run.out, warn=False)
    if records and all(r["image"] == "*" for r in records):
        first = records[0]
        more = f" (and {len(records) - 1} more)" if len(records) > 1 else ""
        run.f.truncate(0)  # the run made the file: it goes, with the rest of what it made
        raise InputError(f"nothing to score: every method was skipped; {first['method']} on {first['model']}: "
                         f"{first['skipped']}{more}")


def _run_models(run: _Run, models: list[_ModelSource], methods: list[str], settings: dict, path: Path,
                created: list[Path]) -> None:
    """Every model into the locked results file ``run.f`` at ``path``, after checking ``settings``
    against the folder's; a run that stops before its first result removes what it made (while it
    still holds the lock: no other run has the file open)."""
    fresh = os.fstat(run.f.fileno()).st_size == 0
    try:
        (run.out / "examples").mkdir(exist_ok=True)
        run.done = {(r["model"], r["method"], r["image"]) for r in _store.read_folder_results(run.out)}
        run.metrics = _store.settle_settings(run.out, settings, bool(run.done))
        if run.engine is None:
            for source in models:
                _evaluate_model(run, source, methods)
        else:  # batches computed elsewhere, records written here
            run.engine(run, models, methods)
        _check_some_readable(run)
        if fresh:
            _check_something_scored(run)
    except BaseException:
        if fresh and os.fstat(run.f.fileno()).st_size == 0:
            _store.remove_new_files(run.out, path, created)
        raise


def evaluate(models, methods: list[str], data="world:test", n: int | None = 100, batch_size: int = 16,
             device: str | None = "cpu", out: str | Path = "visionlens-eval", metrics: list[str] | None = None,
             step: int | None = None, seed: int = 0, examples: int = 4, progress: bool = True,
             gallery_size: int = 1000, fast_scoring: bool = True, compile: bool = False,
             shard: str | tuple[int, int] | None = None, weights: str | Path | None = None,
             split: str | None = None, label_column: str | None = None, engine=None,
             decode_workers: int | None = None, scoring_batch: int | None = None) -> dict:
    """Run (or resume) the evaluation and write the report card; returns the report dict (``rows``,
    ``skipped`` methods, ``curves``, and ``unreadable``: the images left out because they cannot be read;
    :class:`InputError`, with nothing written, when none can be).

    ``models``: zoo names and model specs (``timm:NAME``, ``torchvision:NAME``, ``hf:ID_OR_DIR``;
    ``weights``: a state-dict file for the one model given), ``nn.Module`` s (the preprocessing of
    their ``preprocess`` attribute, else ImageNet's) or :class:`ZooModel` s from ``load_model``,
    as a list or as a dict from the names the results use to the models. ``data``: a spec
    (``world[:split]``, ``samples``) or a folder (with labels.csv, an ImageFolder tree, or a
    Hugging Face dataset saved with ``save_to_disk``: ``split`` chooses a DatasetDict's split,
    ``label_column`` the label column), or an iterable of (PIL image or path, label) pairs.

    ``shard="K/N"`` computes only the K-th of N contiguous blocks of the first ``n`` images, into
    the folder's own results file for that shard, so that the N parts can run at the same time
    (processes, or machines whose files are then copied into one folder). The report card always
    covers all first ``n`` images done so far, in every results file of the folder.

    ``engine``: None computes here, in this process; a
    :class:`visionlens.evaluation.ray_engine.RayEngine` spreads the same batches over Ray actors
    (this process still writes the results file, so resuming works the same; docs/scale.md).

    ``decode_workers``: processes that decode the next batches' images while this one computes
    (None: one per spare CPU, up to 4; none for the synthetic world). ``scoring_batch``: the most
    images per forward pass of deletion and insertion, which score every method's curves of a batch
    together (None: a bound from the device's free memory and one probe forward; docs/scale.md).
    Neither changes any value.

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
    seed = check_number("seed", seed, minimum=0, maximum=SEED_MAX, integer=True)
    if decode_workers is not None:
        decode_workers = check_number("--decode-workers", decode_workers, minimum=0, maximum=os.cpu_count() or 1,
                                      integer=True)  # decoding is CPU work: more processes than CPUs only wait
    if scoring_batch is not None:
        scoring_batch = check_number("--scoring-batch", scoring_batch, minimum=1, integer=True)
    methods = list(dict.fromkeys(m for m in methods if m))  # a method named twice is scored once
    if not methods:
        raise InputError("no method given; use --methods NAME[,NAME...] (visionlens methods lists them)")
    names, spec = _checked_choices(methods, metrics, data, n, {"split": split, "label_column": label_column})
    if shard is not None:
        shard = _store.parse_shard(shard if isinstance(shard, str) else f"{shard[0]}/{shard[1]}")
    out = Path(out)
    _store.check_folder(out, shard)
    sources = _resolve_models(models, weights, device)
    label_maps = _label_maps(sources, spec, spec["name"])
    path = out / _store.results_file(shard)
    created = [d for d in (out, out / "examples") if not d.exists()]
    items = _data.data_items(spec, n)
    offset, stop = _store.shard_bounds(len(items), shard)
    t_start = time.perf_counter()
    with _store.open_for_append(path) as f, _seeded(seed):
        run = _Run(out, f, spec, items[offset:stop], offset, names, set(), step, batch_size, examples, device,
                   progress, gallery_size, fast_scoring, compile, label_maps, seed=seed, engine=engine,
                   workers=decode_workers, scoring_batch=scoring_batch)
        settings = _store.run_settings(spec, names, step, seed, gallery_size, {m.name: m.source for m in sources})
        _run_models(run, sources, methods, settings, path, created)
    # the report card covers the images of this command, all shards: a folder that also holds results
    # for more images (an earlier, larger --n) reports the first --n, e.g. a long run's progress so far
    wanted = {i for i, _, _ in items}
    model_names = [m.name for m in sources]
    report = aggregate([r for r in _store.read_folder_results(out, warn=False) if r["image"] == "*" or r["image"] in wanted],
                       model_names, methods, names)
    report["unreadable"] = [{"image": i, "reason": why} for i, why in sorted(run.unreadable.items())]
    command = {"models": model_names, "model_sources": {m.name: m.source for m in sources}, "methods": methods,
               "data": os.fspath(data) if isinstance(data, (str, os.PathLike)) else spec["name"],
               "data_kind": spec["kind"], "split": split, "label_column": label_column, "n": n,
               "batch_size": batch_size, "device": str(device), "metrics": names, "step": step, "seed": seed,
               "gallery_size": gallery_size, "fast_scoring": fast_scoring, "compile": compile,
               "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
               "engine": {"engine": "local"} if engine is None else engine.describe(),
               "decode_workers": decode_workers, "scoring_batch": scoring_batch}
    write_report_card(out, report, _manifest(run, command, names, t_start))
    return report
