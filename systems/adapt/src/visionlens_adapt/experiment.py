"""One comparison run: train the source models once per seed, adapt with every method and peer,
evaluate on the target set, and collect accuracy, prototype separation and selection statistics.
Used by ``visionlens adapt`` and ``systems/adapt/benchmarks/adapt_table.py``."""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass, field

from visionlens.errors import InputError

from .data import DomainShift
from .eianet import REFERENCE, NeighbourhoodObjective
from .framework import AdaptConfig, SourceConfig, adapt, evaluate, predict, prototype_separation, train_source
from .network import AdaptNet
from .peers import AaD, InformationMaximisation, SourceOnly
from .proulearn import STRATEGIES, ProULearnObjective, SelectionOptions, homogeneity, select

# method -> (source model, description)
METHODS = {
    "source-only": ("linear", "source model, linear head, no adaptation"),
    "source-only-etf": ("etf", "source model, ETF head (attention off at source), no adaptation"),
    "shot-im": ("linear", "SHOT-IM: entropy + diversity, classifier frozen"),
    "aad": ("linear", "neighbourhood baseline (AaD objective, linear head, no attention)"),
    "eianet-etf-only": ("etf", "EIANet objective + ETF head, attention off (tau = 0)"),
    "eianet": ("etf", "EIANet: ETF head + attention (tau = 0.01 at target, 0 at source; reference)"),
    "eianet-tau0.1": ("etf", "EIANet with tau = 0.1 (the Office-31 script)"),
    "eianet-src-attn": ("etf-attn", "EIANet variant: attention trained at source (tau = 0.1 at source and target)"),
    **{f"proulearn-{s}": ("linear", f"ProULearn training [reconstructed], {s} selection") for s in STRATEGIES},
}
DEFAULT_METHODS = tuple(m for m in METHODS if m != "eianet-tau0.1")


