"""``visionlens sata evaluate``: SATA vs the plain ViT (and matched-budget peers) on clean and
corrupted synthetic-world images under class-sorted, shuffled and batch-size-1 protocols."""

from __future__ import annotations

import os
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("sata", help="SATA token plug-in for ViTs: batch-independent evaluation")
    sub = p.add_subparsers(dest="sata_command", required=True)
    e = sub.add_parser("evaluate", help="accuracy, mCE, FFN savings and CPU latency under three batching protocols")
    e.add_argument("--model", default="world-vit", help="a WorldViT zoo model (default: world-vit)")
    e.add_argument("--images", type=int, default=50, help="test images of the synthetic world (default 50)")
    e.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds for the batched protocols")
    e.add_argument("--bs1-seeds", type=int, nargs="+", default=[0], help="seeds for the batch-size-1 protocol")
    e.add_argument("--batch", type=int, default=16, help="batch size of the sorted and shuffled protocols")
    e.add_argument("--gamma", type=float, default=0.7, help="fraction of blocks without SATA (default 0.7)")
    e.add_argument("--alpha", type=float, default=1.0, help="split bound factor (default 1.0)")
    e.add_argument("--corruptions", nargs="+", default=None, help="subset of the corruption suite (default: all)")
    e.add_argument("--severities", type=int, nargs="+", default=[1, 2, 3, 4, 5], help="severities 1-5")
    e.add_argument("--latency-images", type=int, default=32, help="images timed for the CPU latency")
    e.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    e.add_argument("--out", required=True, help="Markdown file for the table (a .json with the raw counts is written next to it)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_evaluate)


def _evaluate(args) -> int:
    import torch

    from ..errors import InputError
    from .corruptions import CORRUPTIONS, SEVERITIES
    from .evaluate import EvalSettings, raw_to_json, run_evaluation, table_markdown

    corruptions = tuple(args.corruptions) if args.corruptions else CORRUPTIONS
    bad = [c for c in corruptions if c not in CORRUPTIONS]
    if bad:
        raise InputError(f"unknown corruption {bad[0]!r}; choose from: {', '.join(CORRUPTIONS)}")
    if any(s not in SEVERITIES for s in args.severities):
        raise InputError(f"severities must be in 1-5, got {args.severities}")
    if args.images < 2 or args.batch < 1 or args.latency_images < 1:
        raise InputError("--images must be >= 2, --batch and --latency-images >= 1")
    if not 0 <= args.gamma <= 1:
        raise InputError(f"--gamma must lie in [0, 1], got {args.gamma}")
    if not args.model.startswith("world-vit"):
        raise InputError(f"--model must be a WorldViT classifier of the synthetic world (world-vit), got {args.model!r}")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise InputError(f"output folder {out.parent} does not exist; create it first")
    torch.set_num_threads(max(1, args.threads))
    settings = EvalSettings(images=args.images, seeds=tuple(args.seeds), bs1_seeds=tuple(args.bs1_seeds),
                            batch=args.batch, gamma=args.gamma, alpha=args.alpha, corruptions=corruptions,
                            severities=tuple(sorted(set(args.severities))), model=args.model,
                            latency_images=min(args.latency_images, args.images))
    raw = run_evaluation(settings, progress=not args.quiet)
    table = table_markdown(raw)
    json_path = out.with_suffix(".json")
    for path, text in ((out, table), (json_path, raw_to_json(raw))):  # write-then-rename: no half-written files
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    print(table, end="")
    print(f"wrote {out} and {json_path}")
    return 0
