"""CAM-family speed against the anchors and the physical floor, in one interleaved run.

Usage: python benchmarks/cam_speed.py [--device cuda] [--batches 1 16 128] [--repeats 15]
                                      [--models mobilenet_v2 resnet50] [--scorecam-layer ...]
                                      [--tables gradcam scorecam ablationcam]

For each model (torchvision ResNet-50 with random weights; the zoo's MobileNetV2) and batch
size, at 224x224, it times round by round (contenders interleaved, medians reported):
  forward     plain inference forward pass
  floor       inference forward to the layer + forward/backward of the rest w.r.t. the layer
              output only (no graph before the layer, no parameter gradients)
  visionlens / pytorch-grad-cam / torchcam / captum   Grad-CAM, maps at input resolution
then K = 5 classes per image (visionlens: one forward + one batched backward; the anchors: what
their API offers: one call per class). Then, at batch 1, MobileNetV2 only, in max(3, --repeats // 5)
rounds (these calls are slower):
  Score-CAM at ``--scorecam-layer``:
    visionlens           on its BatchNorm-folded scoring copy
    visionlens compiled  the same copy compiled (``compile=True``; compiling happens in the
                         untimed warm-up round)
    visionlens exact     on the model itself (``inference_copy=False``)
    pytorch-grad-cam
  Ablation-CAM at ``features`` (1,280 channels), ``batch_size=64``:
    visionlens              as shipped: each ablated copy runs only the rest of the network after
                            the layer (the traced tail; else a small stand-in input; else the full input)
    visionlens, full input  the same with the traced tail and the stand-in turned off: every
                            ablated copy re-runs the whole network (the checked inference copy)
                            on the full input
    pytorch-grad-cam
On CUDA it also reports peak memory. Anchors that are not installed are skipped.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam's progress bars (read when tqdm is imported)

import torch
import torch.nn.functional as F

import _cli

K = 5


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    fn()
    _sync(device)
    ms = (time.perf_counter() - t0) * 1000
    mem = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return ms, mem


def run_round_robin(contenders: dict, repeats: int, device) -> dict:
    for fn in contenders.values():  # warm-up
        fn()
    samples = {k: [] for k in contenders}
    mems = {k: float("nan") if device.type != "cuda" else 0.0 for k in contenders}
    for _ in range(repeats):
        for k, fn in contenders.items():
            ms, mem = timed(fn, device)
            samples[k].append(ms)
            if device.type == "cuda":
                mems[k] = max(mems[k], mem)
    return {k: (statistics.median(v), mems[k]) for k, v in samples.items()}


def floor_fn(model, layer, x):
    def run():
        store = {}

        def hook(m, i, o):
            torch.set_grad_enabled(True)
            store["a"] = o.detach().requires_grad_(True)
            return store["a"]

        h = layer.register_forward_hook(hook)
        try:
            with torch.no_grad():
                score = model(x).max(1).values.sum()
            torch.autograd.grad(score, store["a"])
        finally:
            h.remove()

    return run


def anchors(model, layer, x, classes):
    """Grad-CAM callables of the installed anchor libraries for classes ``(B,)`` or ``(B, K)``."""
    out = {}
    multi = classes.dim() == 2
    size = x.shape[-2:]
    try:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cam = pgc.GradCAM(model=model, target_layers=[layer])

        def pgc_run():
            for col in (classes.T if multi else classes[None]):
                cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in col])

        out["pytorch-grad-cam"] = pgc_run
    except ImportError:
        pass
    try:
        from torchcam.methods import GradCAM as TorchCAMGradCAM

        def torchcam_run():
            with TorchCAMGradCAM(model, layer, input_shape=tuple(x.shape[1:])) as extractor:
                for col in (classes.T if multi else classes[None]):
                    scores = model(x)
                    maps = extractor(col.tolist(), scores)[0]
                    F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)

        out["torchcam"] = torchcam_run
    except ImportError:
        pass
    try:
        from captum.attr import LayerAttribution, LayerGradCam

        lgc = LayerGradCam(model, layer)

        def captum_run():
            for col in (classes.T if multi else classes[None]):
                attr = lgc.attribute(x, target=col.tolist(), relu_attributions=True)
                LayerAttribution.interpolate(attr, tuple(size), "bilinear")

        out["captum"] = captum_run
    except ImportError:
        pass
    return out


def table(title, results, base_key):
    print(f"\n{title}")
    print(f"  {'contender':26s} {'median ms':>10s} {'peak MiB':>9s} {'/ ' + base_key:>14s}")
    base = results[base_key][0]
    for k, (ms, mem) in results.items():
        mem_text = f"{mem:9.0f}" if mem == mem else f"{'n/a':>9s}"
        print(f"  {k:26s} {ms:10.1f} {mem_text} {ms / base:14.2f}")


def main():
    parser = _cli.Parser(description="CAM-family speed benchmark")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=_cli.positive_int, nargs="+", default=[1, 16, 128],
                        help="Grad-CAM batch sizes (default 1 16 128)")
    parser.add_argument("--repeats", type=_cli.positive_int, default=15,
                        help="timed rounds of the Grad-CAM tables (default 15); the Score-CAM and Ablation-CAM "
                             "tables run max(3, REPEATS // 5) rounds")
    parser.add_argument("--models", nargs="+", choices=["mobilenet_v2", "resnet50"], default=["mobilenet_v2", "resnet50"])
    parser.add_argument("--scorecam-layer", default="features.16", help="MobileNetV2 layer for the Score-CAM row")
    parser.add_argument("--tables", nargs="+", choices=["gradcam", "scorecam", "ablationcam"],
                        default=["gradcam", "scorecam", "ablationcam"], help="which tables to time (default: all)")
    args = parser.parse_args()
    device = torch.device(args.device)
    from visionlens import AblationCAM, GradCAM, ScoreCAM
    from visionlens.models import MobileNetV2

    print(f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor() or 'cpu'}"
          f", torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    torch.manual_seed(0)
    models = {}
    if "mobilenet_v2" in args.models:
        models["mobilenet_v2"] = (MobileNetV2().to(device).eval(), "features")
    if "resnet50" in args.models:
        import torchvision

        models["resnet50"] = (torchvision.models.resnet50().to(device).eval(), "layer4")
    for name, (model, layer_name) in models.items():
        if "gradcam" not in args.tables:
            break
        layer = dict(model.named_modules())[layer_name]
        for b in args.batches:
            x = torch.randn(b, 3, 224, 224, device=device)
            classes = torch.randint(0, 1000, (b,), device=device)
            ours = GradCAM(model, layer_name)

            def forward():
                with torch.inference_mode():
                    model(x)

            contenders = {"forward": forward, "floor": floor_fn(model, layer, x),
                          "visionlens": lambda: ours(x, classes), **anchors(model, layer, x, classes.cpu())}
            table(f"{name} Grad-CAM, batch {b}", run_round_robin(contenders, args.repeats, device), "visionlens")
            multi = torch.randint(0, 1000, (b, K), device=device)
            contenders = {"visionlens 1 class": lambda: ours(x, classes), f"visionlens {K} classes": lambda: ours(x, multi),
                          **{f"{k} {K} classes": v for k, v in anchors(model, layer, x, multi.cpu()).items()}}
            table(f"{name} Grad-CAM, {K} classes per image, batch {b}", run_round_robin(contenders, args.repeats, device),
                  "visionlens 1 class")
    if "mobilenet_v2" in models:
        model = models["mobilenet_v2"][0]
        x = torch.randn(1, 3, 224, 224, device=device)
        layer = dict(model.named_modules()).get(args.scorecam_layer)
        if layer is None:
            _cli.fail(f"--scorecam-layer {args.scorecam_layer}: MobileNetV2 has no such layer (e.g. features.16)")
    if "mobilenet_v2" in models and "scorecam" in args.tables:
        contenders = {"visionlens": lambda: ScoreCAM(model, args.scorecam_layer, batch_size=64)(x),
                      "visionlens compiled": lambda: ScoreCAM(model, args.scorecam_layer, batch_size=64, compile=True)(x),
                      "visionlens exact": lambda: ScoreCAM(model, args.scorecam_layer, batch_size=64, inference_copy=False)(x)}
        try:
            import pytorch_grad_cam as pgc

            ref = pgc.ScoreCAM(model=model, target_layers=[layer])
            ref.batch_size = 64
            contenders["pytorch-grad-cam"] = lambda: ref(input_tensor=x, targets=None)
        except ImportError:
            pass
        table(f"mobilenet_v2 Score-CAM at {args.scorecam_layer}, batch 1", run_round_robin(contenders, max(3, args.repeats // 5), device),
              "visionlens")
    if "mobilenet_v2" in models and "ablationcam" in args.tables:
        full_input = AblationCAM(model, "features", batch_size=64)
        for shortcut in ("_traced", "_feed"):  # no traced tail, no stand-in: the full input for every ablated copy
            if not hasattr(full_input, shortcut):
                _cli.fail(f"AblationCAM has no {shortcut} any more: update the 'full input' row of {__file__}")
            setattr(full_input, shortcut, lambda *args: None)
        contenders = {"visionlens": lambda: AblationCAM(model, "features", batch_size=64)(x),
                      "visionlens, full input": lambda: full_input(x)}
        try:
            import pytorch_grad_cam as pgc

            ablation = pgc.AblationCAM(model=model, target_layers=[model.features], batch_size=64)
            contenders["pytorch-grad-cam"] = lambda: ablation(input_tensor=x, targets=None)
        except ImportError:
            pass
        table("mobilenet_v2 Ablation-CAM at features, batch 1", run_round_robin(contenders, max(3, args.repeats // 5), device),
              "visionlens")


if __name__ == "__main__":
    _cli.run(main)
