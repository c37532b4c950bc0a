"""``visionlens sata evaluate``: SATA vs the plain ViT (and matched-budget peers) on clean and
corrupted images under class-sorted, shuffled and batch-size-1 protocols: the synthetic world's
test images (``world-vit``), or any ViT the model specs give on an image folder (``--data``)."""

from __future__ import annotations

import sys
from pathlib import Path

from visionlens.checks import SEED, DistinctSeeds, FlatList, comma_list, count, number
from visionlens.cli import add_force_option, add_json_option, record_summary


def register(subparsers) -> None:
    p = subparsers.add_parser("sata", help="SATA token plug-in for ViTs: batch-independent evaluation")
    sub = p.add_subparsers(dest="sata_command", required=True)
    e = sub.add_parser("evaluate", help="accuracy, mCE, FFN savings and CPU latency under three batching protocols")
    e.add_argument("--model", default="world-vit",
                   help="world-vit (default), or with --data any ViT spec: timm:NAME, hf:DIR, torchvision:NAME")
    e.add_argument("--weights", default=None,
                   help="state-dict file for a timm:/torchvision: model (default: the library's pretrained weights)")
    e.add_argument("--data", default=None,
                   help="ImageFolder tree (DIR/class/image) or ImageNet-C-style tree (DIR/corruption/severity/class/image); "
                        "default: the synthetic world's test images")
    e.add_argument("--images", type=count(minimum=2), default=None,
                   help="images per set: synthetic world (default 50), or with --data spread over each set (default all)")
    e.add_argument("--variants", type=comma_list(str), nargs="+", action=FlatList, default=None,
                   help="with --data: the compared variants (plain always; default all)")
    e.add_argument("--workers", type=count(minimum=0), default=None,
                   help="with --data: DataLoader worker processes (default 0)")
    e.add_argument("--subset-classes", choices=("auto", "off"), default=None,
                   help="with --data whose class folders are ImageNet WordNet ids: auto (default) restricts the "
                        "argmax to the classes present when fewer than 1000 are (ImageNet-A/R, 200-way); off: all 1000")
    e.add_argument("--device", default="auto", help="with --data: torch device of the model (auto: CUDA when available)")
    e.add_argument("--seeds", type=comma_list(SEED), nargs="+", action=DistinctSeeds, default=[0, 1],
                   help="seeds for the batched protocols (space- or comma-separated)")
    e.add_argument("--bs1-seeds", type=comma_list(SEED), nargs="+", action=DistinctSeeds, default=[0],
                   help="seeds for the batch-size-1 protocol (space- or comma-separated)")
    e.add_argument("--batch", "--batch-size", dest="batch", type=count(), default=16, help="batch size of the sorted and shuffled protocols")
    e.add_argument("--gamma", type=number(minimum=0, maximum=1), default=0.7,
                   help="fraction of blocks without SATA (default 0.7)")
    e.add_argument("--alpha", type=number(), default=1.0, help="split bound factor (default 1.0; <= 0 disables SATA)")
    e.add_argument("--corruptions", nargs="+", default=None,
                   help="built-in corruptions (default: all; with an ImageFolder --data: none), or the folders of an "
                        "ImageNet-C-style --data (default: all)")
    e.add_argument("--severities", type=count(minimum=1, maximum=5), nargs="+", default=[1, 2, 3, 4, 5],
                   help="severities 1-5")
    e.add_argument("--latency-images", type=count(), default=32, help="images timed for the CPU latency")
    e.add_argument("--threads", type=count(), default=1, help="torch CPU threads (default 1)")
    e.add_argument("--out", required=True, help="Markdown file for the table (a .json with the raw counts is written next "
                                                "to it; with --data also the resumable .jsonl batch records)")
    add_force_option(e)
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    add_json_option(e)
    e.set_defaults(func=_evaluate)


