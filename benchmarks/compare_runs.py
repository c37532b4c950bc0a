"""Do two `visionlens evaluate` folders agree on the results they share (same model, method, image)?

    python benchmarks/compare_runs.py OUT_A OUT_B [OUT_B2 ...] [--methods gradcam]

For each model, method and metric present in both, prints how many images both scored and the
largest and mean absolute difference. The folders after the first are read as one run (e.g. a
deletion/insertion folder and an Average Drop folder). Use it to check that a run on another
device, batch size or scoring copy reproduces an earlier one.
"""

from __future__ import annotations

import numpy as np

from visionlens.evaluation import read_folder_results

import _cli


def _load(folders: list[str]) -> dict:
    out: dict = {}
    for folder in folders:
        for r in read_folder_results(folder):
            if r.get("image") != "*":
                out.setdefault((r["model"], r["method"], r["image"]), {}).update(r["metrics"])
    return out


def main() -> None:
    ap = _cli.Parser(description=__doc__.split("\n")[0])
    ap.add_argument("first", type=_cli.evaluate_folder, metavar="OUT_A")
    ap.add_argument("others", nargs="+", type=_cli.evaluate_folder, metavar="OUT_B")
    ap.add_argument("--methods", nargs="+", help="only these methods (default: all shared)")
    args = ap.parse_args()
    a, b = _load([args.first]), _load(args.others)
    diffs: dict = {}
    for key in sorted(a.keys() & b.keys()):
        if args.methods and key[1] not in args.methods:
            continue
        for metric in a[key].keys() & b[key].keys():
            if a[key][metric] is not None and b[key][metric] is not None:
                diffs.setdefault((key[0], key[1], metric), []).append(abs(a[key][metric] - b[key][metric]))
    if not diffs:
        _cli.fail("the folders share no scored (model, method, image)")
    print("| model | method | metric | images | max abs diff | mean abs diff |")
    print("|---|---|---|---|---|---|")
    for (model, method, metric), d in sorted(diffs.items()):
        print(f"| {model} | `{method}` | {metric} | {len(d)} | {max(d):.2e} | {np.mean(d):.2e} |")


if __name__ == "__main__":
    _cli.run(main)
