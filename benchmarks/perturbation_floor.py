"""Score-CAM and Ablation-CAM against pytorch-grad-cam and against their floor, in one interleaved run (issue 29).

Usage: python benchmarks/perturbation_floor.py [--models mobilenet_v2,resnet18,resnet50,convnext_tiny,efficientnet_b0]
                                               [--methods scorecam,ablationcam] [--size 224] [--images 1]
                                               [--repeats 3] [--pgc-batch 64] [--sweep 16,32,64,128] [--device cpu]

Torchvision models with random weights (seed 0), each at its last convolutional stage (MobileNetV2
at ``features.16`` as in the issue). Per model and method, round by round (medians):
  visionlens       ``ScoreCAM`` / ``AblationCAM`` with their defaults (the fastest checked
                   inference copy, batch size from the device's memory), whole call;
  pytorch-grad-cam the same method, ``batch_size = --pgc-batch``;
  floor            the masked (Score-CAM) or ablated (Ablation-CAM: the rest of the network after
                   the layer, fed the ablated activations) forward passes alone, one per channel
                   and image, on the same fastest checked copy, at the best of ``--sweep``.
It prints seconds and the ratios visionlens / pytorch-grad-cam (goal <= 1) and visionlens / floor
(goal <= 1.15). The first call per model chooses and keeps the inference copy (a few probe
passes); a warm-up round, untimed, pays it, and its time is printed apart.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from visionlens import AblationCAM, ScoreCAM
from visionlens.core.inference import InferenceCopy, fastest_checked_copy

LAYERS = {"mobilenet_v2": "features.16", "resnet18": "layer4", "resnet50": "layer4", "convnext_tiny": "features.7",
          "efficientnet_b0": "features.8"}


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
def _ablation_floor(copy, layer: str, acts: torch.Tensor, batch: int) -> None:
    """Ablation-CAM's ablated forward passes alone: the network after ``layer`` on ``batch``
    activations at a time (an 8 px input drives the layers before it, whose output is replaced)."""
    b, k = acts.shape[:2]
    ready = acts[:1].expand(batch, *acts.shape[1:]).contiguous()
    module = copy.inner.get_submodule(layer) if isinstance(copy, InferenceCopy) else copy.get_submodule(layer)
    feed = acts.new_zeros(1, 3, 8, 8)
    for start in range(0, b * k, batch):
        part = ready[:min(batch, b * k - start)]
        handle = module.register_forward_hook(lambda m, i, o, part=part: part)
        try:
            copy(feed)
        finally:
            handle.remove()


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

    ours = (ScoreCAM if method == "scorecam" else AblationCAM)(model, layer)
    layer_module = model.get_submodule(layer)
    cam = _pgc(method, model, layer_module, args.pgc_batch)
    targets = [ClassifierOutputTarget(int(c)) for c in classes]
    with torch.no_grad():
        acts = _activations(model, layer_module, x)
    keep = (layer,) if method == "ablationcam" else ()
    copy = fastest_checked_copy(model, x, 64, keep=keep)[0]
    sweep = [int(s) for s in args.sweep.split(",")]
    floor = ({f"floor@{b}": (lambda b=b: _score_floor(copy, x, acts, b)) for b in sweep} if method == "scorecam" else
             {f"floor@{b}": (lambda b=b: _ablation_floor(copy, layer, acts, b)) for b in sweep})
    return {"visionlens": lambda: ours(x, classes), "pytorch-grad-cam": lambda: cam(input_tensor=x, targets=targets),
            **floor}


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
    times = {k: [] for k in contenders}
    for _ in range(args.repeats):
        for key, fn in contenders.items():
            times[key].append(_timed(fn, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    floors = {k: v for k, v in med.items() if k.startswith("floor@")}
    best = min(floors, key=floors.get)
    ours, pgc, floor = med["visionlens"], med["pytorch-grad-cam"], floors[best]
    print(f"{name:16s} {method:11s} {LAYERS[name]:12s} ours {ours:7.2f} s  grad-cam {pgc:7.2f} s  "
          f"floor {floor:7.2f} s ({best})  ours/grad-cam {ours / pgc:5.2f}  ours/floor {ours / floor:5.2f}  "
          f"[warm-up round {first:.1f} s; load {os.getloadavg()[0]:.1f}]", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(LAYERS))
    ap.add_argument("--methods", default="scorecam,ablationcam")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pgc-batch", type=int, default=64)
    ap.add_argument("--sweep", default="16,32,64,128")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"{args.images} image(s) of {args.size} px on {device}, torch threads {torch.get_num_threads()}, "
          f"medians of {args.repeats} interleaved rounds")
    for name in args.models.split(","):
        for method in args.methods.split(","):
            _one(name, method, args, device)


if __name__ == "__main__":
    main()
