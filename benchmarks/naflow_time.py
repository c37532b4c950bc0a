"""Time per image of NAFlow at 224x224 (VGG-16 random-initialised, the packaged MobileNetV2).

    python benchmarks/naflow_time.py [--device cpu] [--max-iter 20] [--models vgg16,mobilenet_v2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

import visionlens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-iter", type=int, default=20)
    parser.add_argument("--models", default="vgg16,mobilenet_v2")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(0)
    for name in args.models.split(","):
        model = torchvision.models.vgg16().eval() if name == "vgg16" else visionlens.load_model(name).module
        model = model.to(args.device)
        x = torch.randn(1, 3, 224, 224, device=args.device)
        method = visionlens.NAFlow(model, max_iter=args.max_iter)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            exp = method(x)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        print(f"{name}: {len(exp.flow_layers)} maps, {min(times):.2f} s per image (device {args.device}, "
              f"max_iter {args.max_iter}, torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
