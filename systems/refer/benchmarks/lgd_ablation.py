"""LGD ablation on the synthetic referring benchmark (toy VLM + rule-based describer).

    python systems/refer/benchmarks/lgd_ablation.py [--n-val 200] [--n-test 400] [--out lgd-ablation.json]

Settings: ground-truth instance proposals (objects, distractors, parts) with a correct
describer and with one that describes a wrong object 25 % of the time, and the weight-free
colour-segment proposer. alpha/beta are tuned on val over benchmark.GRID, reported on test.
Same numbers as `visionlens refer --benchmark` for the first setting.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from visionlens_refer.lgd.benchmark import ablation_table, markdown
from visionlens_refer.lgd.describers import SceneDescriber
from visionlens_refer.lgd.proposals import ClassicalProposer, GTProposer
from visionlens_refer.lgd.synthetic import benchmark
from visionlens_refer.lgd.toy_vlm import load_toy_vlm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-val", type=int, default=200)
    ap.add_argument("--n-test", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="lgd-ablation.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    samples = (benchmark("val", args.n_val, args.seed), benchmark("test", args.n_test, args.seed))
    encoder = load_toy_vlm()
    settings = [("gt proposals, correct describer", SceneDescriber(0.0, args.seed), GTProposer()),
                ("gt proposals, describer wrong 25 %", SceneDescriber(0.25, args.seed), GTProposer()),
                ("colour-segment proposals, correct describer", SceneDescriber(0.0, args.seed), ClassicalProposer("colour"))]
    results = {}
    for title, describer, proposer in settings:
        t = time.time()
        res = ablation_table(encoder, describer, proposer, seed=args.seed, samples=samples)
        res["wall_s"] = round(time.time() - t, 1)
        results[title] = res
        print(f"\n### {title} (test n={res['n_test']}, {res['mean_proposals']:.1f} proposals per image, {res['wall_s']} s)\n")
        print(markdown(res))
    results["total_wall_s"] = round(time.time() - t0, 1)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {args.out} ({results['total_wall_s']} s)")


if __name__ == "__main__":
    main()
