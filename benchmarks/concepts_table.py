"""TraNCE (VAE) vs ICE (NMF) concept discovery, side by side: Faith / Fidelity / Coherence per
class and averaged, and the best-part IoU of every VAE concept on the synthetic world.

    python benchmarks/concepts_table.py world --out /tmp/concepts-bench
    python benchmarks/concepts_table.py mobilenet --data /work/shared/data/imagenet-sample --out /tmp/concepts-bench

``world``: world-cnn at layer3, world:val, every class, 32 images per class, c' = 10, one reducer
per class. ``mobilenet``: mobilenet_v2 at features.18, a group of related ImageNet classes (one
photo each in the ImageNet sample, so each photo gives 8 crops/flips), one reducer pooled over
the group, scored per class. Writes ``<out>/<setting>.md`` (tables), ``<out>/<setting>.json`` and
the run folders; with ``--docs`` also a small concept sheet PNG into docs/.

``--vae-legacy`` trains the VAE as before issue 29 (60 epochs, lr 3e-3, batch 256, no
validation hold-out, no early stopping, random start). ``--fit-only`` times the reducers alone on
the same activations (the setting's rows, pooled over its classes): NMF, the VAE, the VAE from a
random start (with and without the warm-up) and the legacy VAE, ``--repeats`` times each per
seed, interleaved, one thread; it prints the median times and the VAE / NMF ratios:

    python benchmarks/concepts_table.py mobilenet --classes 151-152 --fit-only --seeds 5 --repeats 3

``--variants 'lr2:lr=0.02;b64:batch_size=64'`` times more VAE settings beside them; every VAE line
also prints the mean over the seeds of its best held-out loss (how well it fits, not only how fast).

``--reducers vae`` runs the VAE only; ``--compare OLD.json`` prints the paired Faith difference of
the VAE against an earlier run's ``<setting>.json`` (mean +- 1.96 standard errors over classes).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

import _cli

LEGACY_VAE = dict(epochs=60, lr=3e-3, batch_size=256, val_fraction=0.0, init="random", warmup=0)  # before issue 29
PREVIOUS_VAE = dict(init="random", warmup=0)  # issue 29's first step: early stopping from a random start

SETTINGS = {
    "world": dict(model="world-cnn", layer="layer3", data="world:val", classes="all", images=32, views=1, pooled=False),
    "mobilenet": dict(model="mobilenet_v2", layer="features.18", data="/work/shared/data/imagenet-sample",
                      classes="151-160", images=1, views=8, pooled=True),
}


def main() -> None:
    ap = _cli.Parser(description=__doc__.splitlines()[0])
    ap.add_argument("setting", choices=SETTINGS)
    ap.add_argument("--data", default=None, help="override the data source (e.g. /work/shared/data/imagenet-sample)")
    ap.add_argument("--classes", default=None)
    ap.add_argument("--images", type=_cli.positive_int, default=None, help="images (photos) per class")
    ap.add_argument("--n-concepts", type=_cli.positive_int, default=10)
    ap.add_argument("--vae-epochs", type=_cli.positive_int, default=None, help="VAE epoch cap (default: the reducer's)")
    ap.add_argument("--vae-init", default=None, choices=["pca", "random"], help="VAE start (default: the reducer's)")
    ap.add_argument("--vae-legacy", action="store_true", help="train the VAE as before issue 29 (no early stopping)")
    ap.add_argument("--fit-only", action="store_true", help="only time the reducers' fits on the same activations")
    ap.add_argument("--repeats", type=_cli.positive_int, default=3, help="fits per reducer and seed with --fit-only")
    ap.add_argument("--seeds", type=_cli.positive_int, default=1, help="seeds 0..N-1 with --fit-only (the VAE's stop varies by seed)")
    ap.add_argument("--variants", default="", help="with --fit-only, more VAE settings to time: "
                    "'LABEL:KEY=VALUE,KEY=VALUE;LABEL2:...' (e.g. 'lr2:lr=0.02;b64:batch_size=64')")
    ap.add_argument("--reducers", type=_cli.names(["vae", "nmf"]), default=["vae", "nmf"], help="which reducers to run (vae, nmf or both)")
    ap.add_argument("--compare", default=None, help="an earlier <setting>.json: print the paired VAE Faith difference")
    ap.add_argument("--out", default="/tmp/concepts-bench")
    ap.add_argument("--docs", action="store_true", help="also write docs/concept-sheet-<setting>.png")
    ap.add_argument("--sheet-only", action="store_true", help="only redraw the docs sheet from a finished run in --out")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from visionlens.concepts.run import parse_classes, run_concepts
    from visionlens.concepts.sources import open_source
    from visionlens.models import load_model

    cfg = dict(SETTINGS[args.setting])
    for key in ("data", "classes", "images"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    model = load_model(cfg["model"])
    source = open_source(cfg["data"], model, views=cfg["views"])
    classes = parse_classes(cfg["classes"], source.classes())
    out = Path(args.out)
    if args.sheet_only:
        return docs_sheet(model, cfg, source, classes, out, args.setting)
    if args.fit_only:
        return fit_times(model, cfg, source, classes, args)
    results = {}
    for reducer in args.reducers:
        options = {"seed": 0}
        if reducer == "vae":
            options.update(LEGACY_VAE if args.vae_legacy else {})
            if args.vae_epochs is not None:
                options["epochs"] = args.vae_epochs
            if args.vae_init is not None:
                options["init"] = args.vae_init
        t0 = time.perf_counter()
        results[reducer] = run_concepts(
            model, cfg["layer"], source, classes, out / f"{args.setting}-{reducer}", reducer=reducer,
            n_concepts=args.n_concepts, reducer_options=options, n_images=cfg["images"] * cfg["views"],
            pooled=cfg["pooled"], progress=False, data_name=cfg["data"])
        results[reducer]["wall_s"] = round(time.perf_counter() - t0, 1)
        print(f"{reducer}: {results[reducer]['average']} ({results[reducer]['wall_s']} s)", flush=True)
        print(f"{reducer} Faith {mean_ci(class_faith(results[reducer]))}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.setting}.json").write_text(json.dumps(results, indent=2))
    if args.compare and "vae" in results:
        before = class_faith(json.loads(Path(args.compare).read_text())["vae"])
        now = class_faith(results["vae"])
        print(f"VAE Faith before {mean_ci(before)}, paired now - before {mean_ci([a - b for a, b in zip(now, before)])}")
    if set(results) != {"vae", "nmf"}:
        return
    lines = [f"{cfg['model']} @ {cfg['layer']}, data {cfg['data']}, classes {cfg['classes']}, "
             f"{cfg['images']} image(s) x {cfg['views']} view(s) per class, c' = {args.n_concepts}, "
             f"{'one reducer pooled over the classes' if cfg['pooled'] else 'one reducer per class'}, "
             f"Coherence = Pearson (default), weights by autograd", "",
             "| class | VAE Fidelity | VAE Coherence | VAE Faith | NMF Fidelity | NMF Coherence | NMF Faith |"
             + (" VAE best-part IoU (random) | NMF best-part IoU (random) |" if args.setting == "world" else ""),
             "|---|---|---|---|---|---|---|" + ("---|---|" if args.setting == "world" else "")]

    def iou_cell(r):
        p = r["part_iou"]
        return f" {sum(p['iou']) / len(p['iou']):.3f} ({sum(p['random_iou']) / len(p['random_iou']):.3f}) |"

    for cls in results["vae"]["classes"]:
        v, n = results["vae"]["classes"][cls], results["nmf"]["classes"][cls]
        row = (f"| {cls}: {v['name']} | {v['scores']['fidelity']:.2f} | {v['scores']['coherence']:.2f} | "
               f"{v['scores']['faith']:.2f} | {n['scores']['fidelity']:.2f} | {n['scores']['coherence']:.2f} | "
               f"{n['scores']['faith']:.2f} |")
        if args.setting == "world":
            row += iou_cell(v) + iou_cell(n)
        lines.append(row)
    va, na = results["vae"]["average"], results["nmf"]["average"]
    row = (f"| **mean** | **{va['fidelity']:.2f}** | **{va['coherence']:.2f}** | **{va['faith']:.2f}** | "
           f"**{na['fidelity']:.2f}** | **{na['coherence']:.2f}** | **{na['faith']:.2f}** |")
    if args.setting == "world":
        row += f" {va['best_part_iou']:.3f} ({va['random_iou']:.3f}) | {na['best_part_iou']:.3f} ({na['random_iou']:.3f}) |"
    lines.append(row)
    lines.append("")
    lines.append(f"wall time: VAE {results['vae']['wall_s']} s, NMF {results['nmf']['wall_s']} s")
    if args.setting == "world":
        lines += ["", "Best-part IoU of every VAE concept (concept: part, IoU / random-layout IoU):", ""]
        for cls, r in results["vae"]["classes"].items():
            p = r["part_iou"]
            cells = ", ".join(f"{k}: {name} {iou:.2f}/{rnd:.2f}" for k, (name, iou, rnd)
                              in enumerate(zip(r["part_names"], p["iou"], p["random_iou"])))
            lines.append(f"- {cls} {r['name']}: {cells}")
    (out / f"{args.setting}.md").write_text("\n".join(lines) + "\n")
    (out / f"{args.setting}.json").write_text(json.dumps(results, indent=2))
    print("\n".join(lines))
    if args.docs:
        docs_sheet(model, cfg, source, classes, out, args.setting)


def class_faith(result: dict) -> list[float]:
    """Per-class Faith of one reducer's run, in class order."""
    return [r["scores"]["faith"] for _, r in sorted(result["classes"].items(), key=lambda kv: int(kv[0]))]


