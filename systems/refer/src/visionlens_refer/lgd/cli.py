"""``visionlens refer``: LGD zero-shot referring segmentation.

    visionlens refer IMAGE "expression" [--proposer colour|felzenszwalb|slic|sam|file] [--clip DIR]
                     [--mllm-dir DIR | --mllm-url URL] [--cache DIR|FILE.jsonl] [--sam-* filters] --out DIR
    visionlens refer synthetic:test:3 ["expression"]     # a synthetic scene: GT proposals + pixel describer
    visionlens refer --benchmark --out DIR               # the synthetic ablation table
"""

from __future__ import annotations

import os
from pathlib import Path

from visionlens.checks import SEED, count, number
from visionlens.cli import add_json_option, record_summary

# synthetic:SPLIT:INDEX is sample INDEX of the benchmark, which renders samples 0..INDEX in order (a
# sample's scene depends on every earlier one: scenes without an expression of the turn's kind are
# skipped), 40-60 a second on a 2-core machine after a 4 s start. The bound keeps one scene under
# about 20 s and covers every sample the default benchmark reports (--n-test 400, --n-val 200).
MAX_SYNTHETIC_INDEX = 499


def register(subparsers) -> None:
    p = subparsers.add_parser("refer", help="LGD: segment the object a sentence refers to (zero-shot, pluggable "
                                            "proposals / CLIP / MLLM); --benchmark scores the synthetic benchmark")
    p.add_argument("image", nargs="?", help="image file, or synthetic:SPLIT:INDEX for a synthetic scene")
    p.add_argument("expression", nargs="?", help="referring expression (synthetic scenes: defaults to their own)")
    p.add_argument("--benchmark", action="store_true", help="run the synthetic ablation table instead")
    p.add_argument("--refcoco", default=None, metavar="ROOT",
                   help="evaluate on RefCOCO-style data: ROOT/DATASET/refs(*).p + instances.json (needs --coco-dir)")
    p.add_argument("--dataset", default=None, choices=["refcoco", "refcoco+", "refcocog"],
                   help="--refcoco: dataset (default: refcoco)")
    p.add_argument("--split", default=None, help="--refcoco: split (val, testA, testB, test; default: val)")
    p.add_argument("--split-by", default=None, help="--refcoco: refs file suffix (unc, umd, google)")
    p.add_argument("--coco-dir", default=None, help="--refcoco: folder of the COCO train2014 images")
    p.add_argument("--limit", type=count(), default=None, help="--refcoco: first N sentences only (a declared subset)")
    p.add_argument("--n-val", type=count(maximum=MAX_SAMPLES), default=None,
                   help=f"--benchmark: val samples used to tune alpha/beta (default: {DEFAULTS['n_val']}; "
                        f"at most {MAX_SAMPLES:,})")
    p.add_argument("--n-test", type=count(maximum=MAX_SAMPLES), default=None,
                   help=f"--benchmark: test samples reported (default: {DEFAULTS['n_test']}; at most {MAX_SAMPLES:,})")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the synthetic scenes and describer")
    p.add_argument("--proposer", default=None, choices=["gt", "colour", "felzenszwalb", "slic", "sam", "file"],
                   help="mask proposals (default: gt for synthetic scenes, colour otherwise)")
    p.add_argument("--proposals", default=None, help="--proposer file: .npy/.npz/.json RLE file or PNG folder")
    p.add_argument("--sam", default=None, help="local SAM folder (save_pretrained; or $VISIONLENS_SAM)")
    _add_sam_filters(p)
    p.add_argument("--clip", default=None, help="local CLIP folder (save_pretrained; or $VISIONLENS_CLIP); "
                                                "default: the packaged toy VLM (synthetic vocabulary only; "
                                                "--refcoco needs a CLIP)")
    p.add_argument("--mllm-dir", default=None, help="local MLLM folder (transformers)")
    p.add_argument("--mllm-url", default=None, help="OpenAI-compatible server on 127.0.0.1, e.g. http://127.0.0.1:8080")
    p.add_argument("--mllm-model", default=None,
                   help="model name sent to --mllm-url (also the cache key; default: local)")
    p.add_argument("--describer", default=None, choices=["region-scores", "oracle"],
                   help="synthetic scenes and --benchmark: region-scores (perceives from pixels: the toy VLM names "
                        "the proposals; default) or oracle (reads the scene graph: an upper bound)")
    p.add_argument("--describer-error", type=number(minimum=0, maximum=1), default=None,
                   help="--describer oracle: share of expressions it describes a wrong object for (default: 0)")
    p.add_argument("--cache", default=None, metavar="DIR|FILE.jsonl",
                   help="a folder: per-image proposals + region features (regions-*.pt) and descriptions "
                        "(descriptions.jsonl), reused across sentences and runs; a .jsonl file: descriptions only")
    p.add_argument("--cache-only", action="store_true", help="use only the cache; a miss is an error")
    p.add_argument("--alpha", type=number(minimum=0), default=None, help="weight of S_att (default: 0.5)")
    p.add_argument("--beta", type=number(minimum=0), default=None, help="weight of S_sur (default: 0.5)")
    p.add_argument("--mix", type=number(minimum=0, maximum=1), default=None,
                   help="global share a of the fused region feature (default: 0.5)")
    p.add_argument("--no-att", action="store_true", help="ablation: drop the attribute term")
    p.add_argument("--no-sur", action="store_true", help="ablation: drop the surrounding term")
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N or auto (CUDA when available), for local SAM, CLIP and MLLM models")
    p.add_argument("--out", default="visionlens-refer", help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_json_option(p)
    p.set_defaults(func=_cmd_refer)


def _add_sam_filters(p) -> None:
    from .sam_filters import SamFilters

    d = SamFilters()
    p.add_argument("--sam-points-per-side", type=count(), default=None,
                   help=f"--proposer sam: point grid side (default {d.points_per_side}: {d.points_per_side ** 2} prompts)")
    p.add_argument("--sam-points-per-batch", type=count(), default=None,
                   help=f"--proposer sam: prompts decoded at once (default {d.points_per_batch})")
    p.add_argument("--sam-pred-iou", type=number(), default=None,
                   help=f"--proposer sam: keep masks with predicted IoU >= this (default {d.pred_iou_thresh:g}, "
                        "for random-init weights too; SAM's automatic mask generator uses 0.88)")
    p.add_argument("--sam-stability", type=number(), default=None,
                   help=f"--proposer sam: keep masks with stability score >= this (default {d.stability_thresh:g}; "
                        "SAM's automatic mask generator uses 0.95)")
    p.add_argument("--sam-min-area", type=count(minimum=0), default=None,
                   help=f"--proposer sam: keep masks of at least this many image pixels (default {d.min_area})")
    p.add_argument("--sam-max-masks", type=count(), default=None,
                   help=f"--proposer sam: after NMS keep the best this many by predicted IoU (default {d.max_masks})")
    p.add_argument("--region-batch", type=count(), default=None,
                   help="proposals encoded at once by the region encoder (bounds its memory; default 32)")


# The modes of `refer` and the flags that belong to them: a flag given in a mode it does not
# belong to is refused in one line before any work (it would be ignored). Flags not listed here
# (--proposer, --device, --seed, --out, --quiet, --json) apply in every mode.
MODE_NAMES = {"benchmark": "--benchmark", "refcoco": "--refcoco", "synthetic": "a synthetic:SPLIT:INDEX scene",
              "image": "an IMAGE file"}
SINGLE = ("synthetic", "image")
FLAG_MODES = {
    "image": ("IMAGE", SINGLE), "expression": ("the expression", SINGLE),
    "refcoco": ("--refcoco", ("refcoco",)),
    **{dest: (flag, ("refcoco",)) for dest, flag in (("dataset", "--dataset"), ("split", "--split"),
                                                     ("split_by", "--split-by"), ("coco_dir", "--coco-dir"),
                                                     ("limit", "--limit"))},
    "n_val": ("--n-val", ("benchmark",)), "n_test": ("--n-test", ("benchmark",)),
    "describer": ("--describer", ("benchmark", "synthetic")),
    "describer_error": ("--describer-error", ("benchmark", "synthetic")),
    **{dest: (flag, ("refcoco", *SINGLE)) for dest, flag in (
        ("clip", "--clip"), ("mllm_dir", "--mllm-dir"), ("mllm_url", "--mllm-url"), ("mllm_model", "--mllm-model"),
        ("cache", "--cache"), ("cache_only", "--cache-only"), ("alpha", "--alpha"), ("beta", "--beta"),
        ("mix", "--mix"), ("no_att", "--no-att"), ("no_sur", "--no-sur"), ("region_batch", "--region-batch"))},
}
# flags of one proposer: refused with any other --proposer
PROPOSER_FLAGS = {"proposals": ("--proposals", "file"), "sam": ("--sam", "sam"),
                  **{f"sam_{k}": (f"--sam-{k.replace('_', '-')}", "sam")
                     for k in ("points_per_side", "points_per_batch", "pred_iou", "stability", "min_area", "max_masks")}}
MAX_SAMPLES = 20_000  # rendered scenes held in memory at once; the default 400 + 200 take about 20 s
DEFAULTS = {"dataset": "refcoco", "split": "val", "n_val": 200, "n_test": 400, "mllm_model": "local",
            "describer": "region-scores", "describer_error": 0.0, "alpha": 0.5, "beta": 0.5, "mix": 0.5,
            "region_batch": 32}


def _mode(args) -> str:
    """benchmark, refcoco, synthetic or image (``--benchmark`` and ``--refcoco`` together: one line)."""
    from visionlens.errors import InputError

    if args.benchmark and args.refcoco:
        raise InputError("--benchmark and --refcoco are two modes; give one")
    if args.benchmark:
        return "benchmark"
    if args.refcoco:
        return "refcoco"
    return "synthetic" if args.image and args.image.startswith("synthetic:") else "image"


def _check_mode(args) -> str:
    """The mode; a flag of another mode, or of another proposer, is one line (exit 2) before any
    work. Then the flags left unset get their defaults."""
    from visionlens.errors import InputError
    from .sam_filters import SamFilters

    mode = _mode(args)
    for dest, (flag, modes) in FLAG_MODES.items():
        value = getattr(args, dest)
        if value is not None and value is not False and mode not in modes:
            shown = f"{flag} ({value})" if dest in ("image", "expression") else flag
            names = [MODE_NAMES[m] for m in modes]
            names = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
            raise InputError(f"{shown} is for {names}, not {MODE_NAMES[mode]}; drop it")
    proposer = args.proposer or ("gt" if mode in ("benchmark", "synthetic") else "colour")
    for dest, (flag, kind) in PROPOSER_FLAGS.items():
        if getattr(args, dest) is not None and proposer != kind:
            raise InputError(f"{flag} is for --proposer {kind}, not --proposer {proposer}; "
                             f"add --proposer {kind} or drop {flag}")
    for dest, value in DEFAULTS.items():
        if getattr(args, dest) is None:
            setattr(args, dest, value)
    filters = SamFilters()
    for dest, field in (("sam_points_per_side", "points_per_side"), ("sam_points_per_batch", "points_per_batch"),
                        ("sam_pred_iou", "pred_iou_thresh"), ("sam_stability", "stability_thresh"),
                        ("sam_min_area", "min_area"), ("sam_max_masks", "max_masks")):
        if getattr(args, dest) is None:
            setattr(args, dest, getattr(filters, field))
    return mode


def _cache_paths(args) -> tuple[str | None, str | None]:
    """``(description cache file, region cache folder)`` from ``--cache`` (DIR or FILE.jsonl)."""
    from visionlens.errors import InputError

    if not args.cache:
        return None, None
    path = Path(args.cache)
    if path.suffix == ".jsonl":
        return str(path), None
    if path.exists() and not path.is_dir():
        raise InputError(f"--cache {args.cache} is a file: give a folder (regions and descriptions) or a .jsonl "
                         "file (descriptions only)")
    return str(path / "descriptions.jsonl"), str(path)


def _describer(args, synthetic: bool):
    from visionlens.errors import InputError
    from .describers import CachedDescriber

    inner = None
    if args.mllm_dir and args.mllm_url:
        raise InputError("give --mllm-dir or --mllm-url, not both")
    if args.mllm_dir:
        from .mllm import HFLocalDescriber

        inner = HFLocalDescriber(args.mllm_dir, device=_device(args))
    elif args.mllm_url:
        from .mllm import LoopbackDescriber

        inner = LoopbackDescriber(args.mllm_url, args.mllm_model)
    elif synthetic:
        inner = _synthetic_describer(args)
    descriptions, folder = _cache_paths(args)
    if args.cache_only and not descriptions:
        raise InputError("--cache-only needs --cache DIR or --cache FILE.jsonl")
    if descriptions and (inner is not None or args.cache_only):
        return CachedDescriber(descriptions, inner, model=None if inner else args.mllm_model, cache_only=args.cache_only)
    if descriptions and folder is None:
        raise InputError("--cache FILE.jsonl without an MLLM backend needs --cache-only (and --mllm-model naming the "
                         "cached model); a --cache folder needs neither")
    return inner


def _synthetic_describer(args):
    """The describer standing in for the MLLM on synthetic scenes (``--describer``)."""
    from visionlens.errors import InputError
    from .describers import SceneDescriber

    if args.describer == "oracle":
        return SceneDescriber(args.describer_error, seed=args.seed)
    if args.describer_error:
        raise InputError("--describer-error applies to --describer oracle (region-scores makes its own mistakes)")
    if _clip_dir(args):
        from .local_weights import model_dir

        model_dir(_clip_dir(args), "CLIP", "VISIONLENS_CLIP", "openai/clip-vit-base-patch32")  # a missing folder first
        raise InputError("--describer region-scores reads the toy VLM's region scores: drop --clip "
                         "(and $VISIONLENS_CLIP) or use --describer oracle")
    from .perception import RegionScoreDescriber
    from .toy_vlm import load_toy_vlm

    return RegionScoreDescriber(load_toy_vlm())


def _proposer(args, synthetic: bool):
    from visionlens.errors import InputError
    from .proposals import ClassicalProposer, FileProposer, GTProposer

    kind = args.proposer or ("gt" if synthetic else "colour")
    if kind == "gt":
        if not synthetic:
            raise InputError("--proposer gt needs ground-truth masks: use a synthetic:SPLIT:INDEX scene")
        return GTProposer()
    if kind == "file":
        if not args.proposals:
            raise InputError("--proposer file needs --proposals PATH")
        return FileProposer(args.proposals)
    if kind == "sam":
        from .sam import SamProposer

        return SamProposer(args.sam, device=_device(args), points_per_side=args.sam_points_per_side,
                           points_per_batch=args.sam_points_per_batch, pred_iou_thresh=args.sam_pred_iou,
                           stability_thresh=args.sam_stability, min_area=args.sam_min_area, max_masks=args.sam_max_masks)
    return ClassicalProposer(kind)


def _device(args) -> str:
    """--device for the local SAM, CLIP and MLLM models: auto is CUDA when available."""
    from visionlens.models.zoo import resolve_device

    return str(resolve_device(args.device))


def _clip_dir(args) -> str | None:
    return args.clip or os.environ.get("VISIONLENS_CLIP") or None


def _check_clip(args) -> None:
    """A --clip folder that is missing or holds another kind of model (its config.json's
    model_type): one line before any model is loaded (transformers would build a random CLIP)."""
    if _clip_dir(args):
        from .clip_hf import clip_dir

        clip_dir(_clip_dir(args))


def _encoder(args):
    if _clip_dir(args):
        from .clip_hf import HFClipEncoder

        return HFClipEncoder(_clip_dir(args), device=_device(args))
    from .toy_vlm import load_toy_vlm

    return load_toy_vlm()


def _cmd_benchmark(args) -> int:
    from visionlens.errors import InputError
    from visionlens.io import save_atomic, write_json
    from .benchmark import ablation_table, markdown
    from .proposals import GTProposer
    from .toy_vlm import load_toy_vlm

    if args.clip or args.mllm_dir or args.mllm_url:
        raise InputError("--benchmark scores the synthetic world with the toy VLM and a synthetic describer "
                         "(--describer); drop --clip/--mllm-*")
    result = ablation_table(load_toy_vlm(), _synthetic_describer(args),
                            _proposer(args, True) if args.proposer else GTProposer(),
                            n_val=args.n_val, n_test=args.n_test, seed=args.seed, progress=not args.quiet)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(result)
    write_json(result, out / "ablation.json")
    save_atomic(lambda t: Path(t).write_text(table + "\n"), out / "ablation.md")
    print(table)
    print(f"wrote {out / 'ablation.json'} and {out / 'ablation.md'}")
    record_summary(args, {**result, "written": [str(out / "ablation.json"), str(out / "ablation.md")]})
    return 0


def _cmd_refcoco(args) -> int:
    import sys

    from visionlens.errors import InputError
    from visionlens.io import write_json
    from .pipeline import LGD
    from .refcoco import ReferDataset
    from .refcoco_eval import evaluate_refcoco
    from .scores import LGDConfig

    if not _clip_dir(args):
        raise InputError("--refcoco needs --clip DIR (a local CLIP save_pretrained folder, or set $VISIONLENS_CLIP): "
                         "the packaged toy VLM knows only the synthetic world's words")
    if not args.coco_dir:
        raise InputError("--refcoco needs --coco-dir (the COCO train2014 image folder)")
    dataset = ReferDataset(args.refcoco, args.dataset, args.split_by)
    if args.split not in dataset.splits():
        raise InputError(f"split {args.split!r} not in {args.dataset}; it has {', '.join(dataset.splits())}")
    _check_clip(args)
    describer = _describer(args, False)
    use_att, use_sur = (not args.no_att) and describer is not None, (not args.no_sur) and describer is not None
    config = LGDConfig(alpha=args.alpha, beta=args.beta, mix=args.mix, use_att=use_att, use_sur=use_sur)
    proposer = _proposer_refcoco(args)
    lgd = LGD(_encoder(args), describer, config, region_batch=args.region_batch)
    result = evaluate_refcoco(dataset, args.split, args.coco_dir, lgd, proposer, limit=args.limit,
                              progress=not args.quiet, cache_dir=_cache_paths(args)[1],
                              on_skip=lambda message: print(f"error: {message}", file=sys.stderr),
                              on_warning=lambda message: print(f"warning: {message}", file=sys.stderr))
    s = result["summary"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result["config"] = {"dataset": args.dataset, "split": args.split, "limit": args.limit, "alpha": args.alpha,
                        "beta": args.beta, "use_att": use_att, "use_sur": use_sur, "proposer": proposer.name}
    write_json(result, out / "refcoco_eval.json")
    skipped = len(result["skipped"])
    print(f"{args.dataset} {args.split}: n={s['n']} oIoU {100 * s['oIoU']:.2f} mIoU {100 * s['mIoU']:.2f} "
          f"Pr@0.5 {100 * s['Pr@0.5']:.2f}; {skipped} skipped; wrote {out / 'refcoco_eval.json'}")
    record_summary(args, {**result, "written": [str(out / "refcoco_eval.json")]})
    return 1 if skipped else 0


def _proposer_refcoco(args):
    from .proposals import GTProposer

    if (args.proposer or "colour") == "gt":
        return GTProposer()
    return _proposer(args, False)


def _check_out(args) -> None:
    """Refuse, before any work, a file of an output's name in ``--out`` that an earlier run of the
    same mode did not write (its JSON record, the first name, marks the folder as its own)."""
    from visionlens.outputs import check_out_dir, recorded_run
    from visionlens.outputs import check_not_input

    planned, keys = ((("ablation.json", "ablation.md"), ("rows", "n_test")) if args.benchmark
                     else (("refcoco_eval.json",), ("summary", "config")) if args.refcoco
                     else (("scores.json", "overlay.png", "mask.png"), ("expression", "config")))
    out = Path(args.out)
    check_not_input([("--out", out / name) for name in planned],
                    [("IMAGE", None if _mode(args) == "synthetic" else args.image), ("--proposals", args.proposals),
                     ("--cache", args.cache)])
    check_out_dir(out, planned, recorded_run(out, planned[0], planned, keys=keys))


def _cmd_refer(args) -> int:
    import torch

    from visionlens.models.zoo import resolve_device

    _check_mode(args)
    resolve_device(args.device)  # an unknown or absent device: one line before any work, in every mode
    _check_expression(args)
    _check_out(args)
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    try:
        if args.benchmark:
            return _cmd_benchmark(args)
        if args.refcoco:
            return _cmd_refcoco(args)
        return _cmd_single(args)
    finally:
        torch.set_num_threads(threads)  # in-process callers keep their setting


def _check_expression(args) -> None:
    """An empty (or blank) expression: one line, not replaced by the scene's own expression."""
    from visionlens.errors import InputError

    if args.expression is not None and not args.expression.strip():
        raise InputError("the expression is empty; describe the object, e.g. \"the red circle\" "
                         "(or leave it out for a synthetic scene's own expression)")


def _synthetic_sample(spec: str, seed: int):
    """The benchmark sample named ``synthetic:SPLIT:INDEX``."""
    from visionlens.data.world import SPLITS
    from visionlens.errors import InputError
    from .synthetic import benchmark

    parts = spec.split(":")
    if len(parts) != 3 or parts[1] not in SPLITS or not parts[2].isdigit():
        raise InputError(f"synthetic scenes are synthetic:SPLIT:INDEX with SPLIT one of {', '.join(SPLITS)} "
                         f"(e.g. synthetic:test:3), got {spec!r}")
    index = int(parts[2])
    if index > MAX_SYNTHETIC_INDEX:
        raise InputError(f"synthetic scene index must be 0-{MAX_SYNTHETIC_INDEX} (scenes are rendered in order; "
                         f"use --seed for other scenes), got {index}")
    return benchmark(parts[1], index + 1, seed=seed)[index]


def _image_tensor(path: str):
    import numpy as np
    import torch

    from visionlens.data.images import load_image

    pil = load_image(path)
    return torch.from_numpy(np.asarray(pil.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)


def _check_toy_vocabulary(args, expression: str, described: bool) -> None:
    """Without descriptions the toy VLM scores only the expression; one without a content word it
    knows would score every region the same: refuse that."""
    from visionlens.errors import InputError
    from .toy_vlm import content_words

    if not _clip_dir(args) and not described and not content_words(expression):
        raise InputError(f"no word of {expression!r} is known to the packaged toy VLM (synthetic world vocabulary); "
                         "pass --clip DIR with a local CLIP, or an MLLM backend for descriptions")


def _cmd_single(args) -> int:
    import numpy as np

    from visionlens.errors import InputError
    from visionlens.io import save_atomic, write_json
    from .pipeline import LGD
    from .scores import LGDConfig

    if not args.image:
        raise InputError("give IMAGE and \"expression\" (or synthetic:SPLIT:INDEX, or --benchmark)")
    sample, scene, image_id = None, None, ""
    if args.image.startswith("synthetic:"):
        sample = _synthetic_sample(args.image, args.seed)
        image, scene, image_id = sample.image, sample.entities, sample.image_id
        expression = args.expression or sample.expression
    else:
        if not args.expression:
            raise InputError("give the referring expression after the image")
        expression = args.expression
        image = _image_tensor(args.image)  # a bad file fails here, before any model is loaded
        _check_clip(args)
    describer = _describer(args, sample is not None)
    use_att, use_sur = not args.no_att, not args.no_sur
    if describer is None and (use_att or use_sur):
        print("no MLLM backend or cache given: scoring with S_van only (see --mllm-dir / --mllm-url / --cache)")
        use_att = use_sur = False
    _check_toy_vocabulary(args, expression, use_att or use_sur)
    config = LGDConfig(alpha=args.alpha, beta=args.beta, mix=args.mix, use_att=use_att, use_sur=use_sur)
    if sample is None and not _clip_dir(args):
        print("note: the packaged toy VLM knows only the synthetic world's words; pass --clip DIR for photos")
    encoder = _encoder(args)
    regions = _regions(args, encoder, image, sample)
    masks = regions.masks
    result = LGD(encoder, describer, config, region_batch=args.region_batch).segment(
        image, expression, masks, image_id=image_id, scene=scene, regions=regions)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overlay = _overlay(image, result.mask)
    report = {"image": args.image, "expression": expression, "proposals": int(len(masks)),
              "config": {"alpha": config.alpha, "beta": config.beta, "mix": config.mix, "use_att": use_att,
                         "use_sur": use_sur, "pairing": config.pairing}, **result.as_dict()}
    if sample is not None:
        from ..masks import mask_iou

        report["iou_with_ground_truth"] = mask_iou(result.mask, sample.mask)[0]
    save_atomic(lambda t: overlay.save(t, format="PNG"), out / "overlay.png")
    from PIL import Image

    save_atomic(lambda t: Image.fromarray(result.mask.astype(np.uint8) * 255).save(t, format="PNG"), out / "mask.png")
    write_json(report, out / "scores.json")
    t = result.total[result.index]
    print(f"{expression!r}: chose proposal {result.index} of {len(masks)} (S={t:.4f}, area {int(result.mask.sum())} px)"
          + (f", IoU with ground truth {report['iou_with_ground_truth']:.3f}" if sample is not None else ""))
    for k, v in result.descriptions.items():
        print(f"  {k}: {v}")
    print(f"wrote {out / 'overlay.png'}, {out / 'mask.png'} and {out / 'scores.json'}")
    record_summary(args, {**report, "written": [str(out / f) for f in ("overlay.png", "mask.png", "scores.json")]})
    return 0


def _regions(args, encoder, image, sample):
    """The image's proposals and region features, through the ``--cache`` folder when given."""
    import sys

    from .regions import RegionCache

    cache = RegionCache(_proposer(args, sample is not None), encoder, _cache_paths(args)[1], batch=args.region_batch,
                        on_warning=lambda message: print(f"warning: {message}", file=sys.stderr))
    return cache.regions(image, sample)


def _overlay(image, mask):
    import numpy as np
    import torch
    from PIL import Image

    rgb = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.float32)
    m = mask.astype(bool)
    rgb[m] = 0.45 * rgb[m] + 0.55 * np.array([255, 40, 40], dtype=np.float32)
    edge = m & ~(torch.nn.functional.max_pool2d(torch.from_numpy(~m)[None, None].float(), 3, 1, 1)[0, 0] == 0).numpy()
    rgb[edge] = (255, 255, 0)
    img = Image.fromarray(rgb.round().astype(np.uint8))
    return img.resize((img.width * 4, img.height * 4), Image.NEAREST) if max(img.size) < 200 else img
