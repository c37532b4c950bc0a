"""The one data path: images -> preprocessing -> model + hooks -> target -> map -> outputs.

:func:`explain` is the one-call Python API; :func:`explain_files` is what the CLI runs: it writes,
per image, the model's view, one overlay per method and the raw maps, then a JSON summary and an
HTML page. Images that fail are listed in the summary and leave no files behind.
"""

from __future__ import annotations

import errno
import sys
from contextlib import contextmanager
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .core.layers import model_device
from .core.progress import Progress
from .core.result import Explanation
from .core.targets import Target
from .checks import check_number
from .data.images import as_rgb, load_image, require_readable
from .errors import FlatMapWarning, ImageLoadError, InputError, VisionlensError, VisionlensWarning, display
from .methods import METHODS
from .methods.base import PerturbationMethod
from .methods.registry import unknown_method
from .models.zoo import ZooModel, load_model, resolve_device
from .viz.flow import flow_strip, save_flow_gif
from .viz.overlay import overlay
from .io import save_atomic, versions, write_json
from .outputs import check_out_dir, earlier_outputs, file_names, safe_name, staged_out_dir, unique_stems
from .viz.colormaps import check_cmap
from .viz.labels import method_heading, signed_method, true_label
from .viz.report import write_report


def parse_method(spec: str) -> tuple[str, str | None]:
    """``"relevance-cam@features.13"`` -> ``("relevance-cam", "features.13")``; ``"gradcam"`` -> ``("gradcam", None)``."""
    name, at, layer = spec.partition("@")
    if at and not layer.strip():
        raise InputError(f"method '{spec}' names no layer after '@'; write METHOD@LAYER (e.g. gradcam@features.13) "
                         "or the method alone")
    return name.strip(), layer.strip() or None


def make_method(name: str, model: ZooModel, layer=None, bank=None, max_iter: int | None = None,
                damp: float | None = None):
    """Instantiate method ``name`` on ``model`` at ``layer`` (the model's default when None).

    ``name`` may carry its own layer, ``METHOD@LAYER`` (e.g. ``relevance-cam@features.13``), which
    takes precedence over ``layer``. Methods that use every block (``daam``, ``rollout``) take only
    their own ``@LAYER``; ``bank`` (a k-NN memory bank or its file) goes to methods that use one,
    ``max_iter`` and ``damp`` to methods with an iterative solve (NAFlow)."""
    name, own_layer = parse_method(name)
    if name not in METHODS:
        raise InputError(unknown_method(name, METHODS))
    cls = METHODS[name]
    solver = {"max_iter": max_iter, "damp": damp}
    options = {k: v for k, v in solver.items() if v is not None} if getattr(cls, "iterative", False) else {}
    if not getattr(cls, "uses_layer", True):
        if getattr(cls, "uses_bank", False):
            options["bank"] = bank
        return cls(model.module, own_layer, **options)
    layer = own_layer if own_layer is not None else layer
    return cls(model.module, layer if layer is not None else model.layer, **options)


def _as_batch(inputs, model: ZooModel) -> torch.Tensor:
    if torch.is_tensor(inputs):
        return inputs
    items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    if not items:
        raise InputError("no images given")
    tensors = []
    for item in items:  # an opened image gets what a file gets: EXIF rotation, 16-bit and float ranges
        img = as_rgb(item) if isinstance(item, Image.Image) else load_image(item)
        tensors.append(model.preprocess(img))
    return torch.stack(tensors)


