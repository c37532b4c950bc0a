"""Self-contained HTML pages of query/match pairs (images referenced by relative path), and the
files of a pair explained with a per-layer flow (NAFlow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .colormaps import check_cmap
from .flow import flow_strip, save_flow_gif
from .overlay import overlay
from .labels import signed_method
from .render import colorbar, write_page
from .report import section_colorbars
from ..io import dumps, save_atomic


def write_pair_report(dest: Path, title: str, sections: list[dict], cmap: str | None = None) -> Path | None:
    """Write ``dest`` (None, not written, without Jinja2). Each section: ``{"query", "methods",
    "rows", "failures"}``; a row: ``{"file", "rank", "score", "query_view", "match_view",
    "query_overlays": {method: path}, "match_overlays": {method: path}}``, paths relative to the
    page. Each pair is a card whose pictures wrap to the window's width; methods with signed maps
    (Relevance-CAM) get their own colour bar."""
    methods = list(dict.fromkeys(m for sec in sections for m in sec["methods"]))
    signed = [m for m in methods if signed_method(m)]
    shown = [{**sec, "query_name": Path(sec["query"]).name, "signed": signed,
              "rows": [{**row, "name": Path(row["file"]).name, "rank": row.get("rank")} for row in sec["rows"]],
              "failures": sec.get("failures", [])} for sec in sections]
    return write_page(Path(dest), "pairs.html.j2", title=title, sections=shown,
                      bars=section_colorbars(methods, signed, cmap))


def write_pair_flows(out_dir: Path, views: tuple[Image.Image, Image.Image], flows: tuple[np.ndarray, np.ndarray],
                     labels: list[str], summary: dict, method: str = "naflow", cmap: str | None = None) -> dict:
    """Write a pair explained layer by layer: both views, for each image a flow strip (one overlay
    per layer, shallowest first, labelled with ``labels``), a GIF and the last-layer overlay,
    ``pair.npz`` (both flows ``(L, H, W)``), ``summary.json`` (``summary`` plus the file names) and
    ``index.html`` (without Jinja2: not written). ``flows``: the query's and the match's. Returns the file names."""
    cmap = check_cmap(cmap) if cmap is not None else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict = {"maps": "pair.npz"}
    short = [name if len(name) <= 20 else ".." + name[-18:] for name in labels]  # fits a 128-pixel panel
    for role, view, flow in zip(("query", "match"), views, flows):
        names = {"view": f"pair.{role}.png", "overlay": f"pair.{role}.{method}.png",
                 "flow": f"pair.{role}.{method}.flow.png", "gif": f"pair.{role}.{method}.gif"}
        save_atomic(lambda t, v=view: v.save(t, format="PNG"), out / names["view"])
        last = overlay(view, flow[-1], cmap=cmap)
        strip = flow_strip(view, flow, labels=short, cmap=cmap)
        save_atomic(lambda t, im=last: im.save(t, format="PNG"), out / names["overlay"])
        save_atomic(lambda t, im=strip: im.save(t, format="PNG"), out / names["flow"])
        save_flow_gif(view, flow, out / names["gif"], cmap=cmap)
        files[role] = names

    def write_npz(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{f"{method}_query_flow": flows[0], f"{method}_match_flow": flows[1],
                                      "layers": np.array(labels)})

    save_atomic(write_npz, out / files["maps"])
    summary = {**summary, "layers": list(labels), "files": files}
    save_atomic(lambda t: Path(t).write_text(dumps(summary), encoding="utf-8"), out / "summary.json")
    roles = [{"role": role, "files": files[role],
              "name": Path(str(summary.get("query" if role == "query" else "reference", role))).name}
             for role in ("query", "match")]
    title = (f"{method}: {summary.get('model', '')}, {summary.get('metric', '')} similarity "
             f"{summary.get('similarity', float('nan')):.4f}")
    write_page(out / "index.html", "pair_flow.html.j2", title=title, method=method, roles=roles,
               bars=[colorbar(cmap, False, "normalised maps (per layer)")])
    return files