def _evaluate(args) -> int:
    import torch

    from visionlens.errors import InputError, display
    from visionlens.outputs import check_out_file
    from visionlens.outputs import check_not_input

    out = Path(args.out)
    if not out.parent.is_dir():
        problem = "is a file, not a folder" if out.parent.exists() else "does not exist; create it first"
        raise InputError(f"output folder {out.parent} {problem}")
    if out.suffix in (".json", ".jsonl"):
        raise InputError(f"--out {display(out)}: the raw counts go to a .json (and .jsonl) next to the table; "
                         "give the table a .md name")
    # a --data run with records resumes them: its table and .json are its own (other records are refused)
    resumed = args.data is not None and out.with_suffix(".jsonl").is_file()
    check_not_input([("--out", dest) for dest in (out, out.with_suffix(".json"), out.with_suffix(".jsonl"))],
                    [("--weights", args.weights)])
    for dest in (out, out.with_suffix(".json")):
        check_out_file(dest, force=args.force or resumed)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _evaluate_folder(args, out) if args.data is not None else _evaluate_world(args, out)
    finally:
        torch.set_num_threads(threads)  # in-process callers keep their setting


def _evaluate_world(args, out: Path) -> int:
    from visionlens.errors import InputError
    from .corruptions import CORRUPTIONS
    from .evaluate import EvalSettings, raw_to_dict, run_evaluation, table_markdown

    corruptions = tuple(args.corruptions) if args.corruptions else CORRUPTIONS
    bad = [c for c in corruptions if c not in CORRUPTIONS]
    if bad:
        raise InputError(f"unknown corruption {bad[0]!r}; choose from: {', '.join(CORRUPTIONS)}")
    if not args.model.startswith("world-vit"):
        raise InputError(f"--model {args.model!r} needs --data DIR (an image folder); without it the synthetic world "
                         "is evaluated with world-vit")
    given = [flag for flag, value in (("--weights", args.weights), ("--variants", args.variants),
                                      ("--device", args.device != "auto" or None), ("--subset-classes", args.subset_classes),
                                      ("--workers", args.workers)) if value is not None]
    if given:
        raise InputError(f"{given[0]} applies with --data DIR only (--weights, --variants, --device, --subset-classes "
                         "and --workers do); without --data the synthetic world is evaluated")
    images = 50 if args.images is None else args.images
    settings = EvalSettings(images=images, seeds=tuple(args.seeds), bs1_seeds=tuple(args.bs1_seeds),
                            batch=args.batch, gamma=args.gamma, alpha=args.alpha, corruptions=corruptions,
                            severities=tuple(sorted(set(args.severities))), model=args.model,
                            latency_images=min(args.latency_images, images))
    raw = run_evaluation(settings, progress=not args.quiet)
    return _write(args, out, table_markdown(raw), raw_to_dict(raw))


def _write(args, out: Path, table: str, raw: dict, extra: list[Path] = ()) -> int:
    from visionlens.io import save_atomic, write_json

    json_path = out.with_suffix(".json")
    save_atomic(lambda tmp: Path(tmp).write_text(table), out)
    write_json(raw, json_path, indent=1)
    written = [out, json_path, *extra]
    print(table, end="")
    print("wrote " + ", ".join(map(str, written)))
    record_summary(args, {**raw, "written": [str(p) for p in written]})
    return 0


def _variant_names(args) -> tuple[str, ...]:
    from visionlens.errors import InputError
    from .stream import VARIANTS

    chosen = args.variants or list(VARIANTS)
    bad = [v for v in chosen if v not in VARIANTS]
    if bad:
        raise InputError(f"unknown variant {bad[0]!r}; choose from: {', '.join(VARIANTS)}")
    return tuple(v for v in VARIANTS if v == "plain" or v in chosen)


