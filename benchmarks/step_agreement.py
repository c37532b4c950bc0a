"""How far a coarse deletion/insertion step moves the AUCs from the RISE step, on the same images.

    python benchmarks/step_agreement.py FINE_OUT COARSE_OUT

FINE_OUT and COARSE_OUT are `visionlens evaluate` folders run with the same models and methods,
FINE_OUT at the RISE step (no ``--step``) and COARSE_OUT with ``--step``. When the coarse step is a
multiple of the fine one, the coarse curve samples the fine curve at every (coarse/fine)-th point,
so the only difference is the trapezoid rule on fewer points. For each model, method and metric,
on the images both folders hold, it prints the two means, the mean and largest absolute
difference, and the rank correlation of the per-image AUCs; then, per model and metric, whether
the two steps order the methods the same way.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from visionlens.evaluation import read_folder_results
from visionlens.metrics.sanity import spearman

import _cli


def _load(folder) -> dict:
    return {(r["model"], r["method"], r["image"]): r["metrics"] for r in read_folder_results(folder)
            if r.get("image") != "*"}


def main() -> None:
    ap = _cli.Parser(description=__doc__.splitlines()[0])
    ap.add_argument("fine_dir", metavar="FINE_OUT", type=_cli.evaluate_folder,
                    help="`visionlens evaluate` folder run at the RISE step (no --step)")
    ap.add_argument("coarse_dir", metavar="COARSE_OUT", type=_cli.evaluate_folder,
                    help="`visionlens evaluate` folder run with --step")
    args = ap.parse_args()
    fine, coarse = _load(args.fine_dir), _load(args.coarse_dir)
    manifest = args.coarse_dir / "manifest.json"  # written when a run ends
    step = json.loads(manifest.read_text())["command"]["step"] if manifest.is_file() else "(run in progress)"
    keys = sorted(k for k in fine if k in coarse)
    if not keys:
        _cli.fail("no (model, method, image) in both folders")
    print(f"coarse step {step} vs the RISE step; {len({k[2] for k in keys})} images in both runs\n")
    print("| model | method | metric | RISE step | coarse | mean abs diff | max abs diff | rank corr. |")
    print("|---|---|---|---|---|---|---|---|")
    order: dict[tuple[str, str], list[tuple[str, float, float]]] = {}
    for model in dict.fromkeys(k[0] for k in keys):
        for method in dict.fromkeys(k[1] for k in keys if k[0] == model):
            ks = [k for k in keys if k[:2] == (model, method)]
            for metric in ("deletion", "insertion"):
                a = np.array([fine[k][metric] for k in ks], float)
                b = np.array([coarse[k][metric] for k in ks], float)
                d = np.abs(b - a)
                rho = float(spearman(torch.from_numpy(a)[None], torch.from_numpy(b)[None])[0]) if len(a) > 2 else float("nan")
                print(f"| {model} | `{method}` | {metric} | {a.mean():.4f} | {b.mean():.4f} | {d.mean():.4f} | "
                      f"{d.max():.4f} | {rho:.3f} |")
                order.setdefault((model, metric), []).append((method, a.mean(), b.mean()))
    print()
    for (model, metric), rows in order.items():
        by_fine = [m for m, _, _ in sorted(rows, key=lambda r: r[1])]
        by_coarse = [m for m, _, _ in sorted(rows, key=lambda r: r[2])]
        same = "same order" if by_fine == by_coarse else "different order"
        print(f"{model} {metric}: RISE step {' < '.join(by_fine)}; coarse {' < '.join(by_coarse)} ({same})")


if __name__ == "__main__":
    _cli.run(main)
