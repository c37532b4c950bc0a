"""`visionlens evaluate` (deletion + insertion) against its floor, in one interleaved run (issue 30).

Usage: python benchmarks/evaluate_floor.py [--model mobilenet_v2] [--methods gradcam,layercam]
                                           [--data samples|DIR] [--images 4] [--step 3136]
                                           [--batch-size 16] [--repeats 3] [--sweep 8,16,32,64,128]
                                           [--device cpu] [--thousand]

Per round (medians over ``--repeats`` interleaved rounds):
  evaluate  the whole ``evaluate`` call into a fresh folder: decoding, every method's maps, deletion
            and insertion of all methods, records and the report card;
  floor     plain forward passes of as many images as those two metrics score (each method's two
            curves' inner points, plus the three map-independent ends per image), on the same
            checked inference copy, on one real batch repeated, at each batch size of ``--sweep``;
            the best one is the floor.
It prints images/s of both and their ratio (issue 30's goal: at least 0.8). ``--data DIR`` (a
folder with labels.csv, an ImageFolder tree, ...) points it at real data, e.g. /work/shared/data.

``--thousand`` times the issue's "1,000 ImageNet photos x Grad-CAM, LayerCAM, Score-CAM, deletion
+ insertion on MobileNetV2" on ``--images`` photos at RISE's step (the image width), once, and
extrapolates linearly to 1,000 photos; the printout says it is an extrapolation. It fixes the
model, methods and step, so it refuses ``--model``, ``--methods`` and ``--step``.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import time

import torch

from visionlens.core.inference import checked_inference_copy
from visionlens.evaluation import evaluate
from visionlens.evaluation import data as D
from visionlens.models import load_model

import _cli


def _evaluate_seconds(args, methods: list[str], step: int | None) -> tuple[float, float]:
    """Seconds of the whole ``evaluate`` call, and of its batches' work alone (maps and metrics,
    from the manifest: without loading the model, checking the copy and writing the report)."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        evaluate([args.model], methods, data=args.data, n=args.images, batch_size=args.batch_size,
                 device=args.device, out=os.path.join(tmp, "o"), metrics=["deletion", "insertion"], step=step,
                 progress=False, examples=0)
        total = time.perf_counter() - t0
        with open(os.path.join(tmp, "o", "manifest.json"), encoding="utf-8") as f:
            work = sum(json.load(f)["seconds_per_model_method_this_run"].values())
        return total, work


def _batch(args, zoo) -> torch.Tensor:
    """One real batch of the data, as the model takes it."""
    spec = D.parse_data(args.data, n=args.images)
    items = D.data_items(spec, args.images)
    return D.load_batch(spec, items, zoo).x.to(zoo.device)


def _forwards(images: int, methods: int, h: int, w: int, step: int | None) -> int:
    """Images the deletion + insertion of ``methods`` maps score: inner curve points and three ends per image."""
    n = math.ceil(h * w / (w if step is None else step))
    return images * (methods * 2 * (n - 1) + 3)


@torch.no_grad()
def _floor_seconds(copy, x: torch.Tensor, count: int, batch: int) -> float:
    """Seconds of ``count`` forward images through ``copy`` in passes of ``batch``."""
    reps = math.ceil(batch / len(x))
    full = x.repeat(reps, 1, 1, 1)[:batch]
    copy(full[:2])  # warm
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for start in range(0, count, batch):
        copy(full[:min(batch, count - start)])
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def _ratio_run(args) -> None:
    methods = args.methods.split(",")
    zoo = load_model(args.model, device=args.device)
    x = _batch(args, zoo)
    copy, how = checked_inference_copy(zoo.module, x)
    count = _forwards(len(x), len(methods), x.shape[2], x.shape[3], args.step)
    sweep = args.sweep
    evals, works, floors = [], [], {b: [] for b in sweep}
    for _ in range(args.repeats):
        total, work = _evaluate_seconds(args, methods, args.step)
        evals.append(total), works.append(work)
        for b in sweep:
            floors[b].append(_floor_seconds(copy, x, count, b))
    per_batch = {b: statistics.median(v) for b, v in floors.items()}
    best = min(per_batch, key=per_batch.get)
    t_eval, t_work, t_floor = statistics.median(evals), statistics.median(works), per_batch[best]
    print(f"model {args.model} ({how}), methods {','.join(methods)}, {len(x)} images of {args.data}, "
          f"step {args.step}, device {args.device}, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"forward passes of the two metrics: {count} images ({count / len(x):.0f} per image)")
    for b, s in per_batch.items():
        print(f"  floor at batch {b:4d}: {s:7.2f} s  ({len(x) / s:.3f} images/s)")
    print(f"evaluate: {t_eval:.2f} s, {len(x) / t_eval:.3f} images/s (median of {args.repeats})")
    print(f"floor:    {t_floor:.2f} s, {len(x) / t_floor:.3f} images/s (batch {best})")
    print(f"ratio evaluate / floor (images/s): {t_floor / t_eval:.2f}  (goal >= 0.8)")
    print(f"  the batches alone (maps + metrics, {t_work:.2f} s; without model load, copy check, report): "
          f"{t_floor / t_work:.2f}")


def _thousand_run(args) -> None:
    methods = ["gradcam", "layercam", "scorecam"]
    seconds = _evaluate_seconds(args, methods, None)[0]
    per_photo = seconds / args.images
    print(f"MobileNetV2 x {','.join(methods)}, deletion + insertion at RISE's step (224 px), {args.images} photos "
          f"of {args.data} on {args.device} (torch threads {torch.get_num_threads()}, load average "
          f"{os.getloadavg()[0]:.1f}): {seconds:.1f} s, {per_photo:.1f} s per photo")
    print(f"EXTRAPOLATED (linear, not measured) to 1,000 photos: {1000 * per_photo / 60:.0f} min "
          f"({1000 * per_photo / 3600:.1f} h)")


def main() -> None:
    ap = _cli.Parser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="zoo model (default mobilenet_v2)")
    ap.add_argument("--methods", default=None, help="comma-separated methods (default gradcam,layercam)")
    ap.add_argument("--data", default="samples")
    ap.add_argument("--images", type=_cli.positive_int, default=4)
    ap.add_argument("--step", type=_cli.positive_int, default=None,
                    help="pixels per deletion/insertion step (default 3136: 16 steps at 224 px)")
    ap.add_argument("--batch-size", type=_cli.positive_int, default=16, help="evaluate's --batch-size (images per batch)")
    ap.add_argument("--repeats", type=_cli.positive_int, default=3)
    ap.add_argument("--sweep", type=_cli.positive_ints, default=[8, 16, 32, 64, 128],
                    help="comma-separated floor batch sizes to try (default 8,16,32,64,128)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--thousand", action="store_true", help="time the issue's 1,000-photo run on --images photos "
                    "(MobileNetV2, Grad-CAM, LayerCAM, Score-CAM, at RISE's step: it takes no --model, --methods "
                    "or --step) once, and extrapolate (no floor: --repeats and --sweep do not apply)")
    args = ap.parse_args()
    if args.thousand:
        given = [flag for flag in ("model", "methods", "step") if getattr(args, flag) is not None]
        if given:
            ap.error(f"--thousand times MobileNetV2 with gradcam,layercam,scorecam at RISE's step; "
                     f"leave out --{', --'.join(given)}")
        args.model = "mobilenet_v2"
        _thousand_run(args)
    else:
        args.model = args.model or "mobilenet_v2"
        args.methods = args.methods or "gradcam,layercam"
        args.step = args.step or 3136
        _ratio_run(args)


if __name__ == "__main__":
    _cli.run(main)
