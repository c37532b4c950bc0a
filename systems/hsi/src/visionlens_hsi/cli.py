"""``visionlens hsi-cd train|eval|map|convert``: SpectralKAN hyperspectral change detection."""

from __future__ import annotations

import argparse
from pathlib import Path

from visionlens.checks import count, number
from visionlens.cli import add_force_option, add_json_option, record_summary

MODELS_HELP = "spectralkan-b, spectralkan-d, mtsf-kan, wkan, kan, dual-branch, mlp, cnn"
MAX_SCENE_VALUES = 2 ** 27      # synthetic --size^2 x --bands values per date (1 GiB of float64)
MAX_PATCH = 31
SEED = count(minimum=0, maximum=2 ** 32 - 1)
TRAIN_FILES = ("model.pt", "metrics.json", "change_map.png")   # what `train` writes into its --out folder
SEEDS_FILES = ("table.md", "table.json")                       # and, with --seeds, beside the seed-K/ folders
CHECKPOINT_HELP = ("model.pt written by `visionlens hsi-cd train`, or the authors' released state dict "
                   "(then give --data and --dataset)")


def _seeds(text: str) -> list:
    from .seeds import parse_seeds

    return parse_seeds(text)


def _fraction(text: str) -> float:
    """An ``argparse`` type: a finite number in (0, 1)."""
    value = number(above=0)(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be less than 1, got {text!r}")
    return value


def _patch(text: str) -> int:
    """An ``argparse`` type: an odd patch side from 1 to ``MAX_PATCH``."""
    value = count(maximum=MAX_PATCH)(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"must be odd (the patch is centred on its pixel), got {text!r}")
    return value


def _add_data(p, required: bool) -> None:
    p.add_argument("--data", default="synthetic" if required else None,
                   help="'synthetic' or a folder with a dataset's .mat files (default: "
                        + ("synthetic)" if required else "the data the checkpoint was trained on)"))
    p.add_argument("--dataset", default=None, help="farmland, river, usa, bayarea or barbara (with a folder --data)")
    scene = "with --data synthetic: " if not required else "synthetic "
    p.add_argument("--size", type=count(minimum=8, maximum=2048), default=None,
                   help=f"{scene}scene side in pixels (8 to 2048; default {SYNTHETIC_DEFAULTS['size']})")
    p.add_argument("--bands", type=count(minimum=2, maximum=1024), default=None,
                   help=f"{scene}scene bands (2 to 1024; default {SYNTHETIC_DEFAULTS['bands']})")
    p.add_argument("--scene-seed", type=SEED, default=None,
                   help=f"{scene}scene seed (default {SYNTHETIC_DEFAULTS['scene_seed']})")
    p.add_argument("--shading", type=number(minimum=0, maximum=0.5), default=None,
                   help=f"{scene}smooth gain-field amplitude (pseudo-change), 0 to 0.5 "
                        f"(default {SYNTHETIC_DEFAULTS['shading']})")
    p.add_argument("--threads", type=count(maximum=1024), default=None, help="torch CPU threads (default: torch's choice)")


def register(subparsers) -> None:
    p = subparsers.add_parser("hsi-cd", help="hyperspectral change detection (SpectralKAN)")
    sub = p.add_subparsers(dest="hsi_command", required=True)

    t = sub.add_parser("train", help="train and test a change detector; writes model.pt, metrics.json, change_map.png")
    _add_data(t, required=True)
    t.add_argument("--model", default="spectralkan-b", help=MODELS_HELP)
    t.add_argument("--epochs", type=count(), default=200, help="training epochs")
    t.add_argument("--batch-size", type=count(), default=64, help="pixels (patches) per training batch")
    t.add_argument("--lr", type=number(above=0, maximum=10), default=1e-3, help="learning rate")
    t.add_argument("--train-fraction", type=_fraction, default=0.01,
                   help="stratified fraction of each class, in (0, 1) (paper: 0.01)")
    t.add_argument("--patch", type=_patch, default=5, help=f"odd patch side, 1 to {MAX_PATCH}")
    t.add_argument("--seed", type=SEED, default=None, help="split and initialisation seed (default 0)")
    t.add_argument("--seeds", type=_seeds, default=None,
                   help="several seeds, e.g. 0,1,2,3,4: one run each in OUT/seed-K/, then OUT/table.md and "
                        "OUT/table.json (OA, Kappa mean ± sd, parameters, FLOPs, train/test time)")
    t.add_argument("--basis", default="fast", choices=["fast", "recursive"],
                   help="B-spline basis evaluation: fast (closed form) or recursive (the reference Cox-de Boor recursion); same values")
    t.add_argument("--out", default="runs/hsi-cd", help="output folder")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    add_json_option(t)
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="score a checkpoint on its test pixels, or every labelled pixel for the authors' weights (OA, Kappa, AA)")
    e.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    _add_data(e, required=False)
    e.add_argument("--out", default=None, help="optional metrics JSON path")
    add_force_option(e)
    add_json_option(e)
    e.set_defaults(func=_cmd_eval)

    m = sub.add_parser("map", help="predict every pixel and write a change-map PNG (truth | prediction | errors)")
    m.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    _add_data(m, required=False)
    m.add_argument("--out", default="change_map.png", help="PNG file to write")
    add_force_option(m)
    add_json_option(m)
    m.set_defaults(func=_cmd_map)

    c = sub.add_parser("convert", help="turn the authors' released checkpoint (SpectralKAN_farmland.pth) into an "
                                       "hsi-cd model.pt")
    c.add_argument("--checkpoint", required=True, help="the reference code's state dict (keys layer1.*, layer2.*)")
    _add_data(c, required=False)
    c.add_argument("--out", required=True, help="model.pt to write (an existing file is never overwritten)")
    add_json_option(c)
    c.set_defaults(func=_cmd_convert)


