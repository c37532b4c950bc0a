"""``visionlens pose train|eval|predict``: UniPHD referring human pose and mask estimation."""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import InputError

PROMPTS = ("text", "point", "scribble")


def _samples(args, default_count: int):
    from .data import load_refhuman, synthetic_refhuman

    if args.data:
        if not args.images:
            raise InputError("--data needs --images (the folder with the RefHuman images)")
        return load_refhuman(args.data, args.images, limit=args.limit, lazy=True)
    return synthetic_refhuman(args.synthetic or default_count, seed=args.seed, size=args.size)


def _cmd_train(args) -> int:
    import torch

    from .config import UniPHDConfig
    from .evaluate import evaluate_model
    from .train import train

    torch.set_num_threads(max(1, args.threads))
    samples = _samples(args, 2000)
    config = UniPHDConfig(image_size=args.size)
    if args.text_encoder:
        config.text_encoder = args.text_encoder
    result = train(samples, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                   config=config, resume=not args.no_resume, progress=not args.quiet, time_limit=args.time_limit)
    print(f"trained {result['steps']} steps in {result['seconds']:.0f} s; checkpoint {args.out} "
          f"(resume by running the same command; final loss {result['history'][-1]['loss']:.3f})")
    if args.eval_samples:
        from .data import synthetic_refhuman

        val = synthetic_refhuman(args.eval_samples, seed=args.seed + 10_000, size=args.size)
        print(json.dumps(evaluate_model(result["model"], val, "text"), indent=None))
    return 0


