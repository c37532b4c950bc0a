"""Paired method differences from a `visionlens evaluate` folder: is one method better on the same images?

    python benchmarks/paired_differences.py OUT [--baseline gradcam] [--metrics deletion insertion] [--images-of OTHER]

The report card's intervals are over images, whose difficulty varies far more than the methods
differ. Here, per model, metric and method, the per-image difference ``method - baseline`` on the
images both were scored on, its mean ± 95 % CI half-width (1.96 standard errors), n, and whether
the interval excludes 0 in the metric's better direction ("better"), the worse one ("worse") or
neither ("tie"); "equal" when every per-image difference is within ``--tolerance`` (default
1e-4, the printed precision). Two methods that give the same maps up to float rounding (CAM and
Grad-CAM on a GAP + linear network) still differ by up to ~1e-4 per image, as near-equal pixels
can swap places in the deletion order; such a difference is not called better or worse.
``--images-of OTHER`` keeps only the images that the folder OTHER holds results for, e.g. to
compare a long run with a shorter one at another setting on the same images. A method the run
skipped (it stopped on a model) is left out, as the report card leaves it out, with a note; so is
a non-finite score.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from visionlens.evaluation import ci95, read_folder_results
from visionlens.metrics import METRICS

import _cli


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def _note_report_size(out: Path, images: int) -> None:
    """A note when the folder holds more images than its last report covered (`evaluate --n` smaller
    than the run): the differences are over every image the folder holds."""
    manifest = out / "manifest.json"
    try:
        n = json.loads(manifest.read_text())["command"]["n"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if isinstance(n, int) and n < images:
        print(f"note: {out} holds {images} images, its report the first {n} (evaluate --n {n}); these differences "
              "are over all of them (--images-of FOLDER compares only the images another run holds)", file=sys.stderr)


def main() -> None:
    ap = _cli.Parser(description=__doc__.split("\n")[0])
    ap.add_argument("out", metavar="OUT", type=_cli.evaluate_folder, help="a `visionlens evaluate` output folder")
    ap.add_argument("--baseline", default="gradcam", help="the method the others are compared with (default gradcam)")
    ap.add_argument("--metrics", nargs="+", choices=sorted(METRICS), default=["deletion", "insertion"],
                    metavar="METRIC", help="default: deletion insertion")
    ap.add_argument("--images-of", type=_cli.evaluate_folder, default=None,
                    help="only the images this other evaluate folder holds")
    ap.add_argument("--tolerance", type=float, default=1e-4,
                    help="per-image differences this small count as none (verdict 'equal' when all are)")
    args = ap.parse_args()
    records = read_folder_results(args.out)
    skipped = {(r["model"], r["method"]): r.get("skipped") for r in records if r.get("image") == "*"}
    for (model, method), why in skipped.items():  # as the report card: no rows for a method that stopped
        print(f"note: {method} on {model} left out: it was skipped ({why})", file=sys.stderr)
    recs = {(r["model"], r["method"], r["image"]): r["metrics"]
            for r in records if r.get("image") != "*" and (r["model"], r["method"]) not in skipped}
    _note_report_size(args.out, len({k[2] for k in recs}))
    if args.images_of:
        keep = {r["image"] for r in read_folder_results(args.images_of) if r.get("image") != "*"}
        recs = {k: v for k, v in recs.items() if k[2] in keep}
    methods = sorted({k[1] for k in recs})
    if args.baseline not in methods:
        _cli.fail(f"--baseline {args.baseline}: no results of it in {args.out}"
                  f"{' on the images of ' + str(args.images_of) if args.images_of else ''}; "
                  f"methods there: {', '.join(methods) or 'none'}")
    present = {m for v in recs.values() for m, value in v.items() if value is not None}
    absent = [m for m in args.metrics if m not in present]
    if absent:
        _cli.fail(f"--metrics: no {', '.join(absent)} scores in {args.out}; metrics there: {', '.join(sorted(present))}")
    print(f"| model | method − {args.baseline} | metric | mean difference | 95 % CI | n | verdict |")
    print("|---|---|---|---|---|---|---|")
    for model in dict.fromkeys(k[0] for k in recs):
        for method in dict.fromkeys(k[1] for k in recs if k[0] == model):
            if method == args.baseline:
                continue
            for metric in args.metrics:
                d = np.array([recs[k][metric] - recs[(model, args.baseline, k[2])][metric] for k in recs
                              if k[:2] == (model, method) and (model, args.baseline, k[2]) in recs
                              and _finite(recs[k].get(metric))
                              and _finite(recs[(model, args.baseline, k[2])].get(metric))], float)
                if len(d) < 2:
                    print(f"note: {method} on {model}, {metric}: {len(d)} paired image(s) with a score, "
                          "too few for an interval", file=sys.stderr)
                    continue
                half = ci95(d)
                sign = 1 if METRICS[metric].direction == "higher" else -1
                lo, hi = d.mean() - half, d.mean() + half
                verdict = ("equal" if np.abs(d).max() <= args.tolerance else
                           "better" if sign * lo > 0 and sign * hi > 0 else
                           "worse" if sign * lo < 0 and sign * hi < 0 else "tie")
                print(f"| {model} | `{method}` | {metric} | {d.mean():+.4f} | ±{half:.4f} | {len(d)} | {verdict} |")


if __name__ == "__main__":
    _cli.run(main)