def _set_threads(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


SYNTHETIC_DEFAULTS = {"size": 80, "bands": 64, "scene_seed": 0, "shading": 0.15}


def _synthetic_flags(args) -> list[str]:
    """The synthetic-scene flags given on the command line."""
    return [f"--{k.replace('_', '-')}" for k in SYNTHETIC_DEFAULTS if getattr(args, k) is not None]


def _check_data_flags(args) -> None:
    """Flags that describe data this run does not read: one line before any work. Without
    ``--data`` (eval, map: the checkpoint's own data) neither the synthetic-scene flags nor
    ``--dataset`` apply; with a folder ``--data`` the synthetic-scene flags do not."""
    from visionlens.errors import InputError

    given = _synthetic_flags(args)
    if args.data is None:
        given += ["--dataset"] if args.dataset else []
        if given:
            raise InputError(f"{given[0]} describes the data, but without --data the checkpoint's own data is used; "
                             f"give --data synthetic (or --data DIR --dataset NAME) with it, or drop {given[0]}")
    elif args.data != "synthetic" and given:
        raise InputError(f"{given[0]} is for --data synthetic, not a folder --data; drop it")


def _data_spec(args) -> dict:
    from visionlens.errors import InputError

    _check_data_flags(args)
    if args.data in (None, "synthetic"):
        if args.dataset:
            raise InputError("--dataset needs --data pointing at the folder with its .mat files")
        for key, value in SYNTHETIC_DEFAULTS.items():
            if getattr(args, key) is None:
                setattr(args, key, value)
        if args.size ** 2 * args.bands > MAX_SCENE_VALUES:
            raise InputError(f"a synthetic scene of --size {args.size} and --bands {args.bands} holds more than "
                             f"{MAX_SCENE_VALUES:,} values per date: lower --size or --bands")
        return {"kind": "synthetic", "size": args.size, "bands": args.bands, "seed": args.scene_seed,
                "shading": args.shading}
    if not args.dataset:
        raise InputError("with a folder --data, name its layout with --dataset (farmland, river, usa, bayarea, barbara)")
    return {"kind": "mat", "folder": str(args.data), "dataset": args.dataset}


def _load_scene(spec: dict):
    from .data import load_dataset
    from .synthetic import SyntheticConfig, make_scene

    if spec["kind"] == "synthetic":
        config = SyntheticConfig(size=int(spec["size"]), bands=int(spec["bands"]), shading=float(spec["shading"]))
        return make_scene(config, seed=int(spec["seed"]))
    return load_dataset(spec["dataset"], spec["folder"])


def _peak_rss_mb() -> float:
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)


def _print(result: dict) -> None:
    print(f"OA {result['oa']:.4f}  Kappa {result['kappa']:.4f}  AA {result['aa']:.4f}  "
          f"params {result['params']:,}  FLOPs/pixel {result['flops']:,} (base MACs {result['base_macs']:,})  "
          + (f"train CPU {result['train_cpu_s']:.2f} s  " if "train_cpu_s" in result else "")
          + f"test CPU {result['test_cpu_s']:.2f} s  "
          f"peak RSS {result['peak_rss_mb']:.0f} MB")


def _cmd_train(args) -> int:
    from visionlens.errors import InputError
    from .train import TRAINABLE

    if args.model not in TRAINABLE:
        raise InputError(f"--model {args.model!r} is not trainable here: use one of {', '.join(TRAINABLE)}")
    if args.seeds is not None and args.seed is not None:
        raise InputError("give either --seed or --seeds, not both")
    _set_threads(args)
    spec = _data_spec(args)
    _check_train_out(args)
    scene = _load_scene(spec)
    if args.seeds is not None:
        return _train_seeds(args, spec, scene)
    metrics, written = _train_one(args, spec, scene, 0 if args.seed is None else args.seed, Path(args.out))
    print(f"wrote {written[0]}, {written[1]} and {written[2]}")
    record_summary(args, {**metrics, "written": [str(w) for w in written]})
    return 0


