"""``visionlens adapt``: source-free domain adaptation (EIANet, ProULearn [reconstructed], peers)."""

from __future__ import annotations

import math
from pathlib import Path

from visionlens.checks import SEED, DistinctSeeds, comma_list, count, number
from visionlens.cli import add_json_option, record_summary

# the target set must hold a few k-NN neighbourhoods (EIANet / AaD use k = 4) and a batch
MIN_TARGET = 8
GRADCAM_DEFAULT = 4  # target images in the Grad-CAM figure
MAX_IMAGES = 100_000  # a larger synthetic set would not fit in memory on a laptop


def _check_args(args, methods: list[str]) -> None:
    """The flag combinations argparse cannot check, before any work."""
    from visionlens.errors import InputError, display
    from .data import DATASETS, SYNTHETIC, WORLD_STRENGTHS, class_count
    from .experiment import METHODS
    from visionlens.outputs import same_file
    from .proulearn import budget_size

    if args.data not in DATASETS:
        raise InputError(f"unknown dataset {args.data!r}; choose from: {', '.join(DATASETS)}")
    if args.data == "world" and args.strength not in WORLD_STRENGTHS:
        raise InputError(f"--strength must be one of {', '.join(WORLD_STRENGTHS)}, got {args.strength!r}")
    if not args.outliers < 1:
        raise InputError(f"--outliers must be a fraction below 1, got {args.outliers}")
    if args.weights is not None and args.backbone in ("small-cnn", "mobilenet_v2"):
        raise InputError(f"--weights is for the resnet50, resnet101, timm:NAME and torchvision:NAME backbones, "
                         f"not {args.backbone}")
    if args.data_dir is not None and args.data in ("world", "digits", "list"):
        why = ("reads the images its lists name (relative to each list's folder)" if args.data == "list"
               else "is generated and reads no folder")
        raise InputError(f"--data-dir is for --data fashion and the benchmarks on disk (office31, officehome, visda, "
                         f"domainnet); --data {args.data} {why}")
    if args.data not in SYNTHETIC:
        same = (args.source is not None and args.target is not None and args.source.lower() == args.target.lower())
        if same:
            raise InputError(f"--source and --target are the same domain ({args.source}); adaptation needs a shift: "
                             "give two different domains")
        if args.source_list and args.target_list and same_file(args.source_list, args.target_list):
            raise InputError(f"--source-list and --target-list are the same file ({display(args.source_list)}); "
                             "adaptation needs a shift: give two different lists")
        return  # the class and image counts are known once the files are listed
    given = [f for f in ("source", "target", "source_list", "target_list") if getattr(args, f) is not None]
    if given:
        raise InputError(f"--{given[0].replace('_', '-')} is for the benchmarks on disk (office31, officehome, visda, "
                         f"domainnet, list), not --data {args.data}")
    classes = class_count(args.data)
    if any(METHODS[m][0] != "linear" for m in methods) and args.bottleneck < classes:
        raise InputError(f"--bottleneck must be at least the {classes} classes of {args.data} for the ETF head, "
                         f"got {args.bottleneck}")
    budget_size(args.n_target + math.ceil(args.outliers * args.n_target), args.budget)


def _check_out(args, methods: list[str]) -> None:
    """Refuse, before any work, a file of an output's name in ``--out`` that an earlier ``adapt``
    did not write (its results.json marks the folder as its own)."""
    from visionlens.outputs import check_out_dir, recorded_run
    from visionlens.outputs import check_not_input

    planned = ["results.json", "table.md"] + (["gradcam.png"] if args.gradcam and "eianet" in methods else [])
    out = Path(args.out)
    check_not_input([("--out", out / name) for name in planned],
                    [("--source-list", args.source_list), ("--target-list", args.target_list),
                     ("--weights", args.weights)])
    check_out_dir(out, planned, recorded_run(out, "results.json", planned, keys=("config", "per_seed")))


LEGACY = {"backbone": "small-cnn", "size": 32, "bottleneck": 64, "temperature": 0.01, "source_epochs": 6,
          "adapt_epochs": 4, "batch_size": 64, "lr": 1e-2}


