"""Explain detectors and semantic segmenters from image files (what ``visionlens explain`` runs for
a torchvision detection or segmentation model): the targets are boxes or classes, the maps come
from :class:`~visionlens.core.targets.BoxTarget` / :class:`~visionlens.core.targets.SegmentationTarget`,
and the overlays show the explained box or region.

Per image the model runs once without gradients to find what to explain; then each target is one
call of every method (one shared forward and backward pass for the gradient methods)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from .core.boxes import pairwise_iou
from .core.progress import Progress
from .core.targets import BoxTarget, SegmentationTarget
from .data.images import load_image, require_readable
from .errors import ImageLoadError, InputError, display
from .io import save_atomic, versions, write_json
from .methods.base import explain_many
from .models.hub import dense_default_layer
from .models.zoo import ZooModel
from .outputs import check_out_dir, earlier_outputs, staged_out_dir, unique_stems
from .viz.overlay import overlay
from .viz.render import colorbar, write_page

BOX_COLOUR = (255, 64, 64)


def view_of(model: ZooModel, img: Image.Image) -> tuple[Image.Image, torch.Tensor]:
    """The picture the model sees (short side resized to ``preprocess.resize``, aspect kept: dense
    models take any size; a detector's long side at most its transform's ``max_size``, as the
    detector would resize it) and its ``(1, 3, H, W)`` tensor (detectors normalise inside)."""
    pre = model.preprocess
    img = img.convert("RGB")
    w, h = img.size
    scale = pre.resize / min(w, h)
    longest = getattr(getattr(model.module, "transform", None), "max_size", None)
    if isinstance(longest, (int, float)) and longest > 0:
        scale = min(scale, longest / max(w, h))
    view = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    x = pre.normalize(view)[None]
    return view, x.to(model.device)


CLASSIFIER_ONLY = {"relevance-cam": "LRP propagates from a classifier's (B, num_classes) output, which a "
                                    "detector or segmenter does not give"}


def parse_targets(text: str | None, task: str, model: ZooModel) -> list:
    """``--target`` for a dense model, parts separated by ``;``: a box ``x0,y0,x1,y1`` (in the
    image file's pixels, detectors only) or class names / indices (comma-separated, either model),
    in the order given (``"40,60,180,300;car"``: a box, then the best car)."""
    if text is None or not text.strip():
        return []
    wanted = []
    for part in (p.strip() for p in text.split(";") if p.strip()):
        numbers = part.split(",")
        four_numbers = len(numbers) == 4 and all(_is_number(n) for n in numbers)
        if four_numbers and task == "detection":
            box = [float(n) for n in numbers]
            if not (box[2] > box[0] and box[3] > box[1]):
                raise InputError(f"box {part!r} must be x0,y0,x1,y1 with x1 > x0 and y1 > y0")
            wanted.append(("box", box))
            continue
        try:
            wanted += [("class", c) for c in model.class_indices(numbers)]
        except InputError as err:
            if four_numbers:  # a box given to a segmenter
                raise InputError(f"--target {part!r}: {err}; if it is a box, boxes choose detections and this "
                                 "model is a segmenter: name classes (e.g. --target person,dog)") from None
            raise
    return wanted


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


MIN_BOX_IOU = 0.5
"""A ``--target`` box explains the detection it overlaps most, when their IoU is at least this
(:class:`~visionlens.core.targets.BoxTarget`'s default and pytorch-grad-cam's threshold)."""


def detection_targets(dets: dict, wanted: list, model: ZooModel, threshold: float, top: int,
                      scale: tuple[float, float] = (1.0, 1.0)) -> tuple[list, list]:
    """``(targets, skipped)``: the detections to explain, the best match of each given box (the
    detection overlapping it most, with IoU at least :data:`MIN_BOX_IOU`) or class (its best
    detection), or (none given) the ``top`` detections scoring at least ``threshold`` (the single
    best when none does); and the given boxes and classes that match no detection, each with why.
    Detections without area (``x1 <= x0`` or ``y1 <= y0``) have no map and are never chosen.
    ``scale``: the view's size over the file's (``x``, ``y``); given boxes are in the file's pixels
    and each target records its box in both (``box`` in the view, ``file_box`` in the file)."""
    boxes, scores, labels = dets["boxes"], dets["scores"], dets["labels"]
    usable = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]) & torch.isfinite(boxes).all(1)
    sx, sy = scale
    chosen, skipped = [], []
    for kind, value in wanted:
        if kind == "box":
            k, iou = _best_overlap(value, boxes, usable, scale)
            if iou < MIN_BOX_IOU:
                best = f" (best IoU {iou:.2f})" if iou > 0 else ""
                skipped.append({"box": value, "why": f"no detection overlaps this box with IoU >= {MIN_BOX_IOU}{best}"})
                continue
            chosen.append((k, f"box {','.join(f'{v:g}' for v in value)} (IoU {iou:.2f})"))
        else:
            hits = ((labels == value) & usable).nonzero().flatten()
            if not len(hits):
                why = "only detections without area" if bool((labels == value).any()) else "not detected in this image"
                skipped.append({"label": value, "name": model.class_name(value), "why": why})
                continue
            chosen.append((int(hits[scores[hits].argmax()]), f"best {model.class_name(value)}"))
    if not wanted and bool(usable.any()):
        candidates = usable.nonzero().flatten()
        keep = candidates[scores[candidates] >= threshold][:top].tolist() or [int(candidates[scores[candidates].argmax()])]
        chosen = [(k, "detected") for k in keep]
    targets = []
    for k, why in chosen:
        box = [float(v) for v in boxes[k]]
        targets.append({"box": box, "file_box": [round(box[0] / sx, 2), round(box[1] / sy, 2), round(box[2] / sx, 2),
                                                 round(box[3] / sy, 2)],
                        "label": int(labels[k]), "name": model.class_name(int(labels[k])), "score": float(scores[k]),
                        "why": why})
    return targets, skipped


def _best_overlap(box: list[float], boxes: torch.Tensor, usable: torch.Tensor,
                  scale: tuple[float, float]) -> tuple[int, float]:
    """``(index, IoU)`` of the usable detection that overlaps ``box`` (file pixels) most, once the
    box is scaled into the view; ``(-1, 0.0)`` without detections."""
    if not len(boxes):
        return -1, 0.0
    sx, sy = scale
    in_view = torch.tensor([[box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]], dtype=boxes.dtype, device=boxes.device)
    overlap = pairwise_iou(in_view, boxes)[0] * usable  # a detection without area overlaps nothing
    k = int(overlap.argmax())
    return k, float(overlap[k])


def segmentation_targets(logits: torch.Tensor, wanted: list, model: ZooModel) -> list[dict]:
    """The classes to explain: the given ones, or the most frequent predicted class that is not
    the background (index 0 when the class names start with a background class)."""
    pred = logits.argmax(1)[0]
    counts = torch.bincount(pred.flatten(), minlength=logits.shape[1])
    if wanted:
        classes = [c for _, c in wanted]
    else:
        background = model.class_names is not None and model.class_names[0].strip("_").lower() == "background"
        if background and counts[1:].sum() > 0:
            counts = counts.clone()
            counts[0] = 0
        classes = [int(counts.argmax())]
    return [{"label": c, "name": model.class_name(c), "pixels": int(counts[c]), "why": "given" if wanted else "largest"}
            for c in classes]


def _draw_box(picture: Image.Image, box: list[float], text: str) -> Image.Image:
    picture = picture.copy()
    draw = ImageDraw.Draw(picture)
    draw.rectangle(box, outline=BOX_COLOUR, width=2)
    draw.text((box[0] + 3, box[1] + 2), text, fill=BOX_COLOUR)
    return picture


def _region_picture(view: Image.Image, region: np.ndarray) -> Image.Image:
    """The view with everything outside ``region`` dimmed."""
    mask = Image.fromarray((region * 255).astype(np.uint8)).resize(view.size, Image.NEAREST)
    dim = Image.blend(view, Image.new("RGB", view.size, (0, 0, 0)), 0.6)
    return Image.composite(view, dim, mask)


def _save_png(picture: Image.Image, dest: Path) -> None:
    save_atomic(lambda tmp: picture.save(tmp, format="PNG"), dest)


def _names(stem: str, methods: list[str], slots: int) -> list[str]:
    return [f"{stem}.view.png"] + [f"{stem}.{k}.{m}.png" for k in range(slots) for m in methods] + \
           [f"{stem}.{k}.{kind}" for k in range(slots) for kind in ("npz", "region.png")]


def explain_dense_files(paths, model: ZooModel, methods: list[str], out_dir, task: str, target: str | None = None,
                        layer: str | None = None, threshold: float = 0.5, top: int = 3, cmap: str | None = None,
                        progress: bool = True) -> dict:
    """Explain each image's detections (``task="detection"``) or classes (``"segmentation"``) with
    ``methods``; write per image the view, one overlay per method and target (with the box drawn or
    the region shown), the raw maps (``.npz``), then ``summary.json`` and ``index.html``."""
    from .pipeline import make_method

    if not 1 <= top <= 100:
        raise InputError(f"--top must be between 1 and 100, got {top}")
    for m in methods:
        if m.split("@")[0] in CLASSIFIER_ONLY:
            raise InputError(f"--method {m}: {CLASSIFIER_ONLY[m.split('@')[0]]}; for a {task} model use gradcam, "
                             "layercam, eigencam, scorecam or ablationcam")
    wanted = parse_targets(target, task, model)
    require_readable(paths)
    layer = layer or dense_default_layer(model.module, task)  # the backbone's last block
    explainers = {m: make_method(m, model, layer) for m in methods}
    slots = len(wanted) if wanted else (top if task == "detection" else 1)
    out = Path(out_dir)
    stems = unique_stems(paths, lambda s: _names(s, methods, slots), taken=paths, out=out)
    check_out_dir(out, [n for s in stems for n in _names(s, methods, slots)] + ["summary.json", "index.html"])
    rows, failures = [], []
    bar = Progress(len(paths), label=model.name, enabled=progress and len(paths) > 3)
    with staged_out_dir(out, earlier=earlier_outputs(out, paths)) as stage:  # an interrupted run leaves ``out`` as it was
        for path, stem in zip(paths, stems):
            try:
                rows.append(_explain_one(path, stem, model, explainers, wanted, task, stage, threshold, top, cmap))
            except (ImageLoadError, InputError, OSError) as err:
                message = f"{display(path)}: {err}" if not str(err).startswith(str(path)) else str(err)
                failures.append({"file": str(path), "error": message})
                print(f"error: {message}", file=sys.stderr)
            bar.update()
        summary = {"model": model.name, "model_source": model.describe(), "task": task, "methods": methods,
                   "layer": layer, "target": target or ("top detections" if task == "detection" else "largest class"),
                   "score_threshold": threshold if task == "detection" else None, "device": str(model.device),
                   "versions": versions(), "images": rows, "failures": failures}
        write_json(summary, stage / "summary.json")
        write_page(stage / "index.html", "dense.html.j2", title=f"visionlens: {model.name} ({task}) @ {layer}",
                   rows=rows, methods=methods, failed=failures,
                   bars=[colorbar(cmap, False, "map value (per target, min-max)")])
    return summary


def _explain_one(path, stem, model, explainers, wanted, task, out, threshold, top, cmap) -> dict:
    from .pipeline import naming_flat_maps

    image = load_image(path)
    view, x = view_of(model, image)
    with torch.no_grad():
        output = model.module(x)
    if task == "detection":
        scale = (view.size[0] / image.size[0], view.size[1] / image.size[1])
        targets, skipped = detection_targets(output[0], wanted, model, threshold, top, scale)
        if not targets and skipped:
            raise InputError("no detection matches --target in this image (" + "; ".join(
                f"{t.get('name') or ','.join(f'{v:g}' for v in t['box'])}: {t['why']}" for t in skipped) + ")")
        if not targets:
            raise InputError("the detector found nothing to explain in this image")
    else:
        found = segmentation_targets(output["out"], wanted, model)
        targets = [t for t in found if t["pixels"] > 0]
        skipped = [{**t, "why": "no pixel of this class in the prediction"} for t in found if t["pixels"] == 0]
        if not targets:
            raise InputError(f"no pixel of {', '.join(t['name'] for t in skipped)} in the prediction")
    pictures, arrays = {}, {}  # everything computed before anything is written
    for k, t in enumerate(targets):
        region = None if task == "detection" else output["out"].argmax(1) == t["label"]
        with naming_flat_maps([f"{display(path)} (target {k}: {t['name']})"]):
            results = explain_many(list(explainers.values()), x, _target_of(t, region))
        t["files"] = {}
        for m, method in explainers.items():
            picture = overlay(view, results[method.name].maps[0].detach().cpu().numpy(), cmap=cmap)
            if task == "detection":
                picture = _draw_box(picture, t["box"], f"{t['name']} {t['score']:.2f}")
            t["files"][m] = f"{stem}.{k}.{m}.png"
            pictures[t["files"][m]] = picture
        t["raw"] = f"{stem}.{k}.npz"
        arrays[t["raw"]] = {m: results[method.name].raw[0].detach().cpu().numpy() for m, method in explainers.items()}
        if task == "segmentation":
            t["region"] = f"{stem}.{k}.region.png"
            pictures[t["region"]] = _region_picture(view, region[0].cpu().numpy())
    pictures[f"{stem}.view.png"] = view
    for name, picture in pictures.items():
        _save_png(picture, out / name)
    for name, raws in arrays.items():
        save_atomic(lambda tmp, raws=raws: np.savez_compressed(tmp, **raws), out / name)
    return {"file": str(path), "view": f"{stem}.view.png", "size": list(view.size), "targets": targets,
            "skipped": skipped}


def _target_of(t: dict, region: torch.Tensor | None):
    """A detection's :class:`BoxTarget`, or a class's :class:`SegmentationTarget` over its predicted
    region (given explicitly, so that Score-CAM's masked copies keep the same region)."""
    if region is None:
        return BoxTarget([torch.tensor(t["box"])], [t["label"]])
    return SegmentationTarget(t["label"], mask=region)