def _check_train_out(args) -> None:
    """Refuse, before any work, a file of an output's name in ``--out`` (or a seed-K/ folder) that an
    earlier `train` did not write (its metrics.json, or table.json, marks a folder as its own)."""
    from visionlens.outputs import check_out_dir, recorded_run

    out = Path(args.out)
    for folder in [out] if args.seeds is None else [out / f"seed-{seed}" for seed in args.seeds]:
        own = recorded_run(folder, "metrics.json", TRAIN_FILES, keys=("model", "data", "config"))
        check_out_dir(folder, TRAIN_FILES, own)
    if args.seeds is not None:
        check_out_dir(out, SEEDS_FILES, recorded_run(out, "table.json", SEEDS_FILES, keys=("data", "per_seed")))


def _train_one(args, spec: dict, scene, seed: int, out: Path):
    """Train and test one seed into ``out``; returns its metrics and the files written."""
    import torch

    from visionlens.io import save_atomic, write_json
    from .train import TrainConfig, run

    config = TrainConfig(model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         train_fraction=args.train_fraction, patch=args.patch, seed=seed, basis=args.basis)
    model, result = run(scene, config, progress=not args.quiet)
    result["peak_rss_mb"] = _peak_rss_mb()
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = {"state_dict": model.state_dict(), "train_config": config.to_dict(), "data": spec,
                  "bands": scene.bands}
    save_atomic(lambda tmp: torch.save(checkpoint, tmp), out / "model.pt")
    metrics = {"model": args.model, "data": spec, "config": config.to_dict(), **result}
    write_json(metrics, out / "metrics.json")
    _write_map(model, scene, config, out / "change_map.png")
    _print(result)
    return metrics, [out / "model.pt", out / "metrics.json", out / "change_map.png"]


def _train_seeds(args, spec: dict, scene) -> int:
    """One run per ``--seeds`` entry in ``OUT/seed-K/``, then the mean ± sd table."""
    from visionlens.io import save_atomic, write_json
    from .seeds import summarise, table_markdown

    out, runs = Path(args.out), {}
    for seed in args.seeds:
        print(f"seed {seed}:", end=" ")
        runs[seed], _ = _train_one(args, spec, scene, seed, out / f"seed-{seed}")
    summary = {**summarise(args.model, runs), "data": spec, "per_seed": {str(k): _brief(v) for k, v in runs.items()}}
    dataset = spec.get("dataset", "synthetic")
    table = table_markdown(summary, dataset)
    write_json(summary, out / "table.json")
    save_atomic(lambda tmp: Path(tmp).write_text(table), out / "table.md")
    print(table, end="")
    print(f"wrote {out / 'table.md'}, {out / 'table.json'} and seed-K/ folders for seeds {','.join(map(str, args.seeds))}")
    record_summary(args, {**summary, "written": [str(out / "table.md"), str(out / "table.json")]})
    return 0


def _brief(metrics: dict) -> dict:
    keys = ("oa", "kappa", "aa", "train_wall_s", "test_wall_s", "train_cpu_s", "test_cpu_s", "final_loss")
    return {k: metrics[k] for k in keys if k in metrics}


_SPEC_KEYS = {"synthetic": ("size", "bands", "seed", "shading"), "mat": ("folder", "dataset")}


def _read_checkpoint(path: Path) -> dict:
    """The checkpoint's parts (state dict, :class:`TrainConfig`, data spec, bands), checked: one
    :class:`InputError` line for a missing, unsafe, foreign or non-finite file."""
    from visionlens.checks import check_finite
    from visionlens.errors import InputError
    from visionlens.io import load_checkpoint
    from .official import convert_official_state, is_official_state
    from .train import TrainConfig

    if not path.is_file():
        raise InputError(f"no checkpoint at {path}: run `visionlens hsi-cd train --out DIR` first")
    blob = load_checkpoint(path, "hsi-cd checkpoint")
    if is_official_state(blob):
        state, bands, patch = convert_official_state(blob, str(path))
        return {"config": TrainConfig(model="spectralkan-b", patch=patch, trained_elsewhere=True), "data": None, "bands": bands,
                "state_dict": state}
    try:
        config = TrainConfig(**blob["train_config"])
        spec, bands, state = dict(blob["data"]), int(blob["bands"]), dict(blob["state_dict"])
        if not set(_SPEC_KEYS.get(spec.get("kind"), ("kind",))) <= set(spec):
            raise KeyError("data")
    except Exception as exc:  # noqa: BLE001 - any malformed part: one line
        raise InputError(f"{path} is not an hsi-cd checkpoint ({type(exc).__name__}): train one with "
                         "`hsi-cd train`") from None
    for name, tensor in state.items():
        check_finite(f"{path}: weight {name!r}", tensor)
    return {"config": config, "data": spec, "bands": bands, "state_dict": state}