def _resolve(args) -> dict:
    """Fill the flags left unset from the preset (``--preset``) or the built-in defaults; returns
    the preset's source and target settings (empty without a preset)."""
    from .data import SYNTHETIC
    from .presets import preset

    chosen = preset(args.preset, args.data) if args.preset else {"run": {}, "source": {}, "adapt": {}}
    for key, value in {**LEGACY, **chosen["run"]}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if chosen["source"]:  # explicit --source-epochs / --adapt-epochs / --batch-size / --lr still win
        for stage, flag in (("source", "source_epochs"), ("adapt", "adapt_epochs")):
            explicit = {"epochs": getattr(args, flag) if flag in args.explicit else None,
                        "batch_size": args.batch_size if "batch_size" in args.explicit else None,
                        "lr": args.lr if "lr" in args.explicit else None}
            chosen[stage].update({k: v for k, v in explicit.items() if v is not None})
        args.source_epochs, args.adapt_epochs = chosen["source"]["epochs"], chosen["adapt"]["epochs"]
        args.batch_size, args.lr = chosen["adapt"]["batch_size"], chosen["adapt"]["lr"]
    synthetic = args.data in SYNTHETIC
    args.n_source = args.n_source if args.n_source is not None or not synthetic else 800
    args.n_target = args.n_target if args.n_target is not None or not synthetic else 500
    args.outliers = args.outliers if args.outliers is not None else (0.02 if synthetic else 0.0)
    return chosen


def _cmd_adapt(args) -> int:
    import torch

    from visionlens.models.zoo import resolve_device
    from .experiment import parse_methods
    from .network import check_backbone

    args.device = str(resolve_device(args.device))
    args.explicit = {k for k in ("source_epochs", "adapt_epochs", "batch_size", "lr") if getattr(args, k) is not None}
    chosen = _resolve(args)
    methods, seeds = parse_methods(args.methods), list(args.seeds)
    gradcam_given, args.gradcam = args.gradcam is not None, GRADCAM_DEFAULT if args.gradcam is None else args.gradcam
    _check_args(args, methods)
    _check_out(args, methods)
    if gradcam_given:
        _warn_gradcam(args, methods)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        check_backbone(args.backbone, args.weights)  # not a CNN, or weights that do not fit: before any data is read
        return _run(args, methods, seeds, chosen)
    finally:
        torch.set_num_threads(threads)  # in-process callers keep their setting


def _warn_gradcam(args, methods: list[str]) -> None:
    """``--gradcam N`` without eianet among the methods (the figure shows the ETF source model
    before and after EIANet): one ``warning:`` line, no figure."""
    import warnings

    from visionlens.errors import VisionlensWarning

    if args.gradcam and "eianet" not in methods:
        warnings.warn(f"--gradcam {args.gradcam} draws the Grad-CAM figure before and after eianet, which --methods "
                      "does not run: no gradcam.png is written (add eianet to --methods)", VisionlensWarning,
                      stacklevel=1)


def _load(args, seed: int):
    """The domain shift of ``--data`` for ``seed`` (real datasets: streamed from their files)."""
    from .data import SYNTHETIC, load_shift
    from .imagelists import benchmark_shift

    if args.data in SYNTHETIC:
        return load_shift(args.data, seed, args.size, args.n_source, args.n_target, args.data_dir, args.strength)
    return benchmark_shift(args.data, args.data_dir, args.source, args.target, args.size, args.n_source,
                           args.n_target, seed, args.workers, args.source_list, args.target_list,
                           known=args.checked, on_skip=lambda path, reason: _skip(args, path, reason))


def _skip(args, path: str, reason: str) -> None:
    """One ``error:`` line for an image left out before training (the run goes on; exit 1)."""
    import sys

    args.skipped[path] = reason
    print(f"error: {reason}; left out of the run", file=sys.stderr, flush=True)


def _configs(args, chosen: dict):
    from .framework import AdaptConfig, SourceConfig

    if chosen["source"]:
        return SourceConfig(**chosen["source"]), AdaptConfig(**chosen["adapt"])
    return (SourceConfig(epochs=args.source_epochs, batch_size=args.batch_size, lr=args.lr),
            AdaptConfig(epochs=args.adapt_epochs, batch_size=args.batch_size, lr=args.lr))


