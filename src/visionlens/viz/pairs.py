"""A self-contained HTML page of query/match pairs (images referenced by relative path)."""

from __future__ import annotations

import html
from pathlib import Path

from .overlay import save_atomic
from .report import _STYLE


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
            img = lambda p, alt: f"<td><img src='{esc(p)}' alt='{esc(alt)}'></td>"  # noqa: E731
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
