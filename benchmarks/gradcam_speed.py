"""Grad-CAM latency against the physical floor and against pytorch-grad-cam, in one run.

Usage: python benchmarks/gradcam_speed.py [--device cuda] [--batch 128] [--repeats 15]

Prints median milliseconds per batch (runs interleaved) for:
  forward      inference forward pass (torch.inference_mode)
  floor        inference forward to the layer + forward/backward of the rest w.r.t. the layer
               output only (no graph before the layer, no parameter gradients)
  fwd+bwd      a plain training-style forward + backward (all gradients)
  visionlens   visionlens.GradCAM, maps normalised and upsampled on the device
  pgc          pytorch-grad-cam GradCAM (if installed)
and the ratios of visionlens to the floor, to forward+backward and to pytorch-grad-cam.
The model is torchvision's ResNet-50 (random weights: speed does not depend on them) and the
zoo's MobileNetV2.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timer(fn, device):
    def run():
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        return (time.perf_counter() - t0) * 1000

    return run


def bench(name, model, layer_name, x, repeats, device):
    from visionlens import GradCAM
    from visionlens.core.layers import resolve_layer

    _, layer = resolve_layer(model, layer_name)
    model.eval()

    def forward():
        with torch.inference_mode():
            model(x)

    def floor():
        store = {}

        def hook(m, i, o):
            torch.set_grad_enabled(True)
            store["a"] = o.detach().requires_grad_(True)
            return store["a"]

        h = layer.register_forward_hook(hook)
        try:
            with torch.no_grad():
                out = model(x)
                score = out.max(1).values.sum()
            torch.autograd.grad(score, store["a"])
        finally:
            h.remove()

    def fwd_bwd():
        out = model(x.requires_grad_(False))
        out.max(1).values.sum().backward()
        model.zero_grad(set_to_none=True)

    ours = GradCAM(model, layer_name)

    def visionlens_gradcam():
        ours(x)

    runs = {"forward": forward, "floor": floor, "fwd+bwd": fwd_bwd, "visionlens": visionlens_gradcam}
    try:
        import pytorch_grad_cam as pgc

        cam = pgc.GradCAM(model=model, target_layers=[layer])

        def pgc_gradcam():
            cam(input_tensor=x, targets=None)

        runs["pgc"] = pgc_gradcam
    except ImportError:
        pass
    timers = {k: _timer(f, device) for k, f in runs.items()}
    for t in timers.values():  # warm-up
        t()
    samples = {k: [] for k in timers}
    for _ in range(repeats):
        for k, t in timers.items():
            samples[k].append(t())
    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"\n{name}  batch {x.shape[0]}x{x.shape[1]}x{x.shape[2]}x{x.shape[3]} on {device}, median of {repeats} interleaved runs")
    for k, v in med.items():
        print(f"  {k:11s} {v:9.1f} ms")
    print(f"  visionlens / floor   = {med['visionlens'] / med['floor']:.2f}")
    print(f"  visionlens / fwd+bwd = {med['visionlens'] / med['fwd+bwd']:.2f}")
    if "pgc" in med:
        print(f"  pytorch-grad-cam / visionlens = {med['pgc'] / med['visionlens']:.2f}")


def main():
    parser = argparse.ArgumentParser(description="Grad-CAM speed benchmark")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="default 128 on CUDA, 8 on CPU")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    device = torch.device(args.device)
    batch = args.batch or (128 if device.type == "cuda" else 8)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 224, 224, device=device)
    try:
        import torchvision

        bench("torchvision resnet50", torchvision.models.resnet50().to(device), "layer4", x, args.repeats, device)
    except ImportError:
        print("torchvision not installed: skipping ResNet-50")
    from visionlens.models import MobileNetV2

    bench("MobileNetV2", MobileNetV2().to(device), "features", x, args.repeats, device)


if __name__ == "__main__":
    main()
