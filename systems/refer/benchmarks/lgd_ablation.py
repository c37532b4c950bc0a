"""LGD ablation on the synthetic referring benchmark: pixel-perceiving and oracle describers.

    python systems/refer/benchmarks/lgd_ablation.py [--n-val 200] [--n-test 400] [--out lgd-ablation.json]
    python systems/refer/benchmarks/lgd_ablation.py --n-val 20 --n-test 40 --proposers gt   # a quick check

Describers (the MLLM's stand-ins):
* region-scores: perceives from pixels; the toy VLM names every proposal and the expression is
  resolved on those names (``lgd/perception.py``). This row measures LGD's descriptions.
* oracle: reads the scene graph (``SceneDescriber``): an upper bound, also with a 25 % error rate.
Proposers: ground-truth instances (objects, distractors, parts) and weight-free colour segments.
alpha/beta are tuned on val over benchmark.GRID, reported on test. `visionlens refer --benchmark`
gives the first setting (``--describer oracle`` the second).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from visionlens_refer.lgd.benchmark import ablation_table, markdown
from visionlens_refer.lgd.describers import SceneDescriber
from visionlens_refer.lgd.perception import RegionScoreDescriber
from visionlens_refer.lgd.proposals import ClassicalProposer, GTProposer
from visionlens_refer.lgd.synthetic import benchmark
from visionlens_refer.lgd.toy_vlm import load_toy_vlm

PROPOSERS = {"gt": ("gt proposals", GTProposer), "colour": ("colour-segment proposals", lambda: ClassicalProposer("colour"))}


def settings(encoder, seed: int, proposers: list[str]):
    """``(title, describer, proposer)`` for every row group, pixel-perceiving describer first."""
    out = []
    for key in proposers:
        label, make = PROPOSERS[key]
        out.append((f"{label}, region-score describer (perceives from pixels)", RegionScoreDescriber(encoder), make()))
        out.append((f"{label}, oracle describer (scene graph: upper bound)", SceneDescriber(0.0, seed), make()))
        if key == "gt":
            out.append((f"{label}, oracle describer wrong 25 %", SceneDescriber(0.25, seed), make()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-val", type=int, default=200)
    ap.add_argument("--n-test", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--proposers", default="gt,colour", help="comma-separated: gt, colour")
    ap.add_argument("--out", default="lgd-ablation.json", help="the results file to write (never replaced)")
    args = ap.parse_args()
    if os.path.exists(args.out):
        print(f"error: --out {args.out} exists; give another path (the run would replace it)", file=sys.stderr)
        raise SystemExit(2)
    torch.set_num_threads(1)
    t0 = time.time()
    samples = (benchmark("val", args.n_val, args.seed), benchmark("test", args.n_test, args.seed))
    encoder = load_toy_vlm()
    results = {}
    for title, describer, proposer in settings(encoder, args.seed, args.proposers.split(",")):
        t = time.time()
        res = ablation_table(encoder, describer, proposer, seed=args.seed, samples=samples)
        res["wall_s"] = round(time.time() - t, 1)
        results[title] = res
        print(f"\n### {title} (test n={res['n_test']}, {res['mean_proposals']:.1f} proposals per image, {res['wall_s']} s)\n")
        print(markdown(res), flush=True)
    results["total_wall_s"] = round(time.time() - t0, 1)
    with open(args.out, "x") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {args.out} ({results['total_wall_s']} s)")


if __name__ == "__main__":
    main()