def mean_ci(values: list[float]) -> str:
    """``mean +- 1.96 standard errors`` (the 95 % CI over the classes)."""
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.2f} +- {1.96 * sd / len(values) ** 0.5:.2f}"


def fit_times(model, cfg, source, classes, args) -> None:
    """Median fit time of NMF, the VAE from a PCA start (``--vae-init pca``), the VAE from a random
    start (the default), the previous schedule (random start, no warm-up) and the legacy VAE on the same rows,
    over ``--seeds`` seeds x ``--repeats`` interleaved fits, the ratios to NMF and each VAE's median
    time per epoch (the stop, and so the epochs, vary with the seed and with float rounding). A
    variant with ``softplus=aten`` decodes with ATen's softplus instead of the log1p-free one."""
    import visionlens.concepts.vae as vae
    from visionlens.concepts.collect import CALC_LIMIT, collect_rows
    from visionlens.concepts.factory import make_reducer
    from visionlens.core.layers import resolve_layer

    name, module = resolve_layer(model.module, cfg["layer"])
    items = [it for c in classes for it in source.items(c, cfg["images"] * cfg["views"])]
    rows, _ = collect_rows(model.module, name, module, source, items, 32, CALC_LIMIT, 0, False)
    kinds = {"nmf": ("nmf", {}), "vae-pca": ("vae", {"init": "pca"}), "vae-random": ("vae", {"init": "random"}),
             "vae-previous": ("vae", PREVIOUS_VAE), "vae-legacy": ("vae", LEGACY_VAE), **parse_variants(args.variants)}
    times: dict[str, list[float]] = {k: [] for k in kinds}
    epochs: dict[str, list[int]] = {k: [] for k in kinds}
    held_out: dict[str, list[float]] = {k: [] for k in kinds}
    per_epoch: dict[str, list[float]] = {k: [] for k in kinds}
    ours = vae.softplus
    for seed in range(args.seeds):
        for _ in range(args.repeats):
            for label, (kind, options) in kinds.items():
                options = dict(options)
                vae.softplus = torch.nn.functional.softplus if options.pop("softplus", None) == "aten" else ours
                t0 = time.perf_counter()
                reducer = make_reducer(kind, args.n_concepts, seed=seed, **options).fit(rows)
                times[label].append(time.perf_counter() - t0)
                vae.softplus = ours
                if kind == "vae":
                    per_epoch[label].append(times[label][-1] / reducer.epochs_run)
                if kind == "vae" and len(epochs[label]) == seed:
                    epochs[label].append(reducer.epochs_run)
                    held_out[label].extend([min(reducer.history["val"])] if reducer.history["val"] else [])
    med = {k: statistics.median(v) for k, v in times.items()}
    per_seed = {k: [statistics.median(v[i * args.repeats:(i + 1) * args.repeats]) for i in range(args.seeds)]
                for k, v in times.items()}
    print(f"{cfg['model']} @ {name}: {tuple(rows.shape)} rows, c' = {args.n_concepts}, one thread, median of "
          f"{args.seeds} seed(s) x {args.repeats} fit(s)")
    for label in kinds:
        ratio = (f", {med[label] / med['nmf']:.2f}x NMF (per seed "
                 f"{'/'.join(f'{a / b:.1f}' for a, b in zip(per_seed[label], per_seed['nmf']))})") if label != "nmf" else ""
        trained = f", epochs per seed {epochs[label]}" if epochs[label] else ""
        if held_out[label]:
            trained += f", best held-out loss mean {statistics.mean(held_out[label]):.4f}"
        if per_epoch[label]:
            trained += f", {statistics.median(per_epoch[label]) * 1e3:.1f} ms per epoch"
        print(f"  {label:12s} {med[label]:6.2f} s{ratio}{trained}")


