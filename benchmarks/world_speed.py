"""Rendering speed of the synthetic world on one CPU thread.

Usage: python benchmarks/world_speed.py [--size 128] [--batch 256] [--batches 8]
"""

from __future__ import annotations

import argparse
import time

import torch

from visionlens.data.world import World, WorldConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
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
    main()
