"""``visionlens pose train|eval|predict|convert|synth``: UniPHD referring human pose and mask estimation."""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

from visionlens.checks import count, number
from visionlens.cli import JSON_HELP, add_json_option, record_summary
from visionlens.errors import InputError

from visionlens.outputs import check_not_input

PROMPTS = ("text", "point", "scribble")
MAX_SIZE = 4096                      # input / image side in pixels
MAX_SYNTHETIC_BYTES = 4 * 2 ** 30    # synthetic images + masks held in memory
EXIT_SKIPPED = 1
TRAIN_SAMPLES, EVAL_SAMPLES = 2000, 300  # synthetic samples when --synthetic is 0 (its default)
SEED = count(minimum=0, maximum=2 ** 32 - 1)


def _size(multiple: int = 1):
    """An ``argparse`` type: a side from 32 to ``MAX_SIZE`` pixels, a multiple of ``multiple``."""
    side = count(minimum=32, maximum=MAX_SIZE)

    def parse(text: str) -> int:
        value = side(text)
        if value % multiple:
            raise argparse.ArgumentTypeError(f"must be a multiple of {multiple} (the mask head's stride), got {text!r}")
        return value

    parse.__name__ = "size"
    return parse


def _check_synthetic(n: int, size: int, flag: str) -> None:
    """Refuse a synthetic set that would not fit in memory, before generating it."""
    need = n * size * size * 4                      # RGB uint8 image + bool mask per sample
    if need > MAX_SYNTHETIC_BYTES:
        raise InputError(f"{n} synthetic samples of {size}x{size} pixels need {need / 2 ** 30:.1f} GiB of memory "
                         f"(limit {MAX_SYNTHETIC_BYTES // 2 ** 30} GiB): lower {flag} or --size")


def _samples(args, default_count: int):
    from .data import load_refhuman, synthetic_refhuman

    if args.data:
        if not args.images:
            raise InputError("--data needs --images (the folder with the RefHuman images)")
        if args.synthetic:
            raise InputError("--synthetic is for synthetic samples, not --data (a RefHuman file); drop one of them")
        return load_refhuman(args.data, args.images, limit=args.limit, lazy=True)
    given = [flag for flag, value in (("--images", args.images), ("--limit", args.limit)) if value is not None]
    if given:
        raise InputError(f"{given[0]} is for --data (a RefHuman annotation file); the synthetic samples "
                         f"(--synthetic) have no image folder or annotations to limit: drop {given[0]} or give --data")
    n = args.synthetic or default_count
    _check_synthetic(n, args.size, "--synthetic")
    return synthetic_refhuman(n, seed=args.seed, size=args.size)


def _prepare_out(path, force: bool, flag: str = "--out") -> None:
    """Check an output file and create its folder up front: a folder, an unwritable place or (unless
    ``force``) an existing file fails before any work."""
    from visionlens.outputs import check_out_file

    if path:
        check_out_file(path, force=force, flag=flag)
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def _check_checkpoint_out(args) -> None:
    """An existing ``pose train --out`` must be a pose train checkpoint, checked before any work: it
    is resumed, or with ``--no-resume`` replaced; any other file is refused, never replaced."""
    from visionlens.errors import display
    from .train import check_resume_config, resume_state

    out = Path(args.out)
    check_not_input([("--out", out)], [("--data", args.data)])
    _prepare_out(out, force=True)  # a folder or an unwritable place: one line; an existing file: checked here
    if not out.exists():
        return
    if not args.no_resume:
        check_resume_config(resume_state(out)["config"], _config(args), out)  # changed --size/--text-encoder/--preset
        return
    try:
        resume_state(out)
    except InputError:
        raise InputError(f"{display(out)} exists and is not a pose train checkpoint (--no-resume replaces only one); "
                         "choose another --out or move that file") from None