def explain(
    inputs,
    model: str | ZooModel | torch.nn.Module = "mobilenet_v2",
    method: str = "gradcam",
    layer=None,
    target: Target = None,
    device: str | None = None,
    bank=None,
    batch_size: int = 32,
) -> Explanation:
    """Explain images (paths, PIL images, or a preprocessed ``(B, C, H, W)`` tensor) with one call.

    >>> exp = visionlens.explain(["cat.jpg"], model="mobilenet_v2", method="gradcam")
    >>> exp.maps.shape  # (1, 224, 224), values in [0, 1]

    Images go through the model ``batch_size`` at a time (memory stays bounded however many are
    given; a callable target, or targets that are not one per image, take them all at once).
    ``device``: where to run; a model given as a module or :class:`ZooModel` is moved there for
    the call and back afterwards.
    """
    if isinstance(inputs, (ZooModel, torch.nn.Module)):
        raise InputError("explain() takes the images first and the model second: explain(images, model, method)")
    batch_size = check_number("batch_size", batch_size, minimum=1, integer=True)
    if not isinstance(model, ZooModel):
        model = load_model(model, device=device or "cpu") if isinstance(model, str) else load_model(model)
    x = _as_batch(inputs, model)
    with _on_device(model.module, device):
        explainer = make_method(method, model, layer, bank)
        return Explanation.cat([explainer(part, t) for part, t in _chunks(x, target, batch_size)])


def _chunks(x: torch.Tensor, target, batch_size: int) -> list[tuple[torch.Tensor, object]]:
    """``(images, target)`` per run of at most ``batch_size`` images; one run for all where the
    target cannot be split per image (a callable, or a sequence that is not one entry per image)."""
    n = len(x)
    starts = range(0, n, batch_size)
    if n <= batch_size or callable(target):
        return [(x, target)]
    if target is None or isinstance(target, int):
        return [(x[i:i + batch_size], target) for i in starts]
    rows = target if torch.is_tensor(target) else list(target)
    if len(rows) != n:
        return [(x, target)]
    return [(x[i:i + batch_size], rows[i:i + batch_size]) for i in starts]


@contextmanager
def _on_device(module: torch.nn.Module, device):
    """``module`` on ``device`` during the block, back where it was after it (None: where it is)."""
    if device is None:
        yield
        return
    wanted, before = resolve_device(device), model_device(module)
    if (before.type, before.index or 0) == (wanted.type, wanted.index or 0):
        yield
        return
    module.to(wanted)
    try:
        yield
    finally:
        module.to(before)


def output_files(stem: str, methods: Sequence[str], flow_methods: Sequence[str] = ()) -> dict:
    """The names of one image's outputs: its view, an overlay per method, the raw maps and, for
    methods with a flow, a strip and a GIF."""
    files = {"view": f"{stem}.png", "overlays": {m: f"{stem}.{safe_name(m)}.png" for m in methods}, "maps": f"{stem}.npz"}
    if flow_methods:
        files["flows"] = {m: f"{stem}.{safe_name(m)}.flow.png" for m in flow_methods}
        files["gifs"] = {m: f"{stem}.{safe_name(m)}.gif" for m in flow_methods}
    return files


def _write_image_outputs(out_dir: Path, stem: str, view: Image.Image, maps: dict, raws: dict, flows: dict | None = None,
                         look: dict | None = None) -> dict:
    """Write view, overlays, flow strips and GIFs (methods with a flow) and npz for one image; on
    failure remove whatever was written. ``look``: ``{"cmap", "signed"}`` (signed maps are drawn
    from their raw map on a diverging colormap)."""
    flows = flows or {}
    cmap, signed = (look or {}).get("cmap"), (look or {}).get("signed", ())
    files = output_files(stem, list(maps), list(flows))
    written: list[Path] = []
    try:
        for m, flow in flows.items():
            save_atomic(lambda t, f=flow: flow_strip(view, f, cmap=cmap).save(t, format="PNG"), out_dir / files["flows"][m])
            written.append(out_dir / files["flows"][m])
            save_flow_gif(view, flow, out_dir / files["gifs"][m], cmap=cmap)
            written.append(out_dir / files["gifs"][m])
        save_atomic(lambda t: view.save(t, format="PNG"), out_dir / files["view"])
        written.append(out_dir / files["view"])
        for m, sal in maps.items():
            dest = out_dir / files["overlays"][m]
            shown = raws[m] if m in signed else sal
            save_atomic(lambda t, s=shown, sg=m in signed: overlay(view, s, cmap=cmap, signed=sg).save(t, format="PNG"), dest)
            written.append(dest)
        arrays = {f"{m}_map": maps[m] for m in maps} | {f"{m}_raw": raws[m] for m in raws} | {f"{m}_flow": flows[m] for m in flows}

        def write_npz(tmp):
            with open(tmp, "wb") as f:
                np.savez_compressed(f, **arrays)

        save_atomic(write_npz, out_dir / files["maps"])
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    return files


