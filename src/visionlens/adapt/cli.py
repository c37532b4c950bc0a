"""``visionlens adapt``: source-free domain adaptation (EIANet, ProULearn [reconstructed], peers)."""

from __future__ import annotations

from pathlib import Path


def _seeds(text: str) -> list[int]:
    from ..errors import InputError

    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise InputError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise InputError("--seeds is empty")
    return seeds


def _cmd_adapt(args) -> int:
    import torch

    from ..core.progress import Progress
    from ..errors import InputError
    from .data import DATASETS, load_shift, plant_outliers
    from .experiment import RunConfig, markdown_table, parse_methods, run_seed, summarise
    from .framework import AdaptConfig, SourceConfig
    from .proulearn import budget_size
    from .report import gradcam_figure, write_outputs

    if args.data not in DATASETS:
        raise InputError(f"unknown dataset {args.data!r}; choose from: {', '.join(DATASETS)}")
    methods, seeds = parse_methods(args.methods), _seeds(args.seeds)
    for name, value in (("--source-epochs", args.source_epochs), ("--adapt-epochs", args.adapt_epochs)):
        if value < 1:
            raise InputError(f"{name} must be >= 1, got {value}")
    if args.batch_size < 2:
        raise InputError(f"--batch-size must be >= 2, got {args.batch_size}")
    if args.size < 16:
        raise InputError(f"--size must be >= 16 pixels, got {args.size}")
    if args.threads:
        torch.set_num_threads(args.threads)
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
             f"budget {args.budget}")
    table = markdown_table(summary, title)
    results = {"config": {k: v for k, v in vars(args).items() if k != "func"},
               "summary": summary, "per_seed": per_seed}
    written = write_outputs(Path(args.out), results, table, figure)
    print(table)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "adapt", help="source-free domain adaptation: EIANet, ProULearn [reconstructed] and peers on a domain shift",
        description="Train a source model per seed, adapt it to the shifted target domain with every method, and "
                    "write results.json, table.md and a Grad-CAM before/after figure.")
    p.add_argument("--data", default="world", help="world, digits or fashion (Fashion-MNIST; see --data-dir)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST idx directory (default: the Debian package's)")
    p.add_argument("--strength", default="strong", help="world shift strength: mild, strong or severe")
    p.add_argument("--backbone", default="small-cnn", choices=["small-cnn", "mobilenet_v2"])
    p.add_argument("--methods", default="all", help="comma-separated methods or 'all'")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (one source model per seed)")
    p.add_argument("--n-source", type=int, default=800)
    p.add_argument("--n-target", type=int, default=500)
    p.add_argument("--size", type=int, default=32, help="image side in pixels")
    p.add_argument("--source-epochs", type=int, default=6)
    p.add_argument("--adapt-epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-2, help="base learning rate (the reference uses 1e-3 on a pretrained ResNet-50)")
    p.add_argument("--bottleneck", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.01, help="EIANet attention temperature at target time")
    p.add_argument("--budget", type=float, default=0.05, help="ProULearn labelling budget: fraction or count (one round)")
    p.add_argument("--outliers", type=float, default=0.02, help="fraction of pure-noise images planted in the target")
    p.add_argument("--gradcam", type=int, default=4, help="target images in the Grad-CAM figure (0: none)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch default)")
    p.add_argument("--out", default="adapt-out", help="output directory")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_adapt)
