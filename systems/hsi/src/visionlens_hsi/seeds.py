"""Several seeds of one model on one scene, summarised as the paper's table (OA, Kappa, NP, FLOPs, time)."""

from __future__ import annotations

import argparse

import numpy as np

TABLE_COLUMNS = (("oa", "OA"), ("kappa", "Kappa"), ("aa", "AA"), ("train_wall_s", "train s"),
                 ("test_wall_s", "test s"), ("train_cpu_s", "train CPU s"), ("test_cpu_s", "test CPU s"))


def parse_seeds(text: str) -> list[int]:
    """An ``argparse`` type: comma-separated distinct seeds, e.g. ``0,1,2,3,4``."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated whole numbers such as 0,1,2,3,4, got {text!r}") from None
    if not seeds or min(seeds) < 0 or max(seeds) > 2 ** 32 - 1:
        raise argparse.ArgumentTypeError(f"must list seeds from 0 to 2**32-1, got {text!r}")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"lists a seed twice: {text!r}")
    return seeds


def mean_sd(values) -> dict:
    """Mean and sample standard deviation (0 for one value)."""
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0}


def summarise(model: str, runs: dict[int, dict]) -> dict:
    """Per-seed results -> ``{"model", "seeds", "params", "flops", "base_macs", <column>: {"mean", "sd"}}``."""
    first = next(iter(runs.values()))
    summary = {"model": model, "seeds": list(runs), "params": first["params"], "flops": first["flops"],
               "base_macs": first["base_macs"]}
    for key, _ in TABLE_COLUMNS:
        summary[key] = mean_sd([run[key] for run in runs.values()])
    return summary


def table_markdown(summary: dict, dataset: str) -> str:
    """The summary as one Markdown table row under its header (OA and Kappa in the paper's % / plain form)."""
    def cell(key, scale=1.0, digits=4):
        v = summary[key]
        return f"{v['mean'] * scale:.{digits}f} ± {v['sd'] * scale:.{digits}f}"

    header = ("| model | data | seeds | OA (%) | Kappa | AA (%) | NP | FLOPs/px (base MACs) | FLOPs/px (all ops) "
              "| train s | test s |\n|" + "---|" * 11)
    row = (f"| {summary['model']} | {dataset} | {','.join(map(str, summary['seeds']))} | {cell('oa', 100, 2)} "
           f"| {cell('kappa')} | {cell('aa', 100, 2)} | {summary['params']:,} | {summary['base_macs']:,} "
           f"| {summary['flops']:,} | {cell('train_wall_s', 1, 1)} | {cell('test_wall_s', 1, 2)} |")
    return f"{header}\n{row}\n\nmean ± sample sd over seeds; times are wall seconds on this machine.\n"
