"""``sata evaluate --data DIR``: any ViT on image folders, streamed batch by batch.

Each set (clean, a built-in corruption applied on the fly, or an ImageNet-C-style folder) is read
through a ``DataLoader`` in the order of each protocol (class-sorted, shuffled, batch size 1) and
seed; every batch goes through every variant, and one record per batch is appended to a
:class:`~visionlens_sata.store.RecordStore`. A re-run with the same settings skips the recorded
batches, so a killed run continues where it stopped.

The table gives per protocol and variant: accuracy on the clean set and mean accuracy over the
corrupted sets, mCE (the plain model = 100, as in :mod:`visionlens_sata.evaluate`), the share of FFN
FLOPs saved, and the throughput (images per second of model forward time, decoding excluded)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader

from visionlens.core.vit import model_output
from visionlens.errors import InputError

from .corruptions import corrupt
from .evaluate import PROTOCOLS, protocol_order, variants
from .folders import EvalSet, FolderImages, collate_items
from .imagenet_classes import restricted_argmax
from .store import RecordStore, record_key

VARIANTS = ("plain", "sata", "sata-reference-coupled", "random-peer", "tome-peer")


@dataclass
class StreamSettings:
    """What a streamed run depends on (recorded on the store's first line)."""

    seeds: tuple[int, ...] = (0,)
    bs1_seeds: tuple[int, ...] = (0,)
    batch: int = 32
    gamma: float = 0.7
    alpha: float = 1.0
    variants: tuple[str, ...] = VARIANTS
    limit: int | None = None  # images per set, spread evenly over its sorted list; None: all
    subset_classes: tuple[int, ...] | None = None  # the argmax is over these classes only; None: all

    def runs(self) -> list[tuple[str, int]]:
        return [(p, s) for p in PROTOCOLS for s in (self.bs1_seeds if p == "bs1" else self.seeds)]


def _normaliser(preprocess):
    mean = torch.tensor(preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std).view(1, 3, 1, 1)
    return lambda x: (x - mean) / std


def _batches(order: torch.Tensor, size: int) -> list[list[int]]:
    return [order[i:i + size].tolist() for i in range(0, len(order), size)]


@torch.no_grad()
def _run_batch(models: dict, x: torch.Tensor, y: torch.Tensor, subset: torch.Tensor | None = None) -> dict:
    out = {}
    for name, module in models.items():
        start = time.perf_counter()
        logits = model_output(module(x))
        if logits.is_cuda:
            torch.cuda.synchronize(logits.device)  # the time of the work, not of its launch
        seconds = time.perf_counter() - start
        top = int(y.max()) if subset is None else int(subset.max())  # the subset holds every label
        if logits.shape[-1] <= top:
            raise InputError(f"the data has class {top} but the model has {logits.shape[-1]} outputs; "
                             "name the class folders by the model's class index or class name")
        out[name] = {"correct": int((restricted_argmax(logits, subset) == y).sum()), "seconds": seconds,
                     "saved_flops": int(module.last_account.saved_flops().sum())}
    return out


@dataclass
class _Runner:
    """What every pass shares: the record store, settings, the model's preprocessing and class
    index of each folder label, the DataLoader workers, the progress bar and the model's device."""

    store: RecordStore
    settings: StreamSettings
    preprocess: object
    model_labels: list[int]
    workers: int
    bar: object
    device: torch.device
    on_skip: object = None  # called with (path, reason) the first time an unreadable image is left out
    skipped: dict = None  # path -> reason of every image left out (this run's and the records')

    def skip(self, path: str, reason: str) -> None:
        if path not in self.skipped:
            self.skipped[path] = reason
            if self.on_skip is not None:
                self.on_skip(path, reason)

    def size(self, s: EvalSet) -> int:
        return len(s.paths) if self.settings.limit is None else min(self.settings.limit, len(s.paths))

    def run(self, model: nn.Module, sets: list[EvalSet]) -> None:
        runs = self.settings.runs()
        for seed in sorted({seed for _, seed in runs}):
            models = {k: v for k, v in variants(model, self.settings.gamma, self.settings.alpha, seed).items()
                      if k in self.settings.variants}
            for s in sets:
                s = _subset(s, self.size(s))
                for protocol in [p for p, q in runs if q == seed]:
                    with torch.random.fork_rng(devices=[]):  # the peers' draws do not depend on what ran before
                        torch.manual_seed(seed)
                        self.one_pass(models, s, protocol, seed)

    def one_pass(self, models: dict, s: EvalSet, protocol: str, seed: int) -> None:
        """One protocol and seed over one set: the batches not yet recorded, streamed and recorded."""
        order = protocol_order(torch.tensor(s.labels), protocol, seed)
        batches = _batches(order, 1 if protocol == "bs1" else self.settings.batch)
        pending = [(i, b) for i, b in enumerate(batches) if (s.name, protocol, seed, i) not in self.store.done]
        self.bar.skip(len(batches) - len(pending))
        if not pending:
            return
        data = FolderImages(s.paths, [self.model_labels[lab] for lab in s.labels], self.preprocess)
        loader = DataLoader(data, batch_sampler=[b for _, b in pending], num_workers=self.workers,
                            collate_fn=collate_items)
        normalise = _normaliser(self.preprocess)
        subset = self.settings.subset_classes
        subset = None if subset is None else torch.tensor(subset, device=self.device)
        for (i, _), (x, y, ids, bad) in zip(pending, loader):
            left_out = [str(s.paths[index]) for index, _ in bad]
            for path, (_, reason) in zip(left_out, bad):
                self.skip(path, reason)
            results = {}
            if x is not None:  # an unreadable image is left out of its batch (a batch of none is recorded empty)
                if s.corruption is not None:
                    x = corrupt(x, s.corruption, s.severity, seed=seed, ids=ids)
                results = _run_batch(models, normalise(x).to(self.device), y.to(self.device), subset)
            record = {"set": s.name, "protocol": protocol, "seed": seed, "batch": i, "n": len(y), "variants": results}
            if bad:
                record["skipped"] = [{"path": p, "reason": r} for p, (_, r) in zip(left_out, bad)]
            self.store.append(record)
            self.bar.update(1)


def run_streamed(model: nn.Module, sets: list[EvalSet], settings: StreamSettings, store: RecordStore, preprocess,
                 model_labels: list[int], workers: int = 0, progress: bool = True, on_skip=None) -> dict[str, str]:
    """Evaluate every variant on every set under every protocol and seed, recording each batch
    (on the model's device). An image that cannot be read is left out of its batch (the rest are
    scored) and reported once through ``on_skip(path, reason)``; images left out in records of an
    earlier, resumed run are reported too. Return ``{path: reason}`` of every image left out."""
    from visionlens.core.progress import Progress

    runner = _Runner(store, settings, preprocess, model_labels, workers, None, next(model.parameters()).device,
                     on_skip, {})
    for record in store.records:
        for item in record.get("skipped", ()):
            runner.skip(item["path"], item["reason"])
    total = sum(-(-runner.size(s) // (1 if p == "bs1" else settings.batch)) for s in sets for p, _ in settings.runs())
    runner.bar = Progress(total, "sata evaluate", enabled=progress, unit="batch")
    try:
        runner.run(model, sets)
    finally:
        runner.bar.close()
    return runner.skipped


def _subset(s: EvalSet, n: int) -> EvalSet:
    """``n`` images spread evenly over the set's sorted list (every class keeps its share)."""
    pick = [i * len(s.paths) // n for i in range(n)]
    return EvalSet(s.name, s.corruption, s.severity, [s.paths[i] for i in pick], [s.labels[i] for i in pick], s.classes)


def _unique(records: list[dict]) -> list[dict]:
    seen, out = set(), []
    for r in records:
        if record_key(r) not in seen:
            seen.add(record_key(r))
            out.append(r)
    return out


def summarise_records(records: list[dict], settings: StreamSettings, ffn_flops_per_image: int) -> list[dict]:
    """One row per (protocol, variant): clean and corrupted accuracy, mCE, FFN FLOPs saved (%)
    and images/s; mean and std over seeds."""
    totals: dict = {}
    for r in _unique(records):
        for name, v in r["variants"].items():
            t = totals.setdefault((r["protocol"], r["seed"], name, r["set"]), [0, 0, 0, 0.0])
            t[0] += v["correct"]
            t[1] += r["n"]
            t[2] += v["saved_flops"]
            t[3] += v["seconds"]
    rows = []
    for protocol in PROTOCOLS:
        seeds = [s for p, s in settings.runs() if p == protocol]
        for name in settings.variants:
            per_seed = [_seed_numbers(totals, protocol, seed, name, ffn_flops_per_image) for seed in seeds]
            per_seed = [p for p in per_seed if p is not None]
            if per_seed:
                rows.append({"protocol": protocol, "variant": name, "seeds": len(per_seed),
                             **{k: _mean_std([p[k] for p in per_seed]) for k in per_seed[0]}})
    return rows


def _seed_numbers(totals: dict, protocol: str, seed: int, name: str, flops: int) -> dict | None:
    mine = {k[3]: v for k, v in totals.items() if k[:3] == (protocol, seed, name)}
    plain = {k[3]: v for k, v in totals.items() if k[:3] == (protocol, seed, "plain")}
    if not mine:
        return None
    corrupted = [k for k in mine if k != "clean"]
    ces = []
    for c in sorted({k.split(":")[0] for k in corrupted}):
        sets = [k for k in corrupted if k.split(":")[0] == c and k in plain]
        err = sum(1 - mine[k][0] / mine[k][1] for k in sets)
        err_plain = sum(1 - plain[k][0] / plain[k][1] for k in sets)
        if err_plain > 0:
            ces.append(err / err_plain)
    images = sum(v[1] for v in mine.values())
    return {"clean": 100 * mine["clean"][0] / mine["clean"][1] if "clean" in mine else None,
            "corrupted": 100 * statistics.mean(mine[k][0] / mine[k][1] for k in corrupted) if corrupted else None,
            "mce": 100 * statistics.mean(ces) if ces else None,
            "ffn_saved": 100 * sum(v[2] for v in mine.values()) / (images * flops),
            "images_per_s": images / max(sum(v[3] for v in mine.values()), 1e-9)}


def _mean_std(values: list) -> tuple[float, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def streamed_table(rows: list[dict], batch: int, images: dict[str, int]) -> str:
    """The summary as Markdown (``images``: the number of images of each set)."""
    proto_name = {"sorted": f"class-sorted, bs {batch}", "shuffled": f"shuffled, bs {batch}", "bs1": "batch size 1"}

    def fmt(m, digits=1):
        return "n/a" if m is None else f"{m[0]:.{digits}f} ± {m[1]:.{digits}f}" if m[1] else f"{m[0]:.{digits}f}"

    lines = [f"sets: {', '.join(f'{k} ({v} images)' for k, v in images.items())}", "",
             "| protocol | variant | seeds | clean acc % | corrupted acc % | mCE (plain = 100) | FFN FLOPs saved % | images/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {proto_name[r['protocol']]} | {r['variant']} | {r['seeds']} | {fmt(r['clean'])} | "
                     f"{fmt(r['corrupted'])} | {fmt(r['mce'])} | {fmt(r['ffn_saved'])} | {fmt(r['images_per_s'])} |")
    return "\n".join(lines) + "\n"
