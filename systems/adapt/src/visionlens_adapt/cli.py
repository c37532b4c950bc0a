"""``visionlens adapt``: source-free domain adaptation (EIANet, ProULearn [reconstructed], peers)."""

from __future__ import annotations

import math
from pathlib import Path

from visionlens.checks import FlatList, comma_list, count, number
from visionlens.cli import add_json_option, record_summary

# the target set must hold a few k-NN neighbourhoods (EIANet / AaD use k = 4) and a batch
MIN_TARGET = 8
SEED = count(minimum=0, maximum=2**32 - 1)
MAX_IMAGES = 100_000  # a larger synthetic set would not fit in memory on a laptop


def _check_args(args, methods: list[str]) -> None:
    """The flag combinations argparse cannot check, before any work."""
    from visionlens.errors import InputError
    from .data import DATASETS, WORLD_STRENGTHS, class_count
    from .experiment import METHODS
    from .proulearn import budget_size

    if args.data not in DATASETS:
        raise InputError(f"unknown dataset {args.data!r}; choose from: {', '.join(DATASETS)}")
    if args.data == "world" and args.strength not in WORLD_STRENGTHS:
        raise InputError(f"--strength must be one of {', '.join(WORLD_STRENGTHS)}, got {args.strength!r}")
    if not args.outliers < 1:
        raise InputError(f"--outliers must be a fraction below 1, got {args.outliers}")
    classes = class_count(args.data)
    if any(METHODS[m][0] != "linear" for m in methods) and args.bottleneck < classes:
        raise InputError(f"--bottleneck must be at least the {classes} classes of {args.data} for the ETF head, "
                         f"got {args.bottleneck}")
    budget_size(args.n_target + math.ceil(args.outliers * args.n_target), args.budget)


def _cmd_adapt(args) -> int:
    import torch

    from .experiment import parse_methods

    methods, seeds = parse_methods(args.methods), list(args.seeds)
    _check_args(args, methods)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, methods, seeds)
    finally:
        torch.set_num_threads(threads)  # in-process callers keep their setting


def _run(args, methods: list[str], seeds: list[int]) -> int:
    from visionlens.core.progress import Progress
    from .data import load_shift, plant_outliers
    from .experiment import RunConfig, markdown_table, run_seed, summarise
    from .framework import AdaptConfig, SourceConfig
    from .proulearn import budget_size
    from .report import gradcam_figure, write_outputs

    cfg = RunConfig(backbone=args.backbone, bottleneck=args.bottleneck,
                    source=SourceConfig(epochs=args.source_epochs, batch_size=args.batch_size, lr=args.lr),
                    adapt=AdaptConfig(epochs=args.adapt_epochs, batch_size=args.batch_size, lr=args.lr),
                    budget=args.budget, temperature=args.temperature)
    figure_method = "eianet" if "eianet" in methods else None
    keep = (figure_method, "source:etf") if args.gradcam and figure_method else ()
    progress = Progress(len(seeds) * len(methods), "adapt", unit="run") if not args.quiet else None
    per_seed, figure = [], None
    for seed in seeds:
        shift = load_shift(args.data, seed, args.size, args.n_source, args.n_target, args.data_dir, args.strength)
        shift = plant_outliers(shift, args.outliers, seed)
        budget_size(len(shift.target_x), args.budget)  # fail early on an impossible budget
        result = run_seed(shift, methods, cfg, seed, keep, progress)
        per_seed.append({"seed": seed, "rows": result["rows"]})
        if figure is None and keep:
            n = min(args.gradcam, int((shift.target_y >= 0).sum()))
            x, y = shift.target_x[:n], shift.target_y[:n]
            figure = gradcam_figure(result["models"]["source:etf"], result["models"][figure_method], x, y,
                                    shift.class_names)
    summary = summarise(per_seed)
    title = (f"{args.data} ({shift.name}), backbone {args.backbone}, seeds {','.join(map(str, seeds))}, "
             f"{len(shift.source_x)} source / {len(shift.target_x)} target images ({args.outliers:.0%} planted outliers), "
             f"budget {args.budget:g}")
    table = markdown_table(summary, title)
    results = {"config": {k: v for k, v in vars(args).items() if k not in ("func", "json")},
               "summary": summary, "per_seed": per_seed}
    written = write_outputs(Path(args.out), results, table, figure)
    print(table)
    print("wrote " + ", ".join(str(p) for p in written))
    record_summary(args, {**results, "written": [str(p) for p in written]})
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "adapt", help="source-free domain adaptation: EIANet, ProULearn [reconstructed] and peers on a domain shift",
        description="Train a source model per seed, adapt it to the shifted target domain with every method, and "
                    "write results.json, table.md and a Grad-CAM before/after figure.")
    p.add_argument("--data", default="world", help="world, digits or fashion (Fashion-MNIST; see --data-dir)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST idx directory (default: the Debian package's)")
    p.add_argument("--strength", default="strong", help="world shift strength: mild, strong or severe")
    p.add_argument("--backbone", default="small-cnn", choices=["small-cnn", "mobilenet_v2"], help="feature extractor")
    p.add_argument("--methods", default="all", help="comma-separated methods or 'all'")
    p.add_argument("--seeds", type=comma_list(SEED), nargs="+", action=FlatList, default=[0, 1, 2],
                   help="seeds, space- or comma-separated (one source model per seed)")
    p.add_argument("--n-source", type=count(minimum=2, maximum=MAX_IMAGES), default=800, help="source images (default 800)")
    p.add_argument("--n-target", type=count(minimum=MIN_TARGET, maximum=MAX_IMAGES), default=500, help="target images (default 500)")
    p.add_argument("--size", type=count(minimum=16, maximum=512), default=32, help="image side in pixels (16-512)")
    p.add_argument("--source-epochs", type=count(), default=6, help="epochs of source training")
    p.add_argument("--adapt-epochs", type=count(), default=4, help="epochs of target adaptation")
    p.add_argument("--batch-size", type=count(minimum=2), default=64, help="images per training batch")
    p.add_argument("--lr", type=number(above=0), default=1e-2,
                   help="base learning rate (the reference uses 1e-3 on a pretrained ResNet-50)")
    p.add_argument("--bottleneck", type=count(), default=64, help="bottleneck width (ETF head: at least the classes)")
    p.add_argument("--temperature", type=number(minimum=0), default=0.01, help="EIANet attention temperature at target time")
    p.add_argument("--budget", type=number(above=0), default=0.05,
                   help="ProULearn labelling budget: fraction or count (one round)")
    p.add_argument("--outliers", type=number(minimum=0), default=0.02,
                   help="fraction (below 1) of pure-noise images planted in the target")
    p.add_argument("--gradcam", type=count(minimum=0), default=4, help="target images in the Grad-CAM figure (0: none)")
    p.add_argument("--threads", type=count(minimum=0), default=1, help="torch CPU threads (0: torch default)")
    p.add_argument("--out", default="adapt-out", help="output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_json_option(p)
    p.set_defaults(func=_cmd_adapt)