def _cmd_train(args) -> int:
    import torch

    from visionlens.io import dumps
    from visionlens.models.zoo import resolve_device
    from .evaluate import evaluate_model
    from .train import train

    args.device = str(resolve_device(args.device))  # auto -> cuda/cpu; an unavailable device fails before any work
    if args.eval_samples:
        _check_synthetic(args.eval_samples, args.size, "--eval-samples")
    _check_checkpoint_out(args)
    torch.set_num_threads(args.threads)
    samples = _samples(args, TRAIN_SAMPLES)
    config = _config(args)
    result = train(samples, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                   config=config, resume=not args.no_resume, progress=not args.quiet, time_limit=args.time_limit,
                   device=args.device)
    if result["trained"]:
        resumed = f" (resumed at step {result['start']}, now at {result['steps']})" if result["start"] else ""
        print(f"trained {result['trained']} step{'s' if result['trained'] != 1 else ''}{resumed} in {result['seconds']:.0f} s; checkpoint {args.out} "
              f"(resume by running the same command; final loss {result['history'][-1]['loss']:.3f})")
    else:
        print(f"trained 0 steps: {args.out} is already at {result['start']} steps (--steps {args.steps}); "
              "raise --steps to train further")
    summary = {"checkpoint": str(args.out), "steps": result["steps"], "trained_steps": result["trained"],
               "seconds": result["seconds"],
               "final_loss": result["history"][-1]["loss"], "history": result["history"]}
    if args.eval_samples:
        from .data import synthetic_refhuman

        val = synthetic_refhuman(args.eval_samples, seed=args.seed + 10_000, size=args.size)
        summary["eval"] = evaluate_model(result["model"], val, "text")
        print(dumps(summary["eval"], indent=None))
    record_summary(args, summary)
    return 0


def _config(args):
    """The model settings: the small default, or ``--preset paper`` (the released UniPHD's sizes)."""
    from .config import UniPHDConfig

    if args.preset == "paper":
        if not args.text_encoder or args.text_encoder == "small":
            raise InputError("--preset paper needs --text-encoder hf:DIR (a RoBERTa-style transformers folder)")
        return UniPHDConfig.paper(args.text_encoder, image_size=args.size)
    config = UniPHDConfig(image_size=args.size)
    if args.text_encoder:
        config.text_encoder = args.text_encoder
    return config


def _check_text_encoder(spec: str | None) -> None:
    """An hf:DIR text encoder whose folder lacks config.json or a tokenizer: one line, before any work."""
    from .text import check_hf_dir

    if spec and spec != "small":
        check_hf_dir(spec[3:] if spec.startswith("hf:") else spec)


def _cmd_convert(args) -> int:
    """An official UniPHD checkpoint -> our weights file, by the key map; one line reports what was left out."""
    from .config import UniPHDConfig
    from .inference import save_weights
    from .model import UniPHD
    from .official import load_official, read_official

    out = Path(args.out)
    if out.exists():
        raise InputError(f"{out} already exists: choose another --out (pose convert never overwrites a file)")
    _check_text_encoder(args.text_encoder)
    blob = read_official(args.checkpoint)
    model = UniPHD(UniPHDConfig.paper(args.text_encoder, image_size=args.size))
    report = load_official(model, blob)
    save_weights(model, out, extra={"converted_from": str(Path(args.checkpoint).resolve())})
    print(report.line())
    print(f"wrote {out}; use it with `visionlens pose eval --weights {out}` or `pose predict --weights {out}`")
    record_summary(args, {"written": str(out), "loaded": len(report.loaded), "unmapped": report.unmapped,
                          "kept_at_init": report.kept_at_init, "report": report.line()})
    return 0


def _cmd_eval(args) -> int:
    from visionlens.core.progress import Progress
    from visionlens.io import write_json
    from .evaluate import evaluate_model
    from .inference import load_uniphd

    check_not_input([("--json", _json_file(args))], [("--weights", args.weights), ("--data", args.data)])
    _prepare_out(_json_file(args), args.force, "--json")
    model = load_uniphd(args.weights, args.device)
    args.size = model.config.image_size
    samples = _samples(args, EVAL_SAMPLES)
    kinds = PROMPTS if args.prompt == "all" else (args.prompt,)
    rows = []
    for kind in kinds:
        for control in ((False, True) if args.control else (False,)):
            rows.append(evaluate_model(model, samples, kind, control=control,
                                       progress=None if args.quiet else Progress(len(samples), f"pose eval {kind}")))
    skipped = _report_skipped(rows)
    print(f"{'prompt':20s} {'pose AP':>8s} {'AP50':>6s} {'mask AP':>8s} {'PCKh':>6s} {'oIoU':>6s} {'mIoU':>6s}")
    for r in rows:
        print(f"{r['prompt']:20s} {100 * r['pose_AP']:8.1f} {100 * r['pose_AP50']:6.1f} {100 * r['mask_AP']:8.1f} "
              f"{100 * r['PCKh@0.5']:6.1f} {100 * r['oIoU']:6.1f} {100 * r['mIoU']:6.1f}")
    if _json_file(args):
        write_json(rows, args.json)
    record_summary(args, {"rows": rows, "skipped": skipped})
    return EXIT_SKIPPED if skipped else 0


def _json_file(args) -> str | None:
    """The FILE of ``--json FILE`` (None for a bare ``--json``: the summary goes to stdout)."""
    return args.json if isinstance(args.json, str) else None


