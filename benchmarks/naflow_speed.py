"""NAFlow speed at 224 px, all layers (issue 29, item 1): the packaged MobileNetV2 and torchvision's
ResNet-50 (random weights: hub weights cannot be downloaded here; the timing depends on the weights
only through the ReLU masks and the iteration counts), one photo and a batch, next to one forward +
backward of the same batch, with the solver's convergence.

    python benchmarks/naflow_speed.py [--models mobilenet_v2,resnet50] [--batches 1,8] [--max-iter 50]
                                      [--photos /work/shared/data/imagenet-sample] [--threads N] [--device cpu]

Prints the load average (the 2-core CPU is shared), then per model and batch size: the wall and CPU
time of NAFlow, the ratio to one forward + backward (median of 3), the LSMR iterations summed over
the layers (largest per layer), and how many layers stopped on a convergence test; then one line per
layer. ``--max-iter 1000`` is the API's default (converged maps); the default here (50) keeps the run
short.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

import visionlens
from visionlens.data import load_image


def photos_batch(folder: str | None, n: int, preprocess) -> torch.Tensor:
    """``n`` ImageNet photos from ``folder`` (repeated if it holds fewer), else random inputs."""
    files = sorted(Path(folder).glob("*.JPEG")) if folder and Path(folder).is_dir() else []
    if not files:
        torch.manual_seed(0)
        return torch.randn(n, 3, 224, 224)
    return torch.stack([preprocess(load_image(files[i % len(files)])) for i in range(n)])


def forward_backward_s(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Median wall time of one forward pass and one backward pass of the top logits."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        inp = x.clone().requires_grad_(True)
        out = model(inp)
        out.gather(1, out.argmax(1, keepdim=True)).sum().backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(name: str, device: str):
    """The model and its preprocessing: a zoo model, or a random-init torchvision one with ImageNet's."""
    if name in ("resnet18", "resnet50", "vgg16"):
        import torchvision

        return getattr(torchvision.models, name)().to(device).eval(), visionlens.load_model("mobilenet_v2").preprocess
    zoo = visionlens.load_model(name, device=device)
    return zoo.module.eval(), zoo.preprocess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default="/work/shared/data/imagenet-sample")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--models", default="mobilenet_v2,resnet50")
    parser.add_argument("--max-iter", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"device {args.device}, max_iter {args.max_iter}", flush=True)
    for name in args.models.split(","):
        model, preprocess = build(name, args.device)
        for n in (int(b) for b in args.batches.split(",")):
            run(name, model, photos_batch(args.photos, n, preprocess).to(args.device), args.max_iter)


def run(name: str, model: torch.nn.Module, x: torch.Tensor, max_iter: int) -> None:
    n = x.shape[0]
    base = forward_backward_s(model, x)
    method = visionlens.NAFlow(model, max_iter=max_iter)
    start, start_cpu = time.perf_counter(), time.process_time()
    exp = method(x)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    converged = sum(r.converged for r in exp.solves)
    iterations = sum(max(r.iterations) for r in exp.solves)
    print(f"{name} batch {n}: {len(exp.flow_layers)} maps, {wall:.1f} s wall ({wall / n:.1f} s per photo), CPU {cpu:.1f} s; "
          f"forward+backward {base:.3f} s, ratio {wall / base:.0f}x; LSMR iterations {iterations} over "
          f"{len(exp.solves)} inverses, {converged} converged; load average now {os.getloadavg()[0]:.2f}", flush=True)
    for r in exp.solves:
        print(f"    {r.layer:<16} {r.kind:<10} iterations max {max(r.iterations):>5}  stop {','.join(sorted(set(r.stop)))}  "
              f"residual max {max(r.residual):.1e}", flush=True)


if __name__ == "__main__":
    main()
