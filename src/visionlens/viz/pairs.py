"""Self-contained HTML pages of query/match pairs (images referenced by relative path), and the
files of a pair explained with a per-layer flow (NAFlow)."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
from PIL import Image

from .flow import flow_strip, save_flow_gif
from .overlay import overlay
from ..io import dumps, save_atomic
from .report import _STYLE, href


def write_pair_report(dest: Path, title: str, sections: list[dict]) -> Path:
    """Write ``dest``. Each section: ``{"query", "methods", "rows", "failures"}``; a row: ``{"file",
    "rank", "score", "query_view", "match_view", "query_overlays": {method: path},
    "match_overlays": {method: path}}``, paths relative to the page."""
    dest = Path(dest)
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{esc(title)}</h1>"]
    for sec in sections:
        parts.append(f"<h2>query: {esc(Path(sec['query']).name)}</h2><table><tr><th>match</th><th>query</th>")
        parts += [f"<th>query · {esc(m)}</th>" for m in sec["methods"]]
        parts.append("<th>match</th>")
        parts += [f"<th>match · {esc(m)}</th>" for m in sec["methods"]]
        parts.append("</tr>")
        for row in sec["rows"]:
            rank = "" if row.get("rank") is None else f"rank {row['rank']}<br>"
            meta = f"{rank}<b>{esc(Path(row['file']).name)}</b><br>similarity: {row['score']:.4f}"
            img = lambda p, alt: f"<td><img src='{href(p)}' alt='{esc(alt)}'></td>"  # noqa: E731
            parts.append(f"<tr><td class='meta'>{meta}</td>{img(row['query_view'], 'query')}")
            parts += [img(row["query_overlays"][m], m) for m in sec["methods"]]
            parts.append(img(row["match_view"], "match"))
            parts += [img(row["match_overlays"][m], m) for m in sec["methods"]]
            parts.append("</tr>")
        parts.append("</table>")
        if sec.get("failures"):
            parts.append("<p class='fail'>Skipped gallery images:</p><ul class='fail'>")
            parts += [f"<li>{esc(f['error'])}</li>" for f in sec["failures"]]
            parts.append("</ul>")
    parts.append("</body></html>\n")
    text = "".join(parts)
    save_atomic(lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), dest)
    return dest


def write_pair_flows(out_dir: Path, views: tuple[Image.Image, Image.Image], flows: tuple[np.ndarray, np.ndarray],
                     labels: list[str], summary: dict, method: str = "naflow") -> dict:
    """Write a pair explained layer by layer: both views, for each image a flow strip (one overlay
    per layer, shallowest first, labelled with ``labels``), a GIF and the last-layer overlay,
    ``pair.npz`` (both flows ``(L, H, W)``), ``summary.json`` (``summary`` plus the file names) and
    ``index.html``. ``flows``: the query's and the match's. Returns the file names."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict = {"maps": "pair.npz"}
    short = [name if len(name) <= 20 else ".." + name[-18:] for name in labels]  # fits a 128-pixel panel
    for role, view, flow in zip(("query", "match"), views, flows):
        names = {"view": f"pair.{role}.png", "overlay": f"pair.{role}.{method}.png",
                 "flow": f"pair.{role}.{method}.flow.png", "gif": f"pair.{role}.{method}.gif"}
        save_atomic(lambda t, v=view: v.save(t, format="PNG"), out / names["view"])
        save_atomic(lambda t, v=view, f=flow: overlay(v, f[-1]).save(t, format="PNG"), out / names["overlay"])
        save_atomic(lambda t, v=view, f=flow: flow_strip(v, f, labels=short).save(t, format="PNG"), out / names["flow"])
        save_flow_gif(view, flow, out / names["gif"])
        files[role] = names

    def write_npz(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{f"{method}_query_flow": flows[0], f"{method}_match_flow": flows[1],
                                      "layers": np.array(labels)})

    save_atomic(write_npz, out / files["maps"])
    summary = {**summary, "layers": list(labels), "files": files}
    save_atomic(lambda t: Path(t).write_text(dumps(summary), encoding="utf-8"), out / "summary.json")
    esc = html.escape
    rows = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(method)} pair</title>",
            f"<style>{_STYLE}</style></head><body><h1>{esc(method)}: {esc(str(summary.get('model', '')))}, "
            f"{esc(str(summary.get('metric', '')))} similarity {summary.get('similarity', float('nan')):.4f}</h1><table>"]
    for role in ("query", "match"):
        name = Path(str(summary.get("query" if role == "query" else "reference", role))).name
        f = files[role]
        rows.append(f"<tr><td class='meta'><b>{esc(role)}</b><br>{esc(name)}</td><td><img src='{href(f['view'])}' alt='{role}'>"
                    f"</td><td><img src='{href(f['overlay'])}' alt='{esc(method)} last layer'></td>"
                    f"<td><img src='{href(f['gif'])}' alt='{esc(method)} flow, animated'></td></tr>"
                    f"<tr><td class='meta'>{esc(method)} flow, first to last layer</td><td colspan='3'>"
                    f"<img class='strip' src='{href(f['flow'])}' alt='{esc(method)} flow'></td></tr>")
    rows.append("</table></body></html>\n")
    text = "".join(rows)
    save_atomic(lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), out / "index.html")
    return files