def _run(args, methods: list[str], seeds: list[int], chosen: dict) -> int:
    import torch

    from visionlens.core.progress import Progress
    from visionlens.errors import InputError
    from .data import plant_outliers
    from .experiment import METHODS, RunConfig, markdown_table, run_seed, summarise
    from .framework import take
    from .presets import SOURCES
    from .proulearn import budget_size
    from .report import gradcam_figure, write_outputs

    source_cfg, adapt_cfg = _configs(args, chosen)
    cfg = RunConfig(backbone=args.backbone, backbone_weights=args.weights, device=args.device, bottleneck=args.bottleneck,
                    source=source_cfg, adapt=adapt_cfg, budget=args.budget, temperature=args.temperature)
    figure_method = "eianet" if "eianet" in methods else None
    keep = (figure_method, "source:etf") if args.gradcam and figure_method else ()
    progress = None
    per_seed, figure = [], None
    args.checked, args.skipped = {}, {}  # images decoded before training: {path: reason or None}; the unreadable
    for seed in seeds:
        shift = plant_outliers(_load(args, seed), args.outliers, seed)
        if progress is None and not args.quiet:  # after the first check of the images (its errors come first)
            progress = Progress(len(seeds) * len(methods), "adapt", unit="run")
        if len(shift.target_x) < MIN_TARGET:
            raise InputError(f"the target domain has {len(shift.target_x)} readable images; adaptation needs at "
                             f"least {MIN_TARGET}")
        if any(METHODS[m][0] != "linear" for m in methods) and args.bottleneck < shift.num_classes:
            raise InputError(f"--bottleneck must be at least the {shift.num_classes} classes of {args.data} for the "
                             f"ETF head, got {args.bottleneck}")
        budget_size(len(shift.target_x), args.budget)  # fail early on an impossible budget
        result = run_seed(shift, methods, cfg, seed, keep, progress)
        per_seed.append({"seed": seed, "rows": result["rows"]})
        if figure is None and keep:
            n = min(args.gradcam, int((shift.target_y >= 0).sum()))
            x, y = take(shift.target_x, torch.arange(n)), shift.target_y[:n]
            figure = gradcam_figure(result["models"]["source:etf"].cpu(), result["models"][figure_method].cpu(), x, y,
                                    shift.class_names)
    summary = summarise(per_seed)
    title = (f"{args.data} ({shift.name}), backbone {args.backbone}, seeds {','.join(map(str, seeds))}, "
             f"{len(shift.source_x)} source / {len(shift.target_x)} target images ({args.outliers:.0%} planted outliers), "
             f"budget {args.budget:g}" + (f", preset {args.preset}" if args.preset else ""))
    table = markdown_table(summary, title)
    if args.skipped:
        table += f"\n\n{len(args.skipped)} unreadable image(s) left out (listed in results.json)"
    config = {k: v for k, v in vars(args).items() if k not in ("func", "json", "explicit", "checked", "skipped")}
    config.update(source_config=source_cfg.__dict__, adapt_config=adapt_cfg.__dict__,
                  preset_source=SOURCES.get(args.preset))
    results = {"config": config, "summary": summary, "per_seed": per_seed,
               "skipped": [{"path": p, "reason": r} for p, r in sorted(args.skipped.items())]}
    written = write_outputs(Path(args.out), results, table, figure, earlier=_earlier_outputs(Path(args.out)))
    print(table)
    print("wrote " + ", ".join(str(p) for p in written))
    record_summary(args, {**results, "written": [str(p) for p in written]})
    return 1 if args.skipped else 0


OUTPUTS = ("results.json", "table.md", "gradcam.png")