def _evaluate_folder(args, out: Path) -> int:
    from dataclasses import asdict

    from .folders import folder_sets, listing_sha256
    from .imagenet_classes import present_classes, wnid_labels
    from .store import RecordStore
    from .stream import StreamSettings, _subset, run_streamed, streamed_table, summarise_records

    names = _variant_names(args)
    root = Path(args.data)
    sets = folder_sets(root, tuple(args.corruptions) if args.corruptions else None, tuple(sorted(set(args.severities))))
    wnids = wnid_labels(sets[0].classes, args.data)
    zoo, sata = _load_vit(args.model, args.weights, args.device)
    if wnids is not None:
        _check_imagenet_head(zoo, args.model, args.data)
    model_labels = wnids if wnids is not None else _model_labels(sets[0].classes, zoo, args.model, args.data)
    subset = present_classes(wnids, args.subset_classes or "auto")
    settings = StreamSettings(seeds=tuple(args.seeds), bs1_seeds=tuple(args.bs1_seeds), batch=args.batch,
                              gamma=args.gamma, alpha=args.alpha, variants=names, limit=args.images,
                              subset_classes=subset)
    store = RecordStore(out.with_suffix(".jsonl"), {
        "model": args.model, "weights": _weights_identity(args.weights), "data": str(root.resolve()),
        "listing_sha256": listing_sha256(sets, root), "preprocess": zoo.preprocess.describe(), **asdict(settings)})
    skipped = run_streamed(zoo.module, sets, settings, store, zoo.preprocess, model_labels, args.workers or 0,
                           not args.quiet, on_skip=_report_skip)
    flops = sata.depth * _tokens(sata, zoo.preprocess.crop) * sata.flops_per_token
    rows = summarise_records(store.records, settings, flops)
    images = {}
    for s in sets:
        chosen = _subset(s, len(s.paths) if args.images is None else min(args.images, len(s.paths))).paths
        images[s.name] = sum(1 for path in chosen if str(path) not in skipped)
    raw = {"settings": store.settings, "rows": rows, "images": images, "ffn_flops_per_image": flops,
           "class_labels": "imagenet-wnid" if wnids is not None else "folder",
           "subset_classes": None if subset is None else len(subset),
           "skipped": [{"path": path, "reason": reason} for path, reason in sorted(skipped.items())]}
    note = (f"left out: {len(skipped)} unreadable image(s) (listed in the .json)\n\n" if skipped else "")
    _write(args, out, _subset_note(subset) + note + streamed_table(rows, args.batch, images), raw, [store.path])
    return 1 if skipped else 0


def _report_skip(path: str, reason: str) -> None:
    """One ``error:`` line for an image left out of the evaluation."""
    print(f"error: {reason}; left out of the evaluation", file=sys.stderr, flush=True)


def _load_vit(spec: str, weights, device: str):
    """The model of ``spec`` (on ``device``) and its SATA wrapper; a model SATA cannot run is one line."""
    from visionlens.errors import InputError, LayerError
    from visionlens.models.zoo import load_model
    from .sata import SataViT

    zoo = load_model(spec, device=device, weights=weights)
    try:
        return zoo, SataViT(zoo.module)
    except LayerError as err:
        raise InputError(f"--model {spec} is not a ViT SATA can run: {err}") from None


def _check_imagenet_head(zoo, spec: str, data: str) -> None:
    """WordNet-id folders index ImageNet-1k: a model with another number of outputs is one line."""
    import torch

    from visionlens.core.vit import model_output
    from visionlens.errors import InputError
    from .imagenet_classes import IMAGENET_CLASSES

    if zoo.class_names is not None:
        outputs = len(zoo.class_names)
    else:  # no class names (a weights file, placeholder labels): count the outputs of one blank image
        blank = torch.zeros(1, 3, zoo.preprocess.crop, zoo.preprocess.crop, device=next(zoo.module.parameters()).device)
        with torch.no_grad():
            outputs = model_output(zoo.module(blank)).shape[-1]
    if outputs != IMAGENET_CLASSES:
        raise InputError(f"--data {data} has class folders named by ImageNet WordNet id, which index the "
                         f"{IMAGENET_CLASSES} ImageNet-1k classes, but model '{spec}' has {outputs} classes")


def _subset_note(subset) -> str:
    """The table's first line when the argmax is restricted to the classes present."""
    if subset is None:
        return ""
    return (f"accuracy over the {len(subset)} ImageNet classes present: the argmax is restricted to their logits "
            "(ImageNet-A/R protocol; --subset-classes off for all 1000)\n\n")


def _tokens(sata, side: int) -> int:
    grid = sata.adapter.grid((side, side))
    return grid[0] * grid[1] + sata.adapter.num_prefix_tokens


def _model_labels(classes: list[str], zoo, spec: str, data: str) -> list[int]:
    """The model's class index of each class folder (WordNet-id folders are mapped before): by index
    or class name, else (as many folders as the model has classes) the sorted folder order."""
    from visionlens.data.datasets import match_classes
    from visionlens.errors import InputError

    try:
        return match_classes(classes, zoo.class_names, spec, data)
    except InputError:
        if zoo.class_names is not None and len(classes) == len(zoo.class_names):
            return list(range(len(classes)))
        raise


def _weights_identity(weights) -> str:
    """``pretrained`` / the zoo's, or the SHA-256 of the weights file."""
    import hashlib

    if weights is None:
        return "default"
    digest = hashlib.sha256()
    with open(weights, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
