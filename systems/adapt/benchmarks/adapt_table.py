"""Reproduce the tables of docs/adapt.md: ``visionlens adapt`` on each domain shift, 3 seeds.

    python systems/adapt/benchmarks/adapt_table.py                    # all shifts -> benchmarks/results/adapt/<data>/
    python systems/adapt/benchmarks/adapt_table.py --only world       # one shift

Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist`` (``--data-dir`` or
``$VISIONLENS_FASHION_MNIST`` when it was only unpacked); it is skipped with a message when absent.
Measured on a shared 2-core CPU: each shift takes 10-30 minutes there.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from visionlens.cli import main

COMMON = ["--seeds", "0,1,2", "--n-source", "800", "--n-target", "500", "--source-epochs", "6", "--adapt-epochs", "4",
          "--budget", "0.05", "--outliers", "0.02", "--threads", "1"]
RUNS = {
    "world": ["--data", "world", "--strength", "strong", "--gradcam", "4"],
    "digits": ["--data", "digits", "--gradcam", "0"],
    "fashion": ["--data", "fashion", "--gradcam", "0"],
}


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(RUNS), action="append", help="run only these shifts")
    parser.add_argument("--out", default="benchmarks/results/adapt")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST idx directory")
    args = parser.parse_args(argv)
    status = 0
    for name in args.only or RUNS:
        extra = ["--data-dir", args.data_dir] if args.data_dir and name == "fashion" else []
        cmd = ["adapt", *RUNS[name], *COMMON, *extra, "--out", str(Path(args.out) / name), "--quiet"]
        print("visionlens " + " ".join(cmd), flush=True)
        start = time.time()
        rc = main(cmd)
        print(f"{name}: exit {rc} in {time.time() - start:.0f} s", flush=True)
        status = status or rc
    return status


if __name__ == "__main__":
    sys.exit(run())