def _earlier_outputs(out: Path) -> set[str]:
    """The outputs an earlier ``adapt`` wrote in ``out`` (its results.json marks the folder as its
    own): the files of them this run does not write again are removed."""
    from visionlens.outputs import recorded_run

    return recorded_run(out, "results.json", OUTPUTS, keys=("config", "per_seed"))


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "adapt", help="source-free domain adaptation: EIANet, ProULearn [reconstructed] and peers on a domain shift",
        description="Train a source model per seed, adapt it to the shifted target domain with every method, and "
                    "write results.json, table.md and (when eianet is among the methods) a Grad-CAM before/after "
                    "figure.")
    p.add_argument("--data", default="world",
                   help="world, digits, fashion (generated or packaged shifts), or a benchmark on disk: office31, "
                        "officehome, visda, domainnet, list (see --data-dir, --source, --target)")
    p.add_argument("--data-dir", default=None,
                   help="the benchmark's folder (or Fashion-MNIST's idx directory; default: the Debian package's)")
    p.add_argument("--source", default=None, help="source domain folder (office31, officehome, domainnet; visda: train)")
    p.add_argument("--target", default=None, help="target domain folder (office31, officehome, domainnet; visda: validation)")
    p.add_argument("--source-list", default=None, help="--data list: source image list ('relative/path label' lines)")
    p.add_argument("--target-list", default=None, help="--data list: target image list ('relative/path label' lines)")
    p.add_argument("--preset", default=None,
                   help="a paper's schedule: shot or eianet (values and sources in docs/adapt.md); explicit flags win")
    p.add_argument("--workers", type=count(minimum=0), default=0, help="DataLoader processes decoding images (default 0)")
    p.add_argument("--device", default="auto", help="torch device of the network (auto: CUDA when available)")
    p.add_argument("--strength", default="strong", help="world shift strength: mild, strong or severe")
    p.add_argument("--backbone", default=None,
                   help="small-cnn (default), mobilenet_v2, resnet50, resnet101, or a CNN spec timm:NAME / torchvision:NAME")
    p.add_argument("--weights", default=None,
                   help="state-dict file for a resnet50/resnet101/spec backbone (default: the library's pretrained weights)")
    p.add_argument("--methods", default="all", help="comma-separated methods or 'all'")
    p.add_argument("--seeds", type=comma_list(SEED), nargs="+", action=DistinctSeeds, default=[0, 1, 2],
                   help="seeds, space- or comma-separated (one source model per seed)")
    p.add_argument("--n-source", type=count(minimum=2, maximum=MAX_IMAGES), default=None,
                   help="source images (default 800; a benchmark: all)")
    p.add_argument("--n-target", type=count(minimum=MIN_TARGET, maximum=MAX_IMAGES), default=None,
                   help="target images (default 500; a benchmark: all)")
    p.add_argument("--size", type=count(minimum=16, maximum=512), default=None,
                   help="image side in pixels (16-512; default 32, presets 224)")
    p.add_argument("--source-epochs", type=count(), default=None, help="epochs of source training (default 6)")
    p.add_argument("--adapt-epochs", type=count(), default=None, help="epochs of target adaptation (default 4)")
    p.add_argument("--batch-size", type=count(minimum=2), default=None, help="images per training batch (default 64)")
    p.add_argument("--lr", type=number(above=0), default=None,
                   help="base learning rate (default 1e-2; the references use 1e-3 on a pretrained ResNet-50)")
    p.add_argument("--bottleneck", type=count(), default=None, help="bottleneck width (default 64; ETF head: at least the classes)")
    p.add_argument("--temperature", type=number(minimum=0), default=None,
                   help="EIANet attention temperature at target time (default 0.01)")
    p.add_argument("--budget", type=number(above=0), default=0.05,
                   help="ProULearn labelling budget: fraction or count (one round)")
    p.add_argument("--outliers", type=number(minimum=0), default=None,
                   help="fraction (below 1) of pure-noise images planted in the target (default 0.02; a benchmark: 0)")
    p.add_argument("--gradcam", type=count(minimum=0), default=None,
                   help=f"target images in the Grad-CAM figure gradcam.png, drawn when --methods includes eianet "
                        f"(before/after EIANet; default {GRADCAM_DEFAULT}, 0: none)")
    p.add_argument("--threads", type=count(minimum=0), default=1, help="torch CPU threads (0: torch default)")
    p.add_argument("--out", default="adapt-out", help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_json_option(p)
    p.set_defaults(func=_cmd_adapt)
