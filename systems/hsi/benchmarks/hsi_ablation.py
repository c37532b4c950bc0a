"""SpectralKAN ablation (paper Table 8: KAN vs WKAN vs MTSF-KAN vs SpectralKAN) with cheap peers,
on synthetic bi-temporal scenes, several seeds; prints a Markdown table (mean ± sd) and writes JSON.

    python systems/hsi/benchmarks/hsi_ablation.py --seeds 0 1 2 --out hsi_ablation.json
    python systems/hsi/benchmarks/hsi_ablation.py --paper-counts     # NP and FLOPs at the real datasets' band counts
    python systems/hsi/benchmarks/hsi_ablation.py --basis-speed      # one training step, fast vs recursive basis
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from visionlens_hsi.synthetic import SyntheticConfig, make_scene
from visionlens_hsi.train import TrainConfig, run

MODELS = ["kan", "wkan", "mtsf-kan", "spectralkan-b", "spectralkan-d", "dual-branch", "mlp", "cnn",
          "cva-otsu", "pca-kmeans"]
LABELS = {"kan": "KAN [25b, 16, 2]", "wkan": "WKAN [25b, 16, 2]", "mtsf-kan": "MTSF-KAN (KAN [25,16,1] + [b,16,2])",
          "spectralkan-b": "SpectralKAN, channel [b, 2] (config b)", "spectralkan-d": "SpectralKAN, channel [b, 16, 2] (config d)",
          "dual-branch": "Dual-branch SpectralKAN", "mlp": "MLP on the patch (64 hidden)", "cnn": "Small CNN (2 conv 3x3, 32)",
          "cva-otsu": "CVA + Otsu (unsupervised)", "pca-kmeans": "PCA + k-means (unsupervised)"}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--bands", type=int, default=32)
    p.add_argument("--shading", type=float, default=0.15)
    p.add_argument("--train-fraction", type=float, default=0.05)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--out", default="hsi_ablation.json", help="the results file to write (never replaced)")
    p.add_argument("--paper-counts", action="store_true", help="print NP / FLOPs at the paper's band counts and exit")
    p.add_argument("--basis-speed", action="store_true", help="time a training step with each basis and exit")
    p.add_argument("--table-from", nargs="+", default=None, help="print the table of earlier runs' JSON files and exit")
    args = p.parse_args(argv)
    if args.table_from:
        saved = []
        for path in args.table_from:
            with open(path) as fh:
                saved.append(json.load(fh))
        rows = [r for s in saved for r in s["rows"]]
        print(table(rows, saved[0]["args"]["models"]))
        if any("kappa_boundary" in r for r in rows):
            print(boundary_table(rows, saved[0]["args"]["models"]))
        return
    if not (args.paper_counts or args.basis_speed) and os.path.exists(args.out):
        print(f"error: --out {args.out} exists; give another path (the run would replace it)", file=sys.stderr)
        raise SystemExit(2)
    torch.set_num_threads(1)
    if args.paper_counts:
        print(paper_counts())
        return
    if args.basis_speed:
        print(basis_speed())
        return

    rows = []
    for seed in args.seeds:
        scene = make_scene(SyntheticConfig(size=args.size, bands=args.bands, shading=args.shading), seed=seed)
        for name in args.models:
            config = TrainConfig(model=name, epochs=args.epochs, lr=args.lr, train_fraction=args.train_fraction, seed=seed)
            _, result = run(scene, config)
            rows.append({"model": name, "seed": seed, **result})
            print(f"seed {seed} {name:14s} kappa {result['kappa']:.4f} oa {result['oa']:.4f} "
                  f"train {result['train_cpu_s']:.1f}s", flush=True)
    with open(args.out, "x") as fh:
        json.dump({"args": vars(args), "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                   "date": time.strftime("%Y-%m-%d"), "rows": rows}, fh, indent=1)
    print(table(rows, args.models))
    print(boundary_table(rows, args.models))


PAPER_BANDS = {"Farmland": 155, "River": 198, "USA": 154, "Bay Area / Barbara": 224}


def paper_counts() -> str:
    """Parameters and per-pixel cost of every ablation model at the real datasets' band counts."""
    from visionlens_hsi.train import model_cost, parameter_count, create_model

    lines = ["| model | " + " | ".join(f"{d} (b={b}) NP / base MMACs / MFLOPs" for d, b in PAPER_BANDS.items()) + " |",
             "|---|" + "---|" * len(PAPER_BANDS)]
    for name in ["kan", "wkan", "mtsf-kan", "spectralkan-b", "spectralkan-d", "dual-branch"]:
        cells = []
        for bands in PAPER_BANDS.values():
            model = create_model(name, bands)
            cost = model_cost(model)
            cells.append(f"{parameter_count(model):,} / {cost['base_macs'] / 1e6:.3f} / {cost['flops'] / 1e6:.3f}")
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def basis_speed(bands: int = 155, repeats: int = 5) -> str:
    """Median CPU time of one Adam step (batch 64) and of inference on 1,000 patches, per basis."""
    from visionlens_hsi.spectralkan import SpectralKAN

    x, y = torch.rand(64, 2, bands, 25), torch.randint(0, 2, (64,))
    test = torch.rand(1000, 2, bands, 25)
    lines = ["| basis | train step (batch 64) ms | inference, 1,000 patches ms |", "|---|---|---|"]
    for basis in ("recursive", "fast"):
        torch.manual_seed(0)
        model = SpectralKAN(bands, 5, "b", "wkan", basis)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        steps, infer = [], []
        for _ in range(repeats):
            t = time.process_time()
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            steps.append(time.process_time() - t)
            with torch.no_grad():
                t = time.process_time()
                for s in range(0, 1000, 250):
                    model(test[s:s + 250])
                infer.append(time.process_time() - t)
        lines.append(f"| {basis} | {1e3 * np.median(steps):.1f} | {1e3 * np.median(infer):.0f} |")
    return "\n".join(lines)


def boundary_table(rows, models) -> str:
    """Kappa and OA within 2 px of a change edge vs elsewhere (test pixels only)."""
    lines = ["| model | Kappa, boundary band | Kappa, interior | OA, boundary band | OA, interior |", "|---|---|---|---|---|"]
    for name in models:
        keep = [r for r in rows if r["model"] == name and "kappa_boundary" in r]
        if keep:
            cells = []
            for key in ("kappa_boundary", "kappa_interior", "oa_boundary", "oa_interior"):
                v = np.array([r[key] for r in keep])
                cells.append(f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.4f}")
            lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(rows, models) -> str:
    def ms(name, key, fmt):
        v = np.array([r[key] for r in rows if r["model"] == name], dtype=float)
        return f"{fmt.format(v.mean())} ± {fmt.format(v.std(ddof=1) if len(v) > 1 else 0.0)}"

    lines = ["| model | NP | FLOPs / px | base MACs / px | OA | Kappa | AA | train CPU s | test CPU s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in models:
        first = next(r for r in rows if r["model"] == name)
        cost = [f"{first[k]:,}" if k in first else "–" for k in ("params", "flops", "base_macs")]
        lines.append(f"| {LABELS.get(name, name)} | {' | '.join(cost)} | "
                     f"{ms(name, 'oa', '{:.4f}')} | {ms(name, 'kappa', '{:.4f}')} | "
                     f"{ms(name, 'aa', '{:.4f}')} | {ms(name, 'train_cpu_s', '{:.1f}')} | {ms(name, 'test_cpu_s', '{:.2f}')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