def explain_files(
    paths: Sequence[str | Path],
    model: ZooModel,
    methods: Sequence[str] = ("gradcam",),
    layer=None,
    target: int | Sequence[int] | None = None,
    out_dir: str | Path = "visionlens-out",
    batch_size: int = 16,
    progress: bool = True,
    title: str | None = None,
    bank=None,
    cmap: str | None = None,
    max_iter: int | None = None,
    damp: float | None = None,
) -> dict:
    """Explain image files and write outputs to ``out_dir``; return the summary (also written as
    ``summary.json``). A method may be ``METHOD@LAYER`` to use its own layer instead of ``layer``
    (its outputs are then keyed by that whole string). ``target``: a class for every image, or a
    list of classes: one map per method and class, keyed ``METHOD:CLASS`` (the gradient methods
    compute all classes from one forward and one batched backward pass). Bad layers, methods, targets and output
    folders raise before anything is written; an image that cannot be read, or whose map is not
    finite, is recorded in ``summary["failures"]`` (one line on stderr) and the rest still run.
    Output names never collide and never replace an input (see :mod:`visionlens.outputs`).
    ``cmap``: the colormap of the overlays (default viridis; signed maps use a diverging one)."""
    out, methods, paths = Path(out_dir), list(dict.fromkeys(methods)), list(paths)  # a method named twice runs once
    if not methods:
        raise InputError("no method given; choose from: " + ", ".join(METHODS))
    if not paths:
        raise InputError("no images given")
    classes = _class_list(target)
    cmap = check_cmap(cmap) if cmap is not None else None
    require_readable(paths)
    explainers = {m: make_method(m, model, layer, bank, max_iter, damp) for m in methods}
    probe = torch.zeros(1, 3, model.preprocess.crop, model.preprocess.crop)
    with warnings.catch_warnings():  # a blank probe's flat or unconverged maps say nothing of the images
        warnings.simplefilter("ignore", VisionlensWarning)
        # a bad layer or target fails here; a method with a cheap ``probe`` (NAFlow: no solve) checks with it
        probes = explain_classes({m: getattr(ex, "probe", ex) for m, ex in explainers.items()}, probe, classes)
    if classes is None and bank is None:
        _check_class_outputs(model, next(iter(probes.values())))
    keys = list(probes)
    flow_methods = [name for name, r in probes.items() if r.flow is not None]
    names_of = lambda stem: file_names(output_files(stem, keys, flow_methods))  # noqa: E731
    stems = unique_stems(paths, names_of, taken=paths, out=out)
    check_out_dir(out, [n for stem in stems for n in names_of(stem)] + ["summary.json", "index.html"])
    slow = any(isinstance(ex, PerturbationMethod) for ex in explainers.values())
    if slow:  # thousands of passes per image already: one image at a time costs nothing and shows progress
        batch_size = 1
    with staged_out_dir(out, earlier=earlier_outputs(out, paths)) as stage:  # an interrupted run leaves ``out`` as it was
        look = {"cmap": cmap, "signed": {k for k in keys if signed_method(k)}}
        bar = Progress(len(paths), label=model.name, enabled=progress and (len(paths) > 3 or slow))
        rows, failures = _explain_in_batches(paths, stems, model, explainers, classes, stage, batch_size, bar, look)
        summary = {
            "model": model.name,
            "model_source": model.describe(),
            "methods": methods,
            "maps": keys,
            "layer": {name: r.layer for name, r in probes.items()},
            "target": "predicted" if classes is None else (classes[0] if len(classes) == 1 else classes),
            "device": str(model.device),
            "versions": versions(),
            "images": rows,
            "failures": failures,
        }
        write_json(summary, stage / "summary.json")
        write_report(stage / "index.html", title or f"visionlens: {model.name}", [report_section(summary, "", cmap)])
    return summary


