"""How long `visionlens --help` and `visionlens COMMAND --help` take, each in a fresh process.

Usage: python benchmarks/cli_speed.py [--repeats 5] [--goal 1.0]

The commands are read from the parser (``visionlens.cli.build_parser``), sub-commands too
(``sata evaluate``, ``hsi-cd train``, ...); a command whose package is not installed is timed as
well (it answers with a one-line pointer). Each line is run ``--repeats`` times with
``sys.executable -m visionlens ... --help``, interleaved round by round, and the table gives the
median wall time and its ratio to the goal (1 s by default: the time a person waits for help
without noticing). The exit status is 0 unless a command fails.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time

import _cli


def command_lines() -> list[list[str]]:
    """[] for `visionlens --help`, then every command path the parser knows."""
    from visionlens.cli import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield [*path, name]
                    yield from walk(sub, [*path, name])

    return [[], *walk(build_parser(), [])]


def time_once(words: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "visionlens", *words, "--help"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - start, done.returncode


def main(argv: list[str] | None = None) -> int:
    ap = _cli.Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=_cli.positive_int, default=5, help="runs of each command line (median reported)")
    ap.add_argument("--goal", type=float, default=1.0, help="target wall time in seconds")
    args = ap.parse_args(argv)
    if args.repeats < 1 or not args.goal > 0:
        ap.error("--repeats must be at least 1 and --goal positive")

    lines = command_lines()
    times: dict[int, list[float]] = {i: [] for i in range(len(lines))}
    failed: dict[int, int] = {}
    for _ in range(args.repeats):  # interleaved: a slow moment of the machine hits every line alike
        for i, words in enumerate(lines):
            seconds, rc = time_once(words)
            times[i].append(seconds)
            if rc != 0:
                failed[i] = rc

    print(f"python {platform.python_version()}, {platform.platform()}, {args.repeats} run(s) each, "
          f"median wall time of a fresh process, goal {args.goal:g} s")
    width = max(len(" ".join(["visionlens", *w, "--help"])) for w in lines)
    print(f"{'command':{width}s}  {'median s':>8s}  {'/ goal':>6s}")
    for i, words in enumerate(lines):
        median = statistics.median(times[i])
        line = " ".join(["visionlens", *words, "--help"])
        note = f"  exit {failed[i]}" if i in failed else ""
        print(f"{line:{width}s}  {median:8.3f}  {median / args.goal:6.2f}{note}")
    slowest = max(range(len(lines)), key=lambda i: statistics.median(times[i]))
    print(f"slowest: visionlens {' '.join(lines[slowest])} --help, "
          f"{statistics.median(times[slowest]):.3f} s ({statistics.median(times[slowest]) / args.goal:.2f} x the goal)")
    return 1 if failed else 0


if __name__ == "__main__":
    _cli.run(main)
