"""Score-CAM and Ablation-CAM against pytorch-grad-cam and against their floor, in one interleaved run (issue 29).

Usage: python benchmarks/perturbation_floor.py [--models mobilenet_v2,resnet18,resnet50,convnext_tiny,efficientnet_b0]
                                               [--methods scorecam,ablationcam] [--size 224] [--images 1]
                                               [--repeats 3] [--warmup 6] [--pgc-batch 64]
                                               [--sweep 16,32,64,128,256] [--device cpu] [--no-anchor]

Torchvision models with random weights (seed 0), each at its last convolutional stage (MobileNetV2
at ``features.16`` as in the issue). Per model and method, round by round (medians):
  visionlens       ``ScoreCAM`` / ``AblationCAM`` with their defaults (the fastest checked
                   inference copy, batch size from the device's memory), whole call;
  pytorch-grad-cam the same method, ``batch_size = --pgc-batch``;
  floor            the one forward pass of the model itself that every CAM method makes (the
                   layer's activations and the logits that the explanation reports), plus the
                   perturbed forward passes alone, on the same fastest checked copy, at the best
                   of ``--sweep``: Score-CAM's masked images (one per channel and image that
                   varies, one per image for all its constant channels), Ablation-CAM's ablated
                   activations through the rest of the network after the layer (its ``torch.fx``
                   tail, :func:`visionlens.methods.ablationcam.layer_tail`: nothing before the
                   layer runs again). The perturbed inputs are built once, outside the timing.
It prints seconds (the floor's two parts too) and the ratios visionlens / pytorch-grad-cam (goal
<= 1) and visionlens / floor (goal <= 1.15). The first call per model chooses and keeps the
inference copy (a few probe passes), and the first few calls on a CPU search the batch size by
timing their own passes: an untimed warm-up round of every contender, then ``--warmup`` - 1 more
calls of visionlens, pay these, and their times are printed apart.
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's progress bars (read when tqdm is imported)

import torch
import torch.nn.functional as F

from visionlens import AblationCAM, ScoreCAM
from visionlens.core.inference import InferenceCopy, fastest_checked_copy
from visionlens.methods.ablationcam import layer_tail

import _cli


LAYERS = {"mobilenet_v2": "features.16", "resnet18": "layer4", "resnet50": "layer4", "convnext_tiny": "features.7",
          "efficientnet_b0": "features.8"}
METHODS = {"scorecam": ScoreCAM, "ablationcam": AblationCAM}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


@torch.no_grad()
def _score_floor(copy, x: torch.Tensor, acts: torch.Tensor, batch: int) -> None:
    """Score-CAM's masked forward passes alone, ``batch`` at a time: one per channel and image that
    varies, and one per image for all its constant channels (as ScoreCAM does)."""
    flat = acts.flatten(2)
    constant = flat.amax(2) == flat.amin(2)
    count = int((~constant).sum()) + int(constant.any(1).sum())
    masks = F.interpolate(acts.flatten(0, 1)[:, None][:batch], size=x.shape[-2:], mode="bilinear", align_corners=True)
    masked = x[:1] * masks  # one ready batch of masked images, reused: only the passes are timed
    for start in range(0, count, batch):
        copy(masked[:min(batch, count - start)])


@torch.no_grad()
def _ablation_floor(tail, acts: torch.Tensor, batch: int) -> None:
    """Ablation-CAM's ablated forward passes alone: the traced rest of the network after the layer
    (``tail``) on ``batch`` activations at a time, one per channel and image."""
    b, k = acts.shape[:2]
    ready = acts[:1].expand(batch, *acts.shape[1:]).contiguous()
    for start in range(0, b * k, batch):
        tail(ready[:min(batch, b * k - start)])


def _pgc(method: str, model, layer_module, batch: int):
    import pytorch_grad_cam as pgc

    if method == "scorecam":
        cam = pgc.ScoreCAM(model=model, target_layers=[layer_module])
        cam.batch_size = batch
    else:
        cam = pgc.AblationCAM(model=model, target_layers=[layer_module], batch_size=batch)
    return cam


def _contenders(method: str, model, layer: str, x: torch.Tensor, classes: torch.Tensor, args) -> dict:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    ours = METHODS[method](model, layer)
    layer_module = model.get_submodule(layer)
    cam = None if args.no_anchor else _pgc(method, model, layer_module, args.pgc_batch)
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    with torch.no_grad():
        acts = _activations(model, layer_module, x)
    keep = (layer,) if method == "ablationcam" else ()
    copy = fastest_checked_copy(model, x, 64, keep=keep)[0]
    sweep = args.sweep
    if method == "scorecam":
        floor = {f"floor@{b}": (lambda b=b: _score_floor(copy, x, acts, b)) for b in sweep}
    else:
        if not isinstance(copy, InferenceCopy):  # the model itself is fastest: trace its copy (as AblationCAM does)
            copy = InferenceCopy(model, channels_last=False, keep=keep)
        tail = layer_tail(copy.inner, layer)
        if tail is None:
            _cli.fail(f"{layer}: no traced tail of the inference copy, so no ablation floor")
        floor = {f"floor@{b}": (lambda b=b: _ablation_floor(tail, acts, b)) for b in sweep}
    anchor = {} if args.no_anchor else {"pytorch-grad-cam": lambda: cam(input_tensor=x, targets=targets)}
    return {"visionlens": lambda: ours(x, classes), **anchor, "forward": torch.no_grad()(lambda: model(x)), **floor}


def _activations(model, layer_module, x: torch.Tensor) -> torch.Tensor:
    got = {}
    handle = layer_module.register_forward_hook(lambda m, i, o: got.setdefault("a", o.detach()))
    try:
        model(x)
    finally:
        handle.remove()
    return got["a"]


def _one(name: str, method: str, args, device) -> None:
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval().to(device)
    x = torch.randn(args.images, 3, args.size, args.size, device=device)
    with torch.no_grad():
        classes = model(x).argmax(1)
    t0 = time.perf_counter()
    contenders = _contenders(method, model, LAYERS[name], x, classes, args)
    for fn in contenders.values():  # warm-up round: the copy is chosen and kept here
        fn()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.warmup - 1):  # more calls of visionlens: its batch-size search ends here
        contenders["visionlens"]()
    search = time.perf_counter() - t0
    times = {k: [] for k in contenders}
    for _ in range(args.repeats):
        for key, fn in contenders.items():
            times[key].append(_timed(fn, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    passes = {k: v for k, v in med.items() if k.startswith("floor@")}
    best = min(passes, key=passes.get)
    ours, floor = med["visionlens"], med["forward"] + passes[best]
    pgc = med.get("pytorch-grad-cam", float("nan"))
    print(f"{name:16s} {method:11s} {LAYERS[name]:12s} ours {ours:7.3f} s  grad-cam {pgc:7.3f} s  "
          f"floor {floor:7.3f} s (forward {med['forward']:.3f} + passes {passes[best]:.3f} at batch {best[6:]})  "
          f"ours/grad-cam {ours / pgc:5.2f}  ours/floor {ours / floor:5.2f}  "
          f"[warm-up round {first:.1f} s, then {args.warmup - 1} calls {search:.1f} s; load {os.getloadavg()[0]:.1f}]",
          flush=True)


def main() -> None:
    ap = _cli.Parser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=_cli.names(LAYERS), default=list(LAYERS),
                    help=f"comma-separated, of {','.join(LAYERS)} (default: all)")
    ap.add_argument("--methods", type=_cli.names(METHODS), default=list(METHODS),
                    help="comma-separated, of scorecam,ablationcam (default: both)")
    ap.add_argument("--size", type=_cli.positive_int, default=224)
    ap.add_argument("--images", type=_cli.positive_int, default=1)
    ap.add_argument("--repeats", type=_cli.positive_int, default=3)
    ap.add_argument("--warmup", type=_cli.positive_int, default=6,
                    help="untimed calls of visionlens (the first in a round of all)")
    ap.add_argument("--pgc-batch", type=_cli.positive_int, default=64)
    ap.add_argument("--sweep", type=_cli.positive_ints, default=[16, 32, 64, 128, 256],
                    help="comma-separated floor batch sizes (default 16,32,64,128,256)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-anchor", action="store_true",
                    help="leave pytorch-grad-cam out (its ratio prints nan): the floor ratio alone, in minutes less")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"{args.images} image(s) of {args.size} px on {device}, torch threads {torch.get_num_threads()}, "
          f"medians of {args.repeats} interleaved rounds")
    for name in args.models:
        for method in args.methods:
            _one(name, method, args, device)


if __name__ == "__main__":
    _cli.run(main)