def _check_class_outputs(model: ZooModel, probe: Explanation) -> None:
    """Refuse, before any work, to name a "predicted class" from an output that is not one score per
    class of the model (an embedding: world-metric's 64 values against its 10 classes)."""
    logits = probe.logits
    if model.class_names is None or probe.targets is None or not torch.is_tensor(logits) or logits.dim() != 2:
        return
    if logits.shape[1] != len(model.class_names):
        raise InputError(f"{model.name} outputs {logits.shape[1]} values, not one score per class of its "
                         f"{len(model.class_names)} classes (an embedding?): there is no predicted class to explain; "
                         "explain what makes two images similar with `visionlens explain-pair` (SFAM), or give "
                         "--target N to explain output N")


def _class_list(target) -> list[int] | None:
    if target is None:
        return None
    classes = [target] if isinstance(target, int) else list(target)
    if not classes or len(set(classes)) != len(classes):
        raise InputError(f"give one or more different target classes, got {target!r}")
    return classes


def explain_classes(explainers: dict, x: torch.Tensor, classes: list[int] | None) -> dict:
    """``{key: Explanation}``: per method (key ``METHOD``) for the predicted class or one class,
    or per method and class (key ``METHOD:CLASS``) for several. A method that explains several
    classes at once (``multi_target``) gets them all in one call."""
    if classes is None or len(classes) == 1:
        target = None if classes is None else classes[0]
        return {m: ex(x, target) for m, ex in explainers.items()}
    results = {}
    for m, ex in explainers.items():
        if getattr(ex, "multi_target", False):
            both = ex(x, torch.tensor(classes).expand(x.shape[0], -1))
            results |= {f"{m}:{c}": _one_class(both, k) for k, c in enumerate(classes)}
        else:
            results |= {f"{m}:{c}": ex(x, c) for c in classes}
    return results


def _one_class(result: Explanation, k: int) -> Explanation:
    """Class ``k`` of a result for several classes per image (maps ``(B, K, H, W)``)."""
    pick = lambda t: t[:, k] if t is not None and t.dim() >= 2 else t  # noqa: E731
    return replace(result, maps=result.maps[:, k], raw=result.raw[:, k], targets=pick(result.targets),
                   scores=pick(result.scores))


def _load_views(chunk, model: ZooModel, failures: list, bar: Progress):
    """The model's views of a chunk's images; an unreadable image is a failure line, skipped."""
    views, kept = [], []
    for path, stem in chunk:
        try:
            views.append(model.preprocess.view(load_image(path)))
        except ImageLoadError as err:
            _fail(failures, path, str(err), bar)
            continue
        kept.append((path, stem))
    return views, kept


def _fail(failures: list, path, message: str, bar: Progress) -> None:
    failures.append({"file": str(path), "error": message})
    print(f"error: {message}", file=sys.stderr)
    bar.update()


def _not_finite(results: dict, i: int) -> str | None:
    """The first method whose map of image ``i`` holds NaN or infinite values."""
    for m, r in results.items():
        if not (bool(torch.isfinite(r.raw[i]).all()) and bool(torch.isfinite(r.maps[i]).all())):
            return m
    return None


DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EROFS}  # errors of the output folder, not of one image


def _explain_in_batches(paths, stems, model, explainers, classes, out: Path, batch_size: int, bar: Progress,
                        look: dict | None = None):
    rows, failures = [], []
    for start in range(0, len(paths), batch_size):
        chunk = list(zip(paths[start:start + batch_size], stems[start:start + batch_size]))
        views, kept = _load_views(chunk, model, failures, bar)
        if not kept:
            continue
        x = torch.stack([model.preprocess.normalize(v) for v in views])
        with naming_flat_maps([display(path) for path, _ in kept]):
            results = explain_classes(explainers, x, classes)
        for i, (path, stem) in enumerate(kept):
            bad = _not_finite(results, i)
            if bad is not None:
                _fail(failures, path, f"{display(path)}: the {bad} map holds NaN or infinite values (check the model's "
                                      "weights and the image)", bar)
                continue
            try:
                files = _write_image_outputs(out, stem, views[i], *_image_arrays(results, i), look=look)
            except (OSError, VisionlensError) as err:
                if isinstance(err, OSError) and err.errno in DISK_FULL:  # every later image would fail the same way
                    raise
                _fail(failures, path, f"{display(path)}: could not write outputs ({err})", bar)
                continue
            rows.append({"file": str(path), **files, **_prediction_record(model, results, i)})
            bar.update()
    return rows, failures