def _restore(args):
    from visionlens.errors import InputError
    from .train import create_model

    path = Path(args.checkpoint)
    _check_data_flags(args)
    saved = _read_checkpoint(path)
    if saved["data"] is None and args.data is None:
        raise InputError(f"{path} is the authors' state dict and does not say its data: give --data DIR --dataset NAME")
    spec = saved["data"] if args.data is None else _data_spec(args)
    config = saved["config"]
    _set_threads(args)
    scene = _load_scene(spec)
    if scene.bands != saved["bands"]:
        hint = " (the released SpectralKAN_farmland.pth has 224: Bay Area or Santa Barbara)" if saved["data"] is None else ""
        raise InputError(f"the checkpoint expects {saved['bands']} bands{hint}, the data has {scene.bands}")
    model = create_model(config.model, scene.bands, config.patch, config.basis)
    try:
        model.load_state_dict(saved["state_dict"])
    except RuntimeError as exc:
        raise InputError(f"{path}: its weights do not fit a {config.model} on {scene.bands} bands "
                         f"({' '.join(str(exc).split())[:160]})") from None
    return model.eval(), scene, config


def _cmd_eval(args) -> int:
    import numpy as np

    from visionlens.io import write_json
    from visionlens.outputs import check_out_file
    from .data import PatchPairs, stratified_split
    from .train import evaluate, model_cost, parameter_count

    if args.out:
        _check_out_not_input(args)
        check_out_file(args.out, force=args.force)
    model, scene, config = _restore(args)
    if config.trained_elsewhere:                                    # the authors' split is unknown: every labelled pixel
        test_pos = np.argwhere(scene.labels >= 0)
    else:
        _, test_pos = stratified_split(scene.labels, config.train_fraction, config.seed)
    result = evaluate(model, PatchPairs(scene, config.patch), test_pos, scene.labels, config.eval_batch)
    result.update(params=parameter_count(model), **model_cost(model), test_pixels=int(len(test_pos)))
    result["peak_rss_mb"] = _peak_rss_mb()
    _print(result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json({"model": config.model, **result}, Path(args.out))
        print(f"wrote {args.out}")
    record_summary(args, {"model": config.model, **result})
    return 0


def _check_out_not_input(args) -> None:
    """An ``--out`` that is the ``--checkpoint`` itself: one line, --force or not."""
    from visionlens.outputs import check_not_input

    check_not_input([("--out", args.out)], [("--checkpoint", args.checkpoint)])


def _cmd_convert(args) -> int:
    import torch

    from visionlens.errors import InputError
    from visionlens.io import save_atomic

    out = Path(args.out)
    if out.exists():
        raise InputError(f"{out} already exists: choose another --out (hsi-cd never overwrites a file)")
    if args.data is None:
        raise InputError("give --data DIR --dataset NAME: the scene the converted model will be scored on")
    model, scene, config = _restore(args)
    checkpoint = {"state_dict": model.state_dict(), "train_config": config.to_dict(), "data": _data_spec(args),
                  "bands": scene.bands, "source": str(Path(args.checkpoint).resolve())}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(lambda tmp: torch.save(checkpoint, tmp), out)
    print(f"wrote {out}: SpectralKAN config b, {scene.bands} bands, {config.patch}x{config.patch} patch "
          f"(class 1 = changed); score it with `visionlens hsi-cd eval --checkpoint {out}`")
    record_summary(args, {"model": config.model, "bands": scene.bands, "patch": config.patch, "written": [str(out)]})
    return 0


def _cmd_map(args) -> int:
    from visionlens.outputs import check_out_file

    out = Path(args.out)
    _check_out_not_input(args)
    check_out_file(out, force=args.force)
    model, scene, config = _restore(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_map(model, scene, config, out)
    print(f"wrote {out}: ground truth | prediction | errors (white changed, red false alarm, green missed)")
    record_summary(args, {"model": config.model, "out": str(out), "pixels": int(scene.labels.size)})
    return 0


def _write_map(model, scene, config, dest: Path) -> None:
    from visionlens.io import save_atomic
    from .data import PatchPairs
    from .maps import change_map_image
    from .train import all_positions, predict

    positions = all_positions(scene.labels.shape)
    pred = predict(model, PatchPairs(scene, config.patch), positions, config.eval_batch).reshape(scene.labels.shape)
    image = change_map_image(pred, scene.labels)
    save_atomic(lambda tmp: image.save(tmp, format="PNG"), dest)
