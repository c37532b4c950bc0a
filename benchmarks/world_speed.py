"""Rendering speed of the synthetic world on one CPU thread.

Usage: python benchmarks/world_speed.py [--size 128] [--batch 256] [--batches 8]
"""

from __future__ import annotations

import time

import torch

from visionlens.data.world import World, WorldConfig

import _cli


def main() -> None:
    parser = _cli.Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=_cli.positive_int, default=128)
    parser.add_argument("--batch", type=_cli.positive_int, default=256)
    parser.add_argument("--batches", type=_cli.positive_int, default=8)
    parser.add_argument("--threads", type=_cli.positive_int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    world = World(WorldConfig(size=args.size))
    world.batch("train", range(32))  # warm-up
    start = time.perf_counter()
    for k in range(args.batches):
        world.batch("train", range(k * args.batch, (k + 1) * args.batch))
    seconds = time.perf_counter() - start
    n = args.batch * args.batches
    print(f"{n} images at {args.size}x{args.size} with masks, {args.threads} thread(s): "
          f"{n / seconds:.0f} images/s ({seconds:.2f} s)")


if __name__ == "__main__":
    _cli.run(main)
