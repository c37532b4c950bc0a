"""``visionlens sata evaluate``: SATA vs the plain ViT (and matched-budget peers) on clean and
corrupted synthetic-world images under class-sorted, shuffled and batch-size-1 protocols."""

from __future__ import annotations

from pathlib import Path

from visionlens.checks import FlatList, comma_list, count, number
from visionlens.cli import add_json_option, record_summary

SEED = count(minimum=0, maximum=2**32 - 1)


def register(subparsers) -> None:
    p = subparsers.add_parser("sata", help="SATA token plug-in for ViTs: batch-independent evaluation")
    sub = p.add_subparsers(dest="sata_command", required=True)
    e = sub.add_parser("evaluate", help="accuracy, mCE, FFN savings and CPU latency under three batching protocols")
    e.add_argument("--model", default="world-vit", help="a WorldViT zoo model (default: world-vit)")
    e.add_argument("--images", type=count(minimum=2), default=50, help="test images of the synthetic world (default 50)")
    e.add_argument("--seeds", type=comma_list(SEED), nargs="+", action=FlatList, default=[0, 1],
                   help="seeds for the batched protocols (space- or comma-separated)")
    e.add_argument("--bs1-seeds", type=comma_list(SEED), nargs="+", action=FlatList, default=[0],
                   help="seeds for the batch-size-1 protocol (space- or comma-separated)")
    e.add_argument("--batch", "--batch-size", dest="batch", type=count(), default=16, help="batch size of the sorted and shuffled protocols")
    e.add_argument("--gamma", type=number(minimum=0, maximum=1), default=0.7,
                   help="fraction of blocks without SATA (default 0.7)")
    e.add_argument("--alpha", type=number(), default=1.0, help="split bound factor (default 1.0; <= 0 disables SATA)")
    e.add_argument("--corruptions", nargs="+", default=None, help="subset of the corruption suite (default: all)")
    e.add_argument("--severities", type=count(minimum=1, maximum=5), nargs="+", default=[1, 2, 3, 4, 5],
                   help="severities 1-5")
    e.add_argument("--latency-images", type=count(), default=32, help="images timed for the CPU latency")
    e.add_argument("--threads", type=count(), default=1, help="torch CPU threads (default 1)")
    e.add_argument("--out", required=True, help="Markdown file for the table (a .json with the raw counts is written next to it)")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    add_json_option(e)
    e.set_defaults(func=_evaluate)


def _evaluate(args) -> int:
    import torch

    from visionlens.errors import InputError
    from visionlens.io import save_atomic, write_json
    from .corruptions import CORRUPTIONS
    from .evaluate import EvalSettings, raw_to_dict, run_evaluation, table_markdown

    corruptions = tuple(args.corruptions) if args.corruptions else CORRUPTIONS
    bad = [c for c in corruptions if c not in CORRUPTIONS]
    if bad:
        raise InputError(f"unknown corruption {bad[0]!r}; choose from: {', '.join(CORRUPTIONS)}")
    if not args.model.startswith("world-vit"):
        raise InputError(f"--model must be a WorldViT classifier of the synthetic world (world-vit), got {args.model!r}")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise InputError(f"output folder {out.parent} does not exist; create it first")
    settings = EvalSettings(images=args.images, seeds=tuple(args.seeds), bs1_seeds=tuple(args.bs1_seeds),
                            batch=args.batch, gamma=args.gamma, alpha=args.alpha, corruptions=corruptions,
                            severities=tuple(sorted(set(args.severities))), model=args.model,
                            latency_images=min(args.latency_images, args.images))
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        raw = run_evaluation(settings, progress=not args.quiet)
    finally:
        torch.set_num_threads(threads)  # in-process callers keep their setting
    table = table_markdown(raw)
    json_path = out.with_suffix(".json")
    save_atomic(lambda tmp: Path(tmp).write_text(table), out)
    write_json(raw_to_dict(raw), json_path, indent=1)
    print(table, end="")
    print(f"wrote {out} and {json_path}")
    record_summary(args, {**raw_to_dict(raw), "written": [str(out), str(json_path)]})
    return 0