@dataclass
class RunConfig:
    backbone: str = "small-cnn"
    backbone_weights: str | None = None
    device: str = "cpu"
    bottleneck: int = 64
    source: SourceConfig = field(default_factory=SourceConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    budget: float = 0.05
    temperature: float = REFERENCE["temperature"]
    selection: SelectionOptions = field(default_factory=SelectionOptions)


def parse_methods(text: str) -> list[str]:
    if not text.strip(" ,"):
        raise InputError(f"--methods is empty; give comma-separated methods ({', '.join(METHODS)}) or all")
    names = list(DEFAULT_METHODS) if text.strip() == "all" else [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in METHODS]
    if bad:
        raise InputError(f"unknown method(s) {', '.join(bad)}; choose from: {', '.join(METHODS)} or all")
    return names


def _source_model(kind: str, shift: DomainShift, cfg: RunConfig, seed: int) -> tuple[AdaptNet, dict]:
    head = "linear" if kind == "linear" else "etf"
    temp = 0.1 if kind == "etf-attn" else 0.0
    net = AdaptNet(shift.num_classes, cfg.backbone, head, cfg.bottleneck, temperature=temp, seed=seed,
                   backbone_weights=cfg.backbone_weights).to(cfg.device)
    scfg = SourceConfig(**{**cfg.source.__dict__, "seed": seed})
    info = train_source(net, shift.source_x, shift.source_y, scfg)
    return net, info


def _objective(method: str, net: AdaptNet, shift: DomainShift, cfg: RunConfig, seed: int, extra: dict,
               cache: dict):
    if method.startswith("source-only"):
        return SourceOnly()
    if method == "shot-im":
        return InformationMaximisation()
    if method == "aad":
        net.set_temperature(0.0)
        return AaD()
    if method.startswith("eianet"):
        net.set_temperature({"eianet": cfg.temperature, "eianet-etf-only": 0.0}.get(method, 0.1))
        return NeighbourhoodObjective()
    strategy = method.split("-", 1)[1]
    f, p = predict(net, shift.target_x)
    if "h" not in cache:  # same source model for every strategy: compute HPE once
        cache["h"] = homogeneity(f, cfg.selection.n_trees, cfg.selection.sample_size, seed, cfg.selection.smooth_knn)
    h = cache["h"]
    picked = select(strategy, f, p, cfg.budget, seed, cfg.selection)
    labels = shift.target_y[picked]
    usable = labels >= 0  # a planted outlier has no class: its label is spent budget
    extra.update(labelled=len(picked), outliers_picked=int((~usable).sum()),
                 picked_source_accuracy=float((p[picked].argmax(1)[usable] == labels[usable]).float().mean() * 100)
                 if usable.any() else float("nan"))
    return ProULearnObjective(picked[usable], labels[usable], h, seed=seed)


def run_seed(shift: DomainShift, methods: list[str], cfg: RunConfig, seed: int, keep_models: tuple[str, ...] = (),
             progress=None) -> dict:
    """All ``methods`` on ``shift`` for one seed: ``{"rows": {method: {...}}, "models": {...}}``."""
    sources: dict[str, tuple[AdaptNet, dict]] = {}
    rows, models, cache = {}, {}, {}
    for method in methods:
        kind = METHODS[method][0]
        if kind not in sources:
            sources[kind] = _source_model(kind, shift, cfg, seed)
        net = copy.deepcopy(sources[kind][0])
        net.freeze_head()
        extra: dict = {}
        start = time.time()
        objective = _objective(method, net, shift, cfg, seed, extra, cache)
        history = adapt(net, shift.target_x, objective, AdaptConfig(**{**cfg.adapt.__dict__, "seed": seed}),
                        y_eval=shift.target_y)
        f, _ = predict(net, shift.target_x)
        rows[method] = {"accuracy": evaluate(net, shift.target_x, shift.target_y),
                        "source_accuracy": history["accuracy"][0], "curve": history["accuracy"],
                        "separation": prototype_separation(f, shift.target_y, shift.num_classes),
                        "seconds": time.time() - start, "source_seconds": sources[kind][1]["seconds"], **extra}
        if getattr(objective, "name", "") == "proulearn":
            rows[method]["pseudo_label_accuracy"] = _pseudo_accuracy(objective, shift)
        if method in keep_models:
            models[method] = net
        if progress is not None:
            progress.update(1)
    for kind, (net, _) in sources.items():
        if f"source:{kind}" in keep_models:
            models[f"source:{kind}"] = net
    return {"rows": rows, "models": models}


def _pseudo_accuracy(objective, shift: DomainShift) -> float:
    keep = shift.target_y >= 0
    return float((objective.pseudo[keep] == shift.target_y[keep]).float().mean() * 100)


def summarise(per_seed: list[dict]) -> dict:
    """Mean and sample standard deviation over seeds of each method's numbers."""
    out = {}
    for method in per_seed[0]["rows"]:
        rows = [s["rows"][method] for s in per_seed]

        def stat(values):
            values = [v for v in values if v is not None and not math.isnan(v)]
            if not values:
                return None
            return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}

        out[method] = {
            "accuracy": stat([r["accuracy"] for r in rows]),
            "source_accuracy": stat([r["source_accuracy"] for r in rows]),
            "inter_cosine": stat([r["separation"]["inter_cosine"] for r in rows]),
            "separation_ratio": _defined_stat([r["separation"]["ratio"] for r in rows], stat),
            "outliers_picked": stat([r.get("outliers_picked") for r in rows]) if "outliers_picked" in rows[0] else None,
            "pseudo_label_accuracy": stat([r.get("pseudo_label_accuracy") for r in rows])
            if "pseudo_label_accuracy" in rows[0] else None,
            "seconds": stat([r["seconds"] for r in rows]),
        }
    return out


def _defined_stat(values: list, stat):
    """``stat`` of ``values``, or ``None`` (undefined) when any seed's value is undefined."""
    return None if any(v is None or math.isnan(v) for v in values) else stat(values)


def markdown_table(summary: dict, title: str) -> str:
    def fmt(s, digits=1, missing="–"):
        return missing if s is None else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"

    lines = [f"**{title}**", "",
             "| method | target acc. (%) | prototype inter-class cosine ↓ | separation ratio ↑ | outliers labelled | s / run |",
             "|---|---|---|---|---|---|"]
    for method, s in summary.items():
        ratio = fmt(s['separation_ratio'], 2, 'n/a')
        lines.append(f"| {method} | {fmt(s['accuracy'])} | {fmt(s['inter_cosine'], 3)} | {ratio} | "
                     f"{fmt(s['outliers_picked'])} | {fmt(s['seconds'], 0)} |")
    return "\n".join(lines)