def _add_json_file_option(parser) -> None:
    parser.add_argument("--json", nargs="?", const=True, default=None, metavar="FILE",
                        help=f"{JSON_HELP}; with FILE, write it to FILE instead")


def _report_skipped(rows: list[dict]) -> int:
    """Print each skipped image once (one line on stderr); return how many there were."""
    seen = {}
    for row in rows:
        for item in row.get("skipped", []):
            seen.setdefault(item["file"], item["reason"])
    for reason in seen.values():
        print(f"error: {reason} (left out of the evaluation)", file=sys.stderr)
    return len(seen)


def parse_points(text: str, what: str):
    """"x,y" or "x,y;x,y;..." -> list of (x, y) floats."""
    try:
        pts = [tuple(float(v) for v in p.split(",")) for p in text.strip().split(";") if p.strip()]
    except ValueError:
        pts = []
    if not pts or any(len(p) != 2 or not all(map(math.isfinite, p)) for p in pts):
        raise InputError(f"--{what} must be finite 'x,y' pixel coordinates{' separated by ;' if what == 'scribble' else ''}, got {text!r}")
    return pts


def _prompt_kind(args) -> str:
    given = [p for p in PROMPTS if getattr(args, p) is not None]
    if len(given) != 1:
        raise InputError("give exactly one prompt: --text \"...\", --point x,y or --scribble \"x,y;x,y;...\"")
    kind = given[0]
    if kind == "text" and not args.text.strip():
        raise InputError("--text is empty; describe the person, e.g. --text \"the person in a red shirt\"")
    return kind


def _prompt_points(args, kind: str, w: int, h: int):
    """The --point/--scribble pixels as an ``(K, 2)`` array, checked against the ``w`` x ``h`` image."""
    import numpy as np

    pts = np.array(parse_points(getattr(args, kind), kind))
    if kind == "point" and len(pts) != 1:
        raise InputError("--point takes one 'x,y'; use --scribble for several points")
    if (pts[:, 0] < 0).any() or (pts[:, 0] > w - 1).any() or (pts[:, 1] < 0).any() or (pts[:, 1] > h - 1).any():
        raise InputError(f"--{kind}: prompt point(s) outside the {w}x{h} image (x in 0..{w - 1}, y in 0..{h - 1})")
    return pts


def _check_text(model, text: str) -> None:
    """A --text of which the small text encoder knows no content word: one line (a transformers
    encoder has a subword vocabulary: every text is known to it)."""
    from .text import SmallTextEncoder

    encoder = model.text_prompt.text_encoder
    if isinstance(encoder, SmallTextEncoder):
        encoder.check_known(text)


def _check_result(res: dict) -> None:
    import numpy as np

    for key in ("scores", "keypoints", "boxes"):
        if not np.isfinite(res[key][0]).all():
            raise InputError(f"the model's {key} came out NaN or infinite: check --weights (retrain or use the packaged model)")


