"""Deletion + insertion speed against the anchor and the physical floor, in one interleaved run.

Usage: python benchmarks/deletion_speed.py [--models mobilenet_v2 efficientnet_lite0] [--images 4]
                                           [--step 3136] [--device cpu] [--repeats 3] [--no-anchor]

For each zoo model, on ``--images`` real sample photos (or random inputs when the photos are not
fetched) with Grad-CAM maps, it times (medians of interleaved rounds):
  floor       plain inference forward passes of as many images as the two curves score,
              in chunks of the same size, on the model itself (the physical limit of the eager model)
  exact       visionlens deletion + insertion on the model itself (``--exact-scoring``)
  copy        visionlens deletion + insertion on the checked BatchNorm-folded, channels-last copy
              (what ``visionlens evaluate`` uses)
  compiled    the same on that copy compiled for batches of ``--chunk`` (``evaluate --compile``;
              compiling is timed once, apart)
  torchcam    torchcam's Grad-CAM and DeletionInsertionMetric on the same batch, if installed (its
              own maps and protocol details, see tests/evaluation/test_metrics.py; the same number of steps)
and prints each as ms per image and as a ratio to the floor.
"""

from __future__ import annotations

import math
import statistics
import time
from functools import partial

import torch

from visionlens import load_model
from visionlens import metrics as M
from visionlens.core.inference import checked_inference_copy
from visionlens.pipeline import make_method

import _cli


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _inputs(zoo, n: int) -> torch.Tensor:
    try:
        from visionlens.data.samples import sample_images
        from visionlens.data.images import load_image

        paths = sample_images("imagenet")[:n]
        return torch.stack([zoo.preprocess(load_image(p)) for p in paths])
    except Exception:  # noqa: BLE001 - photos not fetched: random inputs time the same
        return torch.randn(n, 3, 224, 224)


def main() -> None:
    ap = _cli.Parser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["mobilenet_v2", "efficientnet_lite0"])
    ap.add_argument("--images", type=_cli.positive_int, default=4)
    ap.add_argument("--step", type=_cli.positive_int, default=3136)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=_cli.positive_int, default=3)
    ap.add_argument("--chunk", type=_cli.positive_int, default=128, help="images per forward pass (evaluate: 8 x --batch-size)")
    ap.add_argument("--no-anchor", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    try:
        import torchcam.metrics as tcm
    except ImportError:
        tcm = None
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, step {args.step}")
    for name in args.models:
        zoo = load_model(name, device=device)
        x = _inputs(zoo, args.images).to(device)
        maps = make_method("gradcam", zoo)(x).maps.to(device)
        if maps.ndim == 4:
            maps = maps[:, 0]
        with torch.no_grad():
            target = zoo.module(x).argmax(1)
        fast, note = checked_inference_copy(zoo.module, x)
        t0 = time.perf_counter()
        compiled, compiled_note = checked_inference_copy(zoo.module, x, compile_batch=args.chunk)
        compile_s = time.perf_counter() - t0
        h, w = x.shape[-2:]
        n_scores = 2 * (math.ceil(h * w / args.step) + 1)  # deletion + insertion curves
        total = args.images * n_scores
        chunk = torch.cat([x] * math.ceil(args.chunk / len(x)))[: args.chunk]

        @torch.no_grad()
        def floor():
            done = 0
            while done < total:
                k = min(args.chunk, total - done)
                zoo.module(chunk[:k])
                done += k

        def ours(module):
            return lambda: (M.deletion(module, x, maps, target, step=args.step, batch_size=args.chunk),
                            M.insertion(module, x, maps, target, step=args.step, batch_size=args.chunk))

        contenders = {"floor": floor, "exact": ours(zoo.module), "copy": ours(fast), "compiled": ours(compiled)}
        if tcm is not None and not args.no_anchor:
            from torchcam.methods import GradCAM as TorchcamGradCAM

            steps = math.ceil(h * w / args.step)

            def anchor():  # what a torchcam user runs: its Grad-CAM and its metric, same batching
                with TorchcamGradCAM(zoo.module, zoo.layer) as extractor:
                    metric = tcm.DeletionInsertionMetric(extractor, partial(torch.softmax, dim=-1), steps=steps,
                                                         batch_size=args.chunk)
                    metric.update(x)

            contenders["torchcam"] = anchor
        for fn in contenders.values():
            fn()
        times = {k: [] for k in contenders}
        for _ in range(args.repeats):
            for k, fn in contenders.items():
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                times[k].append(time.perf_counter() - t0)
        base = statistics.median(times["floor"])
        print(f"\n{name}: {args.images} images x {n_scores} scored inputs; scoring copy: {note}")
        print(f"compiled: {compiled_note}; building and checking it took {compile_s:.1f} s")
        print(f"{'':10s} {'ms/image':>10s} {'x floor':>8s}")
        for k, v in times.items():
            t = statistics.median(v)
            print(f"{k:10s} {1000 * t / args.images:10.1f} {t / base:8.2f}")


if __name__ == "__main__":
    _cli.run(main)