@contextmanager
def naming_flat_maps(names: list[str]):
    """Re-issue a :class:`~visionlens.errors.FlatMapWarning` raised in the block with the names of
    the batch's images whose maps are flat in front ("a.jpg, b.jpg: all-zero maps ..."), so that a
    command's ``warning:`` line says which images it means; other warnings pass unchanged."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FlatMapWarning)  # other warnings keep their filters (once per place)
        yield
    for w in caught:
        if issubclass(w.category, FlatMapWarning) and names:
            flat = getattr(w.message, "images", None)
            which = [names[i] for i in flat if i < len(names)] if flat is not None else names
            warnings.warn(FlatMapWarning(f"{', '.join(which)}: {w.message}"), stacklevel=3)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _image_arrays(results: dict, i: int) -> tuple[dict, dict, dict]:
    maps = {m: r.maps[i].cpu().numpy() for m, r in results.items()}
    raws = {m: r.raw[i].cpu().numpy() for m, r in results.items()}
    flows = {m: r.flow[i].cpu().numpy() for m, r in results.items() if r.flow is not None}
    return maps, raws, flows


def _prediction_record(model: ZooModel, results: dict, i: int) -> dict:
    scores = {m: float(r.scores[i]) for m, r in results.items()}
    labelled = [r for r in results.values() if r.targets is not None]  # rollout on an embedding names no class
    if not labelled:
        return {"predicted": None, "predicted_name": None, "probability": None, "target": None, "target_name": None,
                "target_probability": None, "scores": scores}
    first = labelled[0]
    probs = first.probabilities[i].cpu()
    pred = int(first.predictions[i])
    targets = list(dict.fromkeys(int(r.targets[i]) for r in labelled))  # the classes explained, in order
    shown = targets[0] if len(targets) == 1 else targets
    return {
        "predicted": pred, "predicted_name": model.class_name(pred), "probability": float(probs[pred]),
        "target": shown, "target_name": _per_class(targets, model.class_name),
        "target_probability": _per_class(targets, lambda t: float(probs[t])),
        "scores": scores,
    }


def _per_class(classes: list[int], value):
    return value(classes[0]) if len(classes) == 1 else [value(c) for c in classes]


def report_section(summary: dict, base: str, cmap: str | None = None) -> dict:
    """One HTML-report section from a summary written by :func:`explain_files` (``cmap``: the
    overlays' colormap, for the colour bar)."""
    keys = summary.get("maps", summary["methods"])
    layers = ", ".join(method_heading(m, summary["layer"][m]) for m in keys)
    rows = [{
        "file": r["file"], "view": r["view"], "overlays": r["overlays"],
        "predicted": f"{r['predicted_name']} ({r['predicted']})" if r["predicted"] is not None else "none (an embedding)",
        "probability": r["probability"],
        "target": _explained(r), "flows": r.get("flows", {}), **(true_label(r) if r["predicted"] is not None else {}),
    } for r in summary["images"]]
    return {"title": f"{summary['model']} — {layers}", "methods": keys, "rows": rows,
            "failures": summary["failures"], "base": base, "cmap": cmap,
            "signed": [m for m in keys if signed_method(m)]}


def _explained(row: dict) -> str:
    if row["target"] is None:
        return "no class (the model outputs an embedding)"
    if isinstance(row["target"], list):
        return ", ".join(f"{n} ({t})" for n, t in zip(row["target_name"], row["target"]))
    return f"{row['target_name']} ({row['target']})"