def _cmd_predict(args) -> int:
    import numpy as np
    import torch
    from PIL import Image

    from visionlens.data.images import load_image
    from visionlens.io import save_atomic, write_json
    from .inference import load_uniphd, move, postprocess
    from .overlay import draw_overlay

    kind = _prompt_kind(args)
    if kind != "text":
        parse_points(getattr(args, kind), kind)         # a malformed prompt fails before the image is read
    out = Path(args.out or Path(args.image).with_suffix("").name + "_pose.png")
    if _json_file(args) and Path(_json_file(args)).resolve() == out.resolve():
        raise InputError(f"--json {_json_file(args)} is the overlay's --out too; give the JSON another name")
    check_not_input([("--out", out), ("--json", _json_file(args))], [("IMAGE", args.image), ("--weights", args.weights)])
    image = np.asarray(load_image(args.image).convert("RGB"))
    h, w = image.shape[:2]
    pts = None if kind == "text" else _prompt_points(args, kind, w, h)
    for dest, flag in ((out, "--out"), (_json_file(args), "--json")):
        _prepare_out(dest, args.force, flag)
    model = load_uniphd(args.weights, args.device)
    size = model.config.image_size
    if kind == "text":
        _check_text(model, args.text)
        prompt = {"kind": "text", "texts": [args.text]}
    else:
        scaled = (pts + 0.5) * [size / w, size / h] - 0.5
        prompt = {"kind": kind, "points": torch.tensor(scaled[None], dtype=torch.float32)}
    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    with torch.no_grad():
        x = torch.from_numpy(resized.copy()).permute(2, 0, 1)[None].float() / 255
        device = next(model.parameters()).device
        res = postprocess(move(model(x.to(device), move(prompt, device)), "cpu"), size, (h, w))[0]
    _check_result(res)
    overlay = draw_overlay(image, res["keypoints"][0], res["masks"][0], pts, max(1, 384 // max(h, w)))
    save_atomic(lambda tmp: overlay.save(tmp, format="PNG"), out)
    summary = {"score": float(res["scores"][0]), "keypoints": res["keypoints"][0].tolist(),
               "box": res["boxes"][0].tolist(), "mask_area": int(res["masks"][0].sum())}
    if _json_file(args):
        write_json(summary, args.json)
    print(f"{kind} prompt -> person score {res['scores'][0]:.2f}, mask {int(res['masks'][0].sum())} px; wrote {out}")
    record_summary(args, {**summary, "prompt": kind, "overlay": str(out)})
    return 0


SYNTH_DESCRIPTION = "visionlens pose synth: synthetic referring scenes"


def _cmd_synth(args) -> int:
    """Write synthetic scenes as a RefHuman-format set (annotation JSON + PNG images), all at once:
    the files are written into a hidden folder inside --out and moved into place only when every one
    is written, so an interrupted run (Ctrl-C) leaves --out as it was."""
    from visionlens.core.progress import Progress
    from visionlens.outputs import check_out_dir, recorded_run, staged_out_dir
    from .data import synthetic_file_name, synthetic_refhuman, write_refhuman

    _check_synthetic(args.n, args.size, "--n")
    out = Path(args.out)
    # each scene holds one sample or more: at most --n images; an annotations.json whose COCO "info"
    # names this command marks an earlier synth's folder (a user's own COCO file there does not)
    planned = ["annotations.json", *(f"images/{synthetic_file_name(i)}" for i in range(1, args.n + 1))]
    marks = {"info": {"description": SYNTH_DESCRIPTION}}
    check_out_dir(out, planned, recorded_run(out, "annotations.json", planned, marks=marks))
    earlier = _earlier_synth(out, marks)
    samples = synthetic_refhuman(args.n, seed=args.seed, size=args.size,
                                 progress=Progress(args.n, "pose synth: scenes", enabled=not args.quiet, unit="sample"))
    info = {"description": SYNTH_DESCRIPTION, "seed": args.seed, "size": args.size, "n": args.n}
    with staged_out_dir(out, earlier) as stage:
        write_refhuman(samples, stage / "annotations.json", stage / "images", info=info,
                       progress=Progress(len(samples), "pose synth: writing", enabled=not args.quiet, unit="sample"))
    ann = out / "annotations.json"
    s = samples[0]
    ys, xs = s.mask.nonzero()
    mid = ((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2).argmin()  # the mask pixel nearest its centroid
    print(f"wrote {len(samples)} referring samples ({len({x.file_name for x in samples})} images) to {ann} and {out / 'images'}")
    print(f"try: visionlens pose predict {out / 'images' / s.file_name} --text \"{s.caption}\"  "
          f"(or --point {int(xs[mid])},{int(ys[mid])})")
    print(f"     visionlens pose eval --data {ann} --images {out / 'images'}")
    record_summary(args, {"samples": len(samples), "images": len({x.file_name for x in samples}),
                          "annotations": str(ann), "image_folder": str(out / "images")})
    return 0


def _earlier_synth(out: Path, marks: dict) -> set[str]:
    """The files an earlier ``pose synth`` wrote in ``out`` (its annotations.json, marked as its own,
    and the images it names), removed after this run unless it writes them again."""
    import json

    from visionlens.outputs import recorded_run

    if not recorded_run(out, "annotations.json", ["annotations.json"], marks=marks):
        return set()
    try:
        images = json.loads((out / "annotations.json").read_text(encoding="utf-8")).get("images", [])
        names = {f"images/{im['file_name']}" for im in images if isinstance(im, dict) and isinstance(im.get("file_name"), str)}
    except (OSError, ValueError, AttributeError, TypeError):
        names = set()
    return {"annotations.json", *(n for n in names if "/" not in n[len("images/"):] and ".." not in n)}


def _add_device(p) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")


def _data_args(p, default_count: int) -> None:
    p.add_argument("--data", help="RefHuman-format annotation JSON (default: synthetic scenes)")
    p.add_argument("--images", help="folder with the images named in --data")
    p.add_argument("--limit", type=count(), default=None, help="use at most this many annotations of --data")
    p.add_argument("--synthetic", type=count(minimum=0), default=0,
                   help=f"without --data: number of synthetic referring samples (default 0, meaning {default_count})")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the synthetic samples (and of training)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(subparsers) -> None:
    pose = subparsers.add_parser("pose", help="UniPHD referring human pose and mask (text, point or scribble prompt)")
    sub = pose.add_subparsers(dest="pose_command", required=True)
    t = sub.add_parser("train", help="train (or resume) a UniPHD on RefHuman-format or synthetic data")
    _data_args(t, TRAIN_SAMPLES)
    t.add_argument("--out", default="uniphd.pt", help="checkpoint path (resumed when it exists)")
    t.add_argument("--steps", type=count(), default=1000, help="training steps")
    t.add_argument("--batch-size", type=count(), default=8, help="samples per training step")
    t.add_argument("--lr", type=number(above=0, maximum=10), default=1e-3, help="learning rate")
    t.add_argument("--size", type=_size(multiple=4), default=96,
                   help=f"square input size, a multiple of 4 from 32 to {MAX_SIZE}")
    t.add_argument("--text-encoder", default=None,
                   help="'small' (default) or hf:DIR, a local transformers folder (RoBERTa-style for --preset paper)")
    t.add_argument("--preset", choices=("small", "paper"), default="small",
                   help="small: the CPU model (default); paper: the released UniPHD's sizes with Swin-T "
                        "(timm:swin_tiny_patch4_window7_224; --size a multiple of 32) and --text-encoder hf:DIR")
    t.add_argument("--time-limit", type=number(minimum=0), default=None,
                   help="stop (and checkpoint) after this many seconds")
    t.add_argument("--threads", type=count(maximum=1024), default=1, help="torch CPU threads")
    t.add_argument("--no-resume", action="store_true", help="start from scratch even if --out exists")
    _add_device(t)
    t.add_argument("--eval-samples", type=count(minimum=0), default=0,
                   help="evaluate on this many held-out synthetic samples")
    add_json_option(t)
    t.set_defaults(func=_cmd_train)
    e = sub.add_parser("eval", help="pose AP, mask AP, PCKh, oIoU/mIoU per prompt kind")
    _data_args(e, EVAL_SAMPLES)
    e.add_argument("--weights", default=None, help="weights/checkpoint (default: the packaged synthetic model)")
    e.add_argument("--prompt", choices=PROMPTS + ("all",), default="all", help="prompt kind to score")
    e.add_argument("--control", action="store_true", help="also score the prompt-agnostic control")
    _add_device(e)
    _add_json_file_option(e)
    e.add_argument("--force", action="store_true", help="replace the --json FILE if it exists")
    e.set_defaults(func=_cmd_eval, size=96)
    p = sub.add_parser("predict", help="keypoints + mask of the person a prompt refers to, as a PNG overlay")
    p.add_argument("image", help="image file")
    p.add_argument("--text", default=None, help='e.g. "the person in a red shirt"')
    p.add_argument("--point", default=None, help="x,y pixel inside the person")
    p.add_argument("--scribble", default=None, help='"x,y;x,y;..." pixels on the person')
    p.add_argument("--weights", default=None, help="weights/checkpoint (default: the packaged synthetic model)")
    p.add_argument("--out", default=None, help="overlay PNG (default: IMAGE_pose.png in the current folder)")
    _add_device(p)
    _add_json_file_option(p)
    p.add_argument("--force", action="store_true", help="replace the --out (and --json FILE) file if it exists")
    # "-5,3" is a coordinate (argparse would take it for a flag and say "expected one argument"): it
    # reaches parse_points, and the range check names the image's bounds
    p._negative_number_matcher = re.compile(r"^-\.?\d")
    p.set_defaults(func=_cmd_predict)
    c = sub.add_parser("convert", help="load a checkpoint of the released UniPHD code into our model (key map) "
                                       "and write our weights file")
    c.add_argument("--checkpoint", required=True, help="the official checkpoint (state dict or {'model': ...})")
    c.add_argument("--text-encoder", required=True, help="hf:DIR, a local RoBERTa-style transformers folder")
    c.add_argument("--size", type=_size(multiple=32), default=224, help="square input side, a multiple of 32")
    c.add_argument("--out", required=True, help="weights file to write (an existing file is never overwritten)")
    add_json_option(c)
    c.set_defaults(func=_cmd_convert)
    g = sub.add_parser("synth", help="write synthetic scenes as a RefHuman-format set (annotations.json + images/)")
    g.add_argument("--n", type=count(), default=20, help="number of referring samples")
    g.add_argument("--seed", type=SEED, default=0, help="seed of the synthetic scenes")
    g.add_argument("--size", type=_size(), default=96, help=f"image side in pixels, 32 to {MAX_SIZE}")
    g.add_argument("--out", default="pose-synth", help="output folder")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    add_json_option(g)
    g.set_defaults(func=_cmd_synth)
