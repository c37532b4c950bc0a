"""The one data path: images -> preprocessing -> model + hooks -> target -> map -> outputs.

:func:`explain` is the one-call Python API; :func:`explain_files` is what the CLI runs: it writes,
per image, the model's view, one overlay per method and the raw maps, then a JSON summary and an
HTML page. Images that fail are listed in the summary and leave no files behind.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from . import __version__
from .core.progress import Progress
from .core.result import Explanation
from .core.targets import Target
from .data.images import load_image
from .errors import ImageLoadError, InputError, VisionlensError
from .methods import METHODS
from .models.zoo import ZooModel, load_model, resolve_device
from .viz.flow import flow_strip, save_flow_gif
from .viz.overlay import overlay, save_atomic
from .viz.report import write_report


def parse_method(spec: str) -> tuple[str, str | None]:
    """``"relevance-cam@features.13"`` -> ``("relevance-cam", "features.13")``; ``"gradcam"`` -> ``("gradcam", None)``."""
    name, _, layer = spec.partition("@")
    return name.strip(), layer.strip() or None


def make_method(name: str, model: ZooModel, layer=None, bank=None):
    """Instantiate method ``name`` on ``model`` at ``layer`` (the model's default when None).

    ``name`` may carry its own layer, ``METHOD@LAYER`` (e.g. ``relevance-cam@features.13``), which
    takes precedence over ``layer``. Methods that use every block (``daam``, ``rollout``) take only
    their own ``@LAYER``; ``bank`` (a k-NN memory bank or its file) goes to methods that use one."""
    name, own_layer = parse_method(name)
    if name not in METHODS:
        raise InputError(f"unknown method '{name}'; choose from: {', '.join(METHODS)}")
    cls = METHODS[name]
    if not getattr(cls, "uses_layer", True):
        return cls(model.module, own_layer, **({"bank": bank} if getattr(cls, "uses_bank", False) else {}))
    layer = own_layer if own_layer is not None else layer
    return cls(model.module, layer if layer is not None else model.layer)


def _as_batch(inputs, model: ZooModel) -> torch.Tensor:
    if torch.is_tensor(inputs):
        return inputs
    items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    if not items:
        raise InputError("no images given")
    tensors = []
    for item in items:
        img = item if isinstance(item, Image.Image) else load_image(item)
        tensors.append(model.preprocess(img.convert("RGB")))
    return torch.stack(tensors)


def explain(
    inputs,
    model: str | ZooModel | torch.nn.Module = "mobilenet_v2",
    method: str = "gradcam",
    layer=None,
    target: Target = None,
    device: str | None = None,
    bank=None,
) -> Explanation:
    """Explain images (paths, PIL images, or a preprocessed ``(B, C, H, W)`` tensor) with one call.

    >>> exp = visionlens.explain(["cat.jpg"], model="mobilenet_v2", method="gradcam")
    >>> exp.maps.shape  # (1, 224, 224), values in [0, 1]
    """
    if not isinstance(model, ZooModel):
        model = load_model(model, device=device or "cpu") if isinstance(model, str) else load_model(model)
    elif device is not None:
        model.module.to(resolve_device(device))
    x = _as_batch(inputs, model)
    return make_method(method, model, layer, bank)(x, target)


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        stem = Path(p).stem or "image"
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        stems.append(stem if n == 0 else f"{stem}-{n + 1}")
    return stems


def _write_image_outputs(out_dir: Path, stem: str, view: Image.Image, maps: dict, raws: dict, flows: dict | None = None) -> dict:
    """Write view, overlays, flow strips and GIFs (methods with a flow) and npz for one image; on
    failure remove whatever was written."""
    flows = flows or {}
    files = {"view": f"{stem}.png", "overlays": {m: f"{stem}.{m}.png" for m in maps}, "maps": f"{stem}.npz"}
    if flows:
        files["flows"] = {m: f"{stem}.{m}.flow.png" for m in flows}
        files["gifs"] = {m: f"{stem}.{m}.gif" for m in flows}
    written: list[Path] = []
    try:
        for m, flow in flows.items():
            save_atomic(lambda t, f=flow: flow_strip(view, f).save(t, format="PNG"), out_dir / files["flows"][m])
            written.append(out_dir / files["flows"][m])
            save_flow_gif(view, flow, out_dir / files["gifs"][m])
            written.append(out_dir / files["gifs"][m])
        save_atomic(lambda t: view.save(t, format="PNG"), out_dir / files["view"])
        written.append(out_dir / files["view"])
        for m, sal in maps.items():
            dest = out_dir / files["overlays"][m]
            save_atomic(lambda t, s=sal: overlay(view, s).save(t, format="PNG"), dest)
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


def versions() -> dict:
    return {"visionlens": __version__, "torch": torch.__version__, "python": platform.python_version()}


def explain_files(
    paths: Sequence[str | Path],
    model: ZooModel,
    methods: Sequence[str] = ("gradcam",),
    layer=None,
    target: int | None = None,
    out_dir: str | Path = "visionlens-out",
    batch_size: int = 16,
    progress: bool = True,
    title: str | None = None,
    bank=None,
) -> dict:
    """Explain image files and write outputs to ``out_dir``; return the summary (also written as
    ``summary.json``). A method may be ``METHOD@LAYER`` to use its own layer instead of ``layer``
    (its outputs are then keyed by that whole string). Bad layers/methods/targets raise before
    anything is written; unreadable images are recorded in ``summary["failures"]`` and the rest
    still run."""
    out = Path(out_dir)
    explainers = {m: make_method(m, model, layer, bank) for m in methods}
    probe = torch.zeros(1, 3, model.preprocess.crop, model.preprocess.crop)
    layers = {}
    for name, ex in explainers.items():  # fail fast on a bad layer or target, before any output
        layers[name] = ex(probe, target).layer
    out.mkdir(parents=True, exist_ok=True)
    stems = _unique_stems([Path(p) for p in paths])
    rows, failures = [], []
    bar = Progress(len(paths), label=model.name, enabled=progress and len(paths) > 3)
    for start in range(0, len(paths), batch_size):
        chunk = list(zip(paths[start:start + batch_size], stems[start:start + batch_size]))
        views, tensors, kept = [], [], []
        for path, stem in chunk:
            try:
                view = model.preprocess.view(load_image(path))
            except ImageLoadError as err:
                failures.append({"file": str(path), "error": str(err)})
                print(f"error: {err}", file=sys.stderr)
                bar.update()
                continue
            views.append(view)
            tensors.append(model.preprocess.normalize(view))
            kept.append((path, stem))
        if not kept:
            continue
        x = torch.stack(tensors)
        results = {m: ex(x, target) for m, ex in explainers.items()}
        first = next(iter(results.values()))
        probs = first.probabilities.cpu()
        for i, (path, stem) in enumerate(kept):
            maps = {m: r.maps[i].cpu().numpy() for m, r in results.items()}
            raws = {m: r.raw[i].cpu().numpy() for m, r in results.items()}
            flows = {m: r.flow[i].cpu().numpy() for m, r in results.items() if r.flow is not None}
            try:
                files = _write_image_outputs(out, stem, views[i], maps, raws, flows)
            except (OSError, VisionlensError) as err:
                failures.append({"file": str(path), "error": f"{path}: could not write outputs ({err})"})
                bar.update()
                continue
            pred = int(first.predictions[i])
            tgt = int(first.targets[i])
            rows.append({
                "file": str(path),
                **files,
                "predicted": pred,
                "predicted_name": model.class_name(pred),
                "probability": float(probs[i, pred]),
                "target": tgt,
                "target_name": model.class_name(tgt),
                "target_probability": float(probs[i, tgt]),
                "scores": {m: float(r.scores[i]) for m, r in results.items()},
            })
            bar.update()
    summary = {
        "model": model.name,
        "methods": list(methods),
        "layer": layers,
        "target": "predicted" if target is None else target,
        "device": str(model.device),
        "versions": versions(),
        "images": rows,
        "failures": failures,
    }
    text = json.dumps(summary, indent=2)
    save_atomic(lambda t: Path(t).write_text(text, encoding="utf-8"), out / "summary.json")
    write_report(out / "index.html", title or f"visionlens: {model.name}", [report_section(summary, "")])
    return summary


def report_section(summary: dict, base: str) -> dict:
    """One HTML-report section from a summary written by :func:`explain_files`."""
    layers = ", ".join(f"{m} @ {summary['layer'][m]}" for m in summary["methods"])
    rows = [{
        "file": r["file"], "view": r["view"], "overlays": r["overlays"],
        "predicted": f"{r['predicted_name']} ({r['predicted']})", "probability": r["probability"],
        "target": f"{r['target_name']} ({r['target']})", "flows": r.get("flows", {}),
    } for r in summary["images"]]
    return {"title": f"{summary['model']} — {layers}", "methods": summary["methods"], "rows": rows,
            "failures": summary["failures"], "base": base}
