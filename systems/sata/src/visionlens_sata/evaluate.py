"""Evaluate a ViT with and without SATA on clean and corrupted synthetic-world test images under
three batching protocols: class-sorted batches (the reference evaluation: an ImageFolder without
shuffling), shuffled batches and batch size 1, over several seeds.

The seed sets the corruption noise, the shuffled order and the order of images within a class in
the sorted protocol. Every variant is normalised by the plain model under the same protocol and
seed: ``CE_c = sum_s err_variant(c, s) / sum_s err_plain(c, s)``, ``mCE = 100 * mean_c CE_c``
(ImageNet-C normalises by AlexNet; here the plain model is the normaliser, so it scores 100).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from visionlens.core.progress import Progress

from .corruptions import CORRUPTIONS, SEVERITIES, corrupt
from .sata import SataConfig, SataViT

PROTOCOLS = ("sorted", "shuffled", "bs1")


def variants(model: nn.Module, gamma: float = 0.7, alpha: float = 1.0, seed: int = 0) -> dict[str, nn.Module]:
    """The compared models: plain, per-image SATA, the reference's batch-coupled SATA (reference
    merge), and the two matched-budget peers (random set A, ToMe-style merging)."""
    return {
        "plain": SataViT(model, SataConfig(gamma=gamma, alpha=alpha), enabled=False),
        "sata": SataViT(model, SataConfig(gamma=gamma, alpha=alpha)),
        "sata-reference-coupled": SataViT(model, SataConfig(gamma=gamma, alpha=alpha, merge="reference",
                                                            reference_batch_coupling=True)),
        "random-peer": SataViT(model, SataConfig(gamma=gamma, alpha=alpha, grouping="random", seed=seed)),
        "tome-peer": SataViT(model, SataConfig(gamma=gamma, alpha=alpha, grouping="tome")),
    }


def protocol_order(labels: torch.Tensor, protocol: str, seed: int) -> torch.Tensor:
    """Evaluation order: class-sorted (random order inside each class), or a random permutation."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=g)
    if protocol == "sorted":
        return perm[labels[perm].argsort(stable=True)]
    return perm


