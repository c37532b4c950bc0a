"""Time per image of NAFlow at 224x224: torchvision VGG-16 / ResNet-18 / ResNet-50 (random-initialised,
no download) and the packaged MobileNetV2 and EfficientNet-Lite0 (ImageNet weights).

    python benchmarks/naflow_time.py [--device cpu] [--max-iter 20] [--threads 1]
                                     [--models vgg16,resnet18,resnet50,mobilenet_v2,efficientnet_lite0]

Prints, per model, the number of maps and the best of ``--repeats`` times for one image: wall time
and the process's CPU time (all threads; on a shared machine the CPU time is the steadier figure).
"""

from __future__ import annotations

import argparse
import time

import torch

import visionlens

import _cli

TORCHVISION = ("vgg16", "resnet18", "resnet50", "alexnet")


def build(name: str) -> torch.nn.Module:
    if name in TORCHVISION:
        import torchvision  # optional: `pip install torchvision`

        return getattr(torchvision.models, name)().eval()
    return visionlens.load_model(name).module


def main() -> None:
    parser = _cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-iter", type=_cli.positive_int, default=20)
    parser.add_argument("--models", default="vgg16,mobilenet_v2")
    parser.add_argument("--repeats", type=_cli.positive_int, default=1)
    parser.add_argument("--size", type=_cli.positive_int, default=224)
    parser.add_argument("--threads", type=_cli.positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name in args.models.split(","):
        model = build(name).to(args.device)
        x = torch.randn(1, 3, args.size, args.size, device=args.device)
        method = visionlens.NAFlow(model, max_iter=args.max_iter)
        times, cpu = [], []
        for _ in range(args.repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            exp = method(x)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        print(f"{name}: {len(exp.flow_layers)} maps, {min(times):.2f} s per image, CPU time {min(cpu):.2f} s "
              f"({args.size}x{args.size}, device "
              f"{args.device}, max_iter {args.max_iter}, torch threads {torch.get_num_threads()})", flush=True)


if __name__ == "__main__":
    _cli.run(main)
