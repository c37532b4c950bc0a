"""The evaluation report card as one HTML page: method x metric tables per model (mean ± 95 %
CI, n, direction), skipped methods with the reason, example overlays and the manifest."""

from __future__ import annotations

import html
import math

from ..io import dumps


def _cell(r: dict) -> str:
    """mean ± CI (n); the CI is left out where it is undefined (n = 1: NaN, or null once read back)."""
    ci = r["ci95"]
    spread = f" ± {ci:.3f}" if ci is not None and math.isfinite(ci) else ""
    return f"<td>{r['mean']:.3f}{spread} (n={r['n']})</td>"


def report_card_html(report: dict, manifest: dict, example_files: list[str]) -> str:
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>visionlens report card</title><style>",
             "body{font-family:system-ui,sans-serif;margin:1.5em}td,th{padding:3px 8px;border-bottom:1px solid #ddd}"
             "img{width:128px;height:128px}.skip{color:#a00}</style></head><body><h1>visionlens report card</h1>"]
    models = list(dict.fromkeys(r["model"] for r in report["rows"])) + [s["model"] for s in report["skipped"]]
    for model in dict.fromkeys(models):
        rows = [r for r in report["rows"] if r["model"] == model]
        metrics = list(dict.fromkeys(r["metric"] for r in rows))
        methods = list(dict.fromkeys(r["method"] for r in rows))
        cell = {(r["method"], r["metric"]): r for r in rows}
        parts.append(f"<h2>{e(model)}</h2><table><tr><th>method</th>")
        direction = {r["metric"]: r["direction"] for r in rows}  # the first method may lack a metric
        parts += [f"<th>{e(m)} ({direction[m]} is better)</th>" for m in metrics]
        parts.append("<th>examples</th></tr>")
        for me in methods:
            parts.append(f"<tr><td>{e(me)}</td>")
            for m in metrics:
                r = cell.get((me, m))
                parts.append("<td></td>" if r is None else _cell(r))
            prefix = f"{model}.{me}.".replace("/", "_").replace("@", "_at_")
            imgs = [f for f in example_files if f.startswith(prefix)]
            parts.append("<td>" + "".join(f"<img src='examples/{e(f)}' alt='{e(f)}'>" for f in imgs) + "</td></tr>")
        parts.append("</table>")
        for s in report["skipped"]:
            if s["model"] == model:
                parts.append(f"<p class='skip'>skipped {e(s['method'])}: {e(s['reason'])}</p>")
    parts.append(f"<h2>manifest</h2><pre>{e(dumps(manifest, indent=1))}</pre></body></html>\n")
    return "".join(parts)