def parse_variants(text: str) -> dict[str, tuple[str, dict]]:
    """``'LABEL:KEY=VALUE,KEY=VALUE;...'`` -> ``{LABEL: ("vae", {KEY: VALUE})}`` (numbers parsed)."""
    variants = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        label, _, settings = item.partition(":")
        options = {}
        for pair in filter(None, settings.split(",")):
            key, _, value = pair.partition("=")
            try:
                options[key.strip()] = int(value) if value.strip().lstrip("-").isdigit() else float(value)
            except ValueError:
                options[key.strip()] = value.strip()
        variants[f"vae-{label.strip()}"] = ("vae", options)
    return variants


def docs_sheet(model, cfg, source, classes, out: Path, setting: str) -> None:
    """The VAE concept sheet of the first class (top 5 concepts, Bessel view) for docs/."""
    from visionlens.concepts.discovery import best_part_iou, discover_class
    from visionlens.concepts.factory import load_reducer
    from visionlens.concepts.sheet import concept_sheet, save_sheet

    cls = classes[0]
    run_dir = out / f"{setting}-vae"
    name = "pooled.pt" if cfg["pooled"] else f"class_{cls}.pt"
    found = discover_class(model, cfg["layer"], source, cls, load_reducer(run_dir / "reducers" / name),
                           n_images=cfg["images"] * cfg["views"], fit=False, progress=False)
    found.extras["part_iou"] = best_part_iou(found)
    dest = Path(__file__).resolve().parents[1] / "docs" / f"concept-sheet-{setting}.png"
    save_sheet(concept_sheet(found, "bessel", tile=80, max_concepts=5), dest)
    print(f"wrote {dest} ({dest.stat().st_size // 1024} KB)")

if __name__ == "__main__":
    _cli.run(main)
