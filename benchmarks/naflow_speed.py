"""NAFlow speed at 224 px, all layers (issue 29, item 1): the packaged MobileNetV2 and torchvision's
ResNet-50 (random weights: hub weights cannot be downloaded here; the timing depends on the weights
only through the ReLU masks and the iteration counts), one photo and a batch, next to one forward +
backward of the same batch, with the solver's convergence, for each damping.

    python benchmarks/naflow_speed.py [--models mobilenet_v2,resnet50] [--batches 1,8] [--damps 0.1]
                                      [--max-iter 1000] [--photos /work/shared/data/imagenet-sample]
                                      [--threads N] [--device cpu] [--layers] [--preview]

Prints the load average (the 2-core CPU is shared), then per model, batch size and ``damp``: the
wall and CPU time of NAFlow, the ratio to one forward + backward (median of 3), the LSMR iterations
summed over the layers (largest per layer), and how many layers stopped on a convergence test; with
several dampings, how well each one's maps agree with the next smaller one's (Pearson correlation per
layer, averaged over the photos: the smallest, the median and mean, the shallowest layer's and the
smallest of the deepest four). ``--layers`` adds one line per layer inverse; ``--preview`` compares
the old command-line preview (the plain inverse stopped at 20 iterations) with each damping. ``--damps 0`` is the plain inverse (minutes per photo).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

import torch

import visionlens
from visionlens.data import load_image
from visionlens.errors import NotConvergedWarning

import _cli


DEFAULT_PHOTOS = "/work/shared/data/imagenet-sample"


def photo_folder(text: str) -> Path:
    """An argparse type for ``--photos``: a folder that holds photos (.jpg, .jpeg, .png, any case)."""
    folder = _cli.folder(text)
    if not _photos(folder):
        raise argparse.ArgumentTypeError(f"{text} holds no .jpg, .jpeg or .png photos")
    return folder


def damp_list(text: str) -> list[float]:
    """An argparse type for ``--damps``: comma-separated values of at least 0."""
    try:
        damps = [float(d) for d in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of numbers") from None
    if not all(d >= 0 for d in damps):
        raise argparse.ArgumentTypeError(f"'{text}': each damp must be at least 0")
    return damps


def _photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def photos_batch(folder: Path | None, n: int, preprocess) -> torch.Tensor:
    """``n`` photos from ``folder`` (repeated if it holds fewer). Without a folder, those of
    :data:`DEFAULT_PHOTOS` where it holds any, else random inputs (and a line that says so)."""
    if folder is None:
        default = Path(DEFAULT_PHOTOS)
        folder = default if default.is_dir() and _photos(default) else None
    if folder is None:
        print(f"no photos in {DEFAULT_PHOTOS} and no --photos: timing random inputs", flush=True)
        torch.manual_seed(0)
        return torch.randn(n, 3, 224, 224)
    files = _photos(folder)
    return torch.stack([preprocess(load_image(files[i % len(files)])) for i in range(n)])


def sync(device: torch.device) -> None:
    """Wait for the GPU's queued work, so that wall times are the work's (a no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_backward_s(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Median wall time of one forward pass and one backward pass of the top logits (after one untimed)."""
    times = []
    for _ in range(4):
        sync(x.device)
        start = time.perf_counter()
        inp = x.clone().requires_grad_(True)
        out = model(inp)
        out.gather(1, out.argmax(1, keepdim=True)).sum().backward()
        sync(x.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def build(name: str, device: str):
    """The model and its preprocessing: a zoo model, or a random-init torchvision one with ImageNet's."""
    if name in ("resnet18", "resnet50", "vgg16"):
        import torchvision

        return getattr(torchvision.models, name)().to(device).eval(), visionlens.load_model("mobilenet_v2").preprocess
    zoo = visionlens.load_model(name, device=device)
    return zoo.module.eval(), zoo.preprocess


def main() -> None:
    parser = _cli.Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=photo_folder, default=None,
                        help=f"folder of photos (.jpg, .jpeg, .png); default {DEFAULT_PHOTOS} where it holds "
                             "photos, else random inputs")
    parser.add_argument("--batches", type=_cli.positive_ints, default=[1, 8], help="comma-separated batch sizes")
    parser.add_argument("--models", default="mobilenet_v2,resnet50")
    parser.add_argument("--max-iter", type=_cli.positive_int, default=1000)
    parser.add_argument("--damps", type=damp_list, default=[0.1], help="comma-separated NAFlow damp values, largest first")
    parser.add_argument("--threads", type=_cli.positive_int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", action="store_true", help="one line per layer inverse")
    parser.add_argument("--preview", action="store_true",
                        help="also the old command-line preview (damp 0, max_iter 20) against each damping")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    damps = args.damps
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"device {args.device}, max_iter {args.max_iter}, damps {damps}", flush=True)
    if args.device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name(args.device)}, torch {torch.__version__}", flush=True)
    for name in args.models.split(","):
        model, preprocess = build(name, args.device)
        if args.device.startswith("cuda"):  # untimed: CUDA's kernels and cuBLAS load on first use
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotConvergedWarning)
                visionlens.NAFlow(model, max_iter=5, damp=0.1)(photos_batch(args.photos, 1, preprocess).to(args.device))
        for n in args.batches:
            x = photos_batch(args.photos, n, preprocess).to(args.device)
            base = forward_backward_s(model, x)
            flows = [run(name, model, x, base, args.max_iter, d, args.layers) for d in damps]
            pairs = list(zip(damps, flows[:-1], damps[1:], flows[1:]))
            if args.preview:  # the old command-line preview: plain inverse stopped at 20 iterations
                preview = run(name, model, x, base, 20, 0.0, args.layers)
                pairs += [("preview", preview, d, f) for d, f in zip(damps, flows)]
            for d1, f1, d2, f2 in pairs:
                per_layer = agreement(f1, f2)
                print(f"    maps at damp {d1} vs {d2}: correlation per layer min {min(per_layer):.3f}, median "
                      f"{statistics.median(per_layer):.3f}, mean {statistics.mean(per_layer):.3f}, shallowest "
                      f"{per_layer[0]:.3f}, deepest four min {min(per_layer[-4:]):.4f}", flush=True)


