"""``visionlens concepts``: TraNCE / ICE concept discovery for classes at one layer."""

from __future__ import annotations

import sys

from ..checks import SEED, count, number

EXIT_FAILED_IMAGES = 1  # as visionlens.cli's: some images or classes were left out, each named on one line


def _cmd_concepts(args) -> int:
    import torch

    from ..errors import InputError
    from ..models import load_model
    from .run import parse_classes, run_concepts
    from .sources import open_source

    for flag, value in (("--n-concepts", args.n_concepts), ("--images", args.images), ("--views", args.views)):
        if value < 1:
            raise InputError(f"{flag} must be at least 1, got {value}")
    torch.manual_seed(args.seed)
    model = load_model(args.model, device=args.device, weights=args.weights)
    data = args.data or ("world:val" if args.model.startswith("world") else "samples")
    source = open_source(data, model, views=args.views, seed=args.world_seed, split=args.split,
                         label_column=args.label_column)
    classes = parse_classes(args.classes, source.classes())
    options = {"seed": args.seed}
    if args.reducer == "vae":
        options.update(hidden=args.vae_hidden, beta=args.vae_beta, epochs=args.vae_epochs, lr=args.vae_lr,
                       patience=args.vae_patience, init=args.vae_init,
                       clamp=not args.vae_signed, orient=not args.vae_no_orient)
    elif args.reducer == "nmf":
        options.update(max_iter=args.nmf_iter)
    summary = run_concepts(
        model, args.layer, source, classes, args.out, reducer=args.reducer, n_concepts=args.n_concepts,
        reducer_options=options, n_images=args.images * source.views_per_item,
        batch_size=args.batch_size, weight_mode=args.concept_weights, coherence=args.coherence, pooled=args.pooled,
        threshold=args.threshold, seed=args.seed, progress=not args.quiet, data_name=data,
    )
    _print_table(summary)
    for message in summary["unreadable"]:
        print(f"error: {message} (left out; replace it and re-run to use it)", file=sys.stderr)
    for message in summary["skipped"].values():
        print(f"error: {message}; class skipped", file=sys.stderr)
    print(f"wrote {args.out}/concepts.json, metrics.csv, index.html and {len(summary['classes']) * 2} concept sheets "
          f"({summary['wall_s']:.0f} s)")
    args.json_summary = summary  # what --json prints (see cli.record_summary; no upward import)
    return EXIT_FAILED_IMAGES if summary["unreadable"] or summary["skipped"] else 0


def _print_table(summary: dict) -> None:
    """Per class and their mean: Fidelity, Coherence and Faith (and the best-part IoU when known)."""
    from .sheet import fixed

    def row(label: str, s: dict) -> str:
        return f"{label:>28s}  {fixed(s['fidelity']):>8s}  {fixed(s['coherence']):>9s}  {fixed(s['faith']):>6s}"

    print(f"{'class':>28s}  fidelity  coherence  faith")
    for cls, r in summary["classes"].items():
        print(row(cls + ": " + r["name"][:22], r["scores"]))
    a = summary["average"]
    print(row("mean", a) + (f"  best-part IoU {a['best_part_iou']:.3f} (random {a['random_iou']:.3f})"
                            if "best_part_iou" in a else ""))


def register(subparsers) -> None:
    p = subparsers.add_parser("concepts", help="discover concepts (TraNCE VAE or ICE NMF) for classes; write concept "
                                               "sheets, Fidelity / Coherence / Faith")
    p.add_argument("--model", default="world-cnn", help="zoo model or model spec (timm:NAME, torchvision:NAME, hf:ID_OR_DIR)")
    p.add_argument("--weights", default=None, help="local state-dict file for the model (as in explain)")
    p.add_argument("--layer", default=None, help="layer with a (B, C, H, W) output after a ReLU (default: the model's)")
    p.add_argument("--data", default=None, help="world[:split] (default for world models, split val), samples (the "
                                                "bundled photos) or a folder of labelled images, as evaluate takes it: "
                                                "labels.csv (file,class_index), class sub-folders (ImageFolder) or a "
                                                "Hugging Face dataset saved on disk")
    p.add_argument("--split", default=None, help="with a saved Hugging Face DatasetDict: the split to read")
    p.add_argument("--label-column", default=None, help="with a Hugging Face dataset: the label column (class "
                                                        "indices); default: its first ClassLabel")
    p.add_argument("--classes", default="all", help="class indices and ranges, e.g. 0,3 or 151-155 (default all)")
    p.add_argument("--reducer", default="vae", help="vae (TraNCE) or nmf (ICE)")
    p.add_argument("--n-concepts", type=count(maximum=1000), default=10, help="number of concepts c' (default 10)")
    p.add_argument("--images", type=count(maximum=100_000), default=32, help="images per class (photos: before --views)")
    p.add_argument("--views", type=count(maximum=8), default=1, help="crops/flips per photo, 1-8 (for one photo per class)")
    p.add_argument("--pooled", action="store_true", help="fit one reducer on all chosen classes (a group of related "
                                                         "classes), scored per class")
    p.add_argument("--concept-weights", default="autograd", choices=["autograd", "finite-difference"],
                   help="class-concept weights: autograd (default) or ICE's central finite difference")
    p.add_argument("--coherence", default="pearson", choices=["pearson", "stability", "agreement"],
                   help="Coherence candidate (default pearson; see docs/concepts.md)")
    p.add_argument("--threshold", type=number(minimum=0, maximum=0.99), default=0.5,
                   help="heat-map threshold lambda for views and IoU (0 to 0.99)")
    p.add_argument("--vae-hidden", type=count(minimum=0, maximum=65536), default=64, help="VAE decoder hidden width (0: linear decoder)")
    p.add_argument("--vae-beta", type=number(minimum=0), default=1e-3, help="VAE KL weight beta")
    p.add_argument("--vae-epochs", type=count(maximum=100_000), default=100,
                   help="TraNCE VAE epoch cap (training stops early on a held-out loss, see --vae-patience)")
    p.add_argument("--vae-patience", type=count(minimum=1, maximum=100_000), default=5,
                   help="stop the VAE after this many epochs without a 0.1%% better held-out loss")
    p.add_argument("--vae-init", default="random", choices=["random", "pca"],
                   help="VAE start: random (PyTorch's initialisation) or pca (a truncated-SVD solution: "
                        "about 1.5x faster training and the same Faith, but on the world CNN its concepts "
                        "overlap object parts about half as well)")
    p.add_argument("--vae-lr", type=number(above=0, maximum=10), default=1e-2, help="TraNCE VAE learning rate")
    p.add_argument("--vae-signed", action="store_true", help="keep negative VAE concept scores (default: clamp at 0)")
    p.add_argument("--vae-no-orient", action="store_true", help="keep each VAE latent's training sign (default: "
                                                                 "flip latents whose large excursions are negative)")
    p.add_argument("--nmf-iter", type=count(maximum=1_000_000), default=200, help="ICE NMF iterations")
    p.add_argument("--seed", type=SEED, default=0, help="random seed")
    p.add_argument("--world-seed", type=count(minimum=0), default=0, help="seed of the synthetic world")
    p.add_argument("--batch-size", type=count(maximum=4096), default=32, help="images per forward pass")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    p.add_argument("--out", default="concepts-out", help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_concepts)