@torch.no_grad()
def predict(module: SataViT, images: torch.Tensor, order: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions (in the original image order) and FFN FLOPs saved per image."""
    preds = torch.empty(len(images), dtype=torch.long)
    saved = torch.zeros(len(images))
    for start in range(0, len(order), batch):
        idx = order[start:start + batch]
        preds[idx] = module(images[idx]).argmax(1)
        saved[idx] = module.last_account.saved_flops().float()
    return preds, saved


@torch.no_grad()
def latency_ms(module: nn.Module, images: torch.Tensor, batch: int, repeats: int = 3) -> float:
    """Median CPU wall time per image (ms) over ``repeats`` passes of ``images`` in batches."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for start in range(0, len(images), batch):
            module(images[start:start + batch])
        times.append((time.perf_counter() - t0) / len(images) * 1e3)
    return statistics.median(times)


@dataclass
class EvalSettings:
    images: int = 100
    seeds: tuple[int, ...] = (0, 1, 2)
    bs1_seeds: tuple[int, ...] = (0,)
    batch: int = 64
    gamma: float = 0.7
    alpha: float = 1.0
    corruptions: tuple[str, ...] = CORRUPTIONS
    severities: tuple[int, ...] = SEVERITIES
    model: str = "world-vit"
    latency_images: int = 32


def _world_test(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from visionlens.data.world import World

    batch = World().batch("test", range(n))
    return batch["image"], batch["label"]


def run_evaluation(settings: EvalSettings, progress: bool = True) -> dict:
    """Accuracy per (protocol, seed, variant, set), FFN savings and latency; see :func:`summarise`."""
    from visionlens.models.world_eval import normalise
    from visionlens.models.zoo import load_model

    with torch.random.fork_rng(devices=[]):  # seeded here; the caller's random state comes back
        torch.manual_seed(0)
        return _run(settings, load_model(settings.model).module, normalise, progress)


def _run(settings: EvalSettings, model: nn.Module, normalise, progress: bool) -> dict:
    images, labels = _world_test(settings.images)
    sets = [("clean", 0)] + [(c, s) for c in settings.corruptions for s in settings.severities]
    runs = [(p, seed) for p in PROTOCOLS for seed in (settings.bs1_seeds if p == "bs1" else settings.seeds)]
    names = list(variants(model, settings.gamma, settings.alpha))
    bar = Progress(len(runs) * len(sets) * len(names), "sata evaluate", enabled=progress, unit="run")
    correct: dict = {}
    savings: dict = {}
    for seed in sorted({seed for _, seed in runs}):
        models = variants(model, settings.gamma, settings.alpha, seed)
        protocols = [p for p, s in runs if s == seed]
        for c, s in sets:
            x = normalise(images if c == "clean" else corrupt(images, c, s, seed=seed))
            for protocol in protocols:
                order = protocol_order(labels, protocol, seed)
                batch = 1 if protocol == "bs1" else settings.batch
                for name, module in models.items():
                    preds, saved = predict(module, x, order, batch)
                    correct[(protocol, seed, name, (c, s))] = int((preds == labels).sum())
                    if c == "clean":
                        savings[(protocol, seed, name)] = float(saved.mean())
                    bar.update(1)
    clean = normalise(images[: settings.latency_images])
    models = variants(model, settings.gamma, settings.alpha, 0)
    latency = {name: {"bs1": latency_ms(m, clean, 1), f"bs{settings.batch}": latency_ms(m, clean, settings.batch)}
               for name, m in models.items()}
    models["sata"](clean[:1])
    total_flops = models["sata"].last_account.total_flops()
    return {"settings": asdict(settings), "correct": correct, "savings": savings, "latency_ms": latency,
            "ffn_flops_per_image": total_flops, "sets": sets, "variants": names, "runs": runs, "n": len(labels)}


def summarise(raw: dict) -> list[dict]:
    """One row per (protocol, variant): clean and corrupted accuracy, mCE (plain = 100), FFN FLOPs
    saved (share of the plain FFN FLOPs), latency; mean and std over seeds."""
    n, sets = raw["n"], [tuple(s) for s in raw["sets"]]
    corruptions = sorted({c for c, _ in sets if c != "clean"})
    rows = []
    for protocol in PROTOCOLS:
        seeds = [s for p, s in raw["runs"] if p == protocol]
        for name in raw["variants"]:
            clean, corrupted, mce, saved = [], [], [], []
            for seed in seeds:
                acc = {st: raw["correct"][(protocol, seed, name, st)] / n for st in sets}
                clean.append(100 * acc[("clean", 0)])
                corrupted.append(100 * statistics.mean(v for st, v in acc.items() if st[0] != "clean"))
                ces = []
                for c in corruptions:
                    err = sum(1 - acc[st] for st in sets if st[0] == c)
                    err_plain = sum(1 - raw["correct"][(protocol, seed, "plain", st)] / n for st in sets if st[0] == c)
                    if err_plain > 0:  # a corruption the plain model never fails on has no CE
                        ces.append(err / err_plain)
                mce.append(100 * statistics.mean(ces) if ces else float("nan"))
                saved.append(100 * raw["savings"][(protocol, seed, name)] / raw["ffn_flops_per_image"])
            rows.append({"protocol": protocol, "variant": name, "seeds": len(seeds),
                         "clean": _ms(clean), "corrupted": _ms(corrupted), "mce": _ms(mce), "ffn_saved": _ms(saved)})
    return rows


def _ms(values: list[float]) -> tuple[float, float]:
    if any(v != v for v in values):  # nan
        return (float("nan"), 0.0)
    return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def table_markdown(raw: dict) -> str:
    """The summary table and the latency table as Markdown."""
    rows = summarise(raw)
    batch = raw["settings"]["batch"]
    proto_name = {"sorted": f"class-sorted, bs {batch}", "shuffled": f"shuffled, bs {batch}", "bs1": "batch size 1"}
    fmt = lambda m: "n/a" if m[0] != m[0] else f"{m[0]:.1f} ± {m[1]:.1f}" if m[1] else f"{m[0]:.1f}"  # noqa: E731
    lines = ["| protocol | variant | seeds | clean acc % | corrupted acc % | mCE (plain = 100) | FFN FLOPs saved % |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {proto_name[r['protocol']]} | {r['variant']} | {r['seeds']} | {fmt(r['clean'])} | "
                     f"{fmt(r['corrupted'])} | {fmt(r['mce'])} | {fmt(r['ffn_saved'])} |")
    lines += ["", f"| variant | CPU ms / image, bs 1 | CPU ms / image, bs {batch} |", "|---|---|---|"]
    for name, lat in raw["latency_ms"].items():
        lines.append(f"| {name} | {lat['bs1']:.2f} | {lat[f'bs{batch}']:.2f} |")
    return "\n".join(lines) + "\n"


def raw_to_dict(raw: dict) -> dict:
    """The raw counts with JSON keys (tuple keys joined by '|')."""
    enc = lambda k: "|".join(str(p) if not isinstance(p, tuple) else f"{p[0]}:{p[1]}" for p in k)  # noqa: E731
    out = dict(raw)
    out["correct"] = {enc(k): v for k, v in raw["correct"].items()}
    out["savings"] = {enc(k): v for k, v in raw["savings"].items()}
    return out


def raw_to_json(raw: dict) -> str:
    """The raw counts as strict JSON text (a NaN or infinity becomes null)."""
    from visionlens.io import dumps

    return dumps(raw_to_dict(raw), indent=1)