def _cmd_eval(args) -> int:
    from ...core.progress import Progress
    from .evaluate import evaluate_model
    from .inference import load_uniphd

    model = load_uniphd(args.weights)
    args.size = model.config.image_size
    samples = _samples(args, 300)
    kinds = PROMPTS if args.prompt == "all" else (args.prompt,)
    rows = []
    for kind in kinds:
        for control in ((False, True) if args.control else (False,)):
            rows.append(evaluate_model(model, samples, kind, control=control,
                                       progress=None if args.quiet else Progress(len(samples), f"pose eval {kind}")))
    print(f"{'prompt':20s} {'pose AP':>8s} {'AP50':>6s} {'mask AP':>8s} {'PCKh':>6s} {'oIoU':>6s} {'mIoU':>6s}")
    for r in rows:
        print(f"{r['prompt']:20s} {100 * r['pose_AP']:8.1f} {100 * r['pose_AP50']:6.1f} {100 * r['mask_AP']:8.1f} "
              f"{100 * r['PCKh@0.5']:6.1f} {100 * r['oIoU']:6.1f} {100 * r['mIoU']:6.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def parse_points(text: str, what: str):
    """"x,y" or "x,y;x,y;..." -> list of (x, y) floats."""
    try:
        pts = [tuple(float(v) for v in p.split(",")) for p in text.strip().split(";") if p.strip()]
    except ValueError:
        pts = []
    if not pts or any(len(p) != 2 for p in pts):
        raise InputError(f"--{what} must be 'x,y' pixel coordinates{' separated by ;' if what == 'scribble' else ''}, got {text!r}")
    return pts


def _cmd_predict(args) -> int:
    import numpy as np
    import torch

    from ...data.images import load_image
    from .inference import load_uniphd, postprocess
    from .overlay import draw_overlay

    given = [p for p in ("text", "point", "scribble") if getattr(args, p) is not None]
    if len(given) != 1:
        raise InputError("give exactly one prompt: --text \"...\", --point x,y or --scribble \"x,y;x,y;...\"")
    kind = given[0]
    if kind == "text" and not args.text.strip():
        raise InputError("--text is empty; describe the person, e.g. --text \"the person in a red shirt\"")
    image = np.asarray(load_image(args.image).convert("RGB"))
    h, w = image.shape[:2]
    model = load_uniphd(args.weights)
    size = model.config.image_size
    from PIL import Image

    resized = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    pts = None
    if kind == "text":
        prompt = {"kind": "text", "texts": [args.text]}
    else:
        pts = np.array(parse_points(getattr(args, kind), kind))
        if kind == "point" and len(pts) != 1:
            raise InputError("--point takes one 'x,y'; use --scribble for several points")
        if (pts[:, 0] < 0).any() or (pts[:, 0] > w - 1).any() or (pts[:, 1] < 0).any() or (pts[:, 1] > h - 1).any():
            raise InputError(f"prompt point(s) outside the {w}x{h} image")
        scaled = (pts + 0.5) * [size / w, size / h] - 0.5
        prompt = {"kind": kind, "points": torch.tensor(scaled[None], dtype=torch.float32)}
    with torch.no_grad():
        x = torch.from_numpy(resized.copy()).permute(2, 0, 1)[None].float() / 255
        res = postprocess(model(x, prompt), size, (h, w))[0]
    scale = max(1, 384 // max(h, w))
    overlay = draw_overlay(image, res["keypoints"][0], res["masks"][0], pts, scale)
    out = Path(args.out or Path(args.image).with_suffix("").name + "_pose.png")
    tmp = out.with_name(out.name + ".tmp.png")
    overlay.save(tmp)
    tmp.replace(out)
    if args.json:
        Path(args.json).write_text(json.dumps({"score": float(res["scores"][0]), "keypoints": res["keypoints"][0].tolist(),
                                               "box": res["boxes"][0].tolist(), "mask_area": int(res["masks"][0].sum())}))
    print(f"{kind} prompt -> person score {res['scores'][0]:.2f}, mask {int(res['masks'][0].sum())} px; wrote {out}")
    return 0


def _cmd_synth(args) -> int:
    """Write synthetic scenes as a RefHuman-format set (annotation JSON + PNG images)."""
    from .data import synthetic_refhuman, write_refhuman

    if args.n < 1:
        raise InputError("--n must be at least 1")
    out = Path(args.out)
    samples = synthetic_refhuman(args.n, seed=args.seed, size=args.size)
    ann = write_refhuman(samples, out / "annotations.json", out / "images")
    s = samples[0]
    ys, xs = s.mask.nonzero()
    mid = ((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2).argmin()  # the mask pixel nearest its centroid
    print(f"wrote {len(samples)} referring samples ({len({x.file_name for x in samples})} images) to {ann} and {out / 'images'}")
    print(f"try: visionlens pose predict {out / 'images' / s.file_name} --text \"{s.caption}\"  "
          f"(or --point {int(xs[mid])},{int(ys[mid])})")
    print(f"     visionlens pose eval --data {ann} --images {out / 'images'}")
    return 0


def _data_args(p) -> None:
    p.add_argument("--data", help="RefHuman-format annotation JSON (default: synthetic scenes)")
    p.add_argument("--images", help="folder with the images named in --data")
    p.add_argument("--limit", type=int, default=None, help="use at most this many annotations of --data")
    p.add_argument("--synthetic", type=int, default=0, help="number of synthetic referring samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")


def register(subparsers) -> None:
    pose = subparsers.add_parser("pose", help="UniPHD referring human pose and mask (text, point or scribble prompt)")
    sub = pose.add_subparsers(dest="pose_command", required=True)
    t = sub.add_parser("train", help="train (or resume) a UniPHD on RefHuman-format or synthetic data")
    _data_args(t)
    t.add_argument("--out", default="uniphd.pt", help="checkpoint path (resumed when it exists)")
    t.add_argument("--steps", type=int, default=1000)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--size", type=int, default=96, help="square input size")
    t.add_argument("--text-encoder", default=None, help="'small' (default) or a local transformers model directory")
    t.add_argument("--time-limit", type=float, default=None, help="stop (and checkpoint) after this many seconds")
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--no-resume", action="store_true", help="start from scratch even if --out exists")
    t.add_argument("--eval-samples", type=int, default=0, help="evaluate on this many held-out synthetic samples")
    t.set_defaults(func=_cmd_train)
    e = sub.add_parser("eval", help="pose AP, mask AP, PCKh, oIoU/mIoU per prompt kind")
    _data_args(e)
    e.add_argument("--weights", default=None, help="weights/checkpoint (default: the packaged synthetic model)")
    e.add_argument("--prompt", choices=PROMPTS + ("all",), default="all")
    e.add_argument("--control", action="store_true", help="also score the prompt-agnostic control")
    e.add_argument("--json", default=None, help="write the metrics here")
    e.set_defaults(func=_cmd_eval, size=96)
    p = sub.add_parser("predict", help="keypoints + mask of the person a prompt refers to, as a PNG overlay")
    p.add_argument("image")
    p.add_argument("--text", default=None, help='e.g. "the person in a red shirt"')
    p.add_argument("--point", default=None, help="x,y pixel inside the person")
    p.add_argument("--scribble", default=None, help='"x,y;x,y;..." pixels on the person')
    p.add_argument("--weights", default=None)
    p.add_argument("--out", default=None, help="overlay PNG (default: IMAGE_pose.png in the current folder)")
    p.add_argument("--json", default=None, help="also write keypoints, box and score as JSON")
    p.set_defaults(func=_cmd_predict)
    g = sub.add_parser("synth", help="write synthetic scenes as a RefHuman-format set (annotations.json + images/)")
    g.add_argument("--n", type=int, default=20, help="number of referring samples")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--size", type=int, default=96, help="image side in pixels")
    g.add_argument("--out", default="pose-synth", help="output folder")
    g.set_defaults(func=_cmd_synth)