def agreement(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Pearson correlation of two flows ``(B, L, H, W)`` per layer, averaged over the images."""
    a, b = a.flatten(2).double(), b.flatten(2).double()
    a, b = a - a.mean(2, keepdim=True), b - b.mean(2, keepdim=True)
    r = (a * b).sum(2) / (a.norm(dim=2) * b.norm(dim=2)).clamp_min(1e-30)
    return r.mean(0).tolist()


def run(name: str, model: torch.nn.Module, x: torch.Tensor, base: float, max_iter: int, damp: float,
        layers: bool) -> torch.Tensor:
    n = x.shape[0]
    method = visionlens.NAFlow(model, max_iter=max_iter, damp=damp)
    sync(x.device)
    start, start_cpu = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotConvergedWarning)  # the count of converged layers is printed
        exp = method(x)
    sync(x.device)
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    converged = sum(r.converged for r in exp.solves)
    iterations = sum(max(r.iterations) for r in exp.solves)
    print(f"{name} batch {n} damp {damp:g}: {len(exp.flow_layers)} maps, {wall:.1f} s wall ({wall / n:.1f} s per photo), "
          f"CPU {cpu:.1f} s; forward+backward {base:.3f} s, ratio {wall / base:.0f}x; LSMR iterations {iterations} over "
          f"{len(exp.solves)} inverses, {converged} converged; load average now {os.getloadavg()[0]:.2f}", flush=True)
    for r in exp.solves if layers else ():
        print(f"    {r.layer:<16} {r.kind:<10} iterations max {max(r.iterations):>5}  stop {','.join(sorted(set(r.stop)))}  "
              f"residual max {max(r.residual):.1e}", flush=True)
    return exp.flow.cpu()


if __name__ == "__main__":
    _cli.run(main)
