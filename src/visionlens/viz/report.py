"""A self-contained HTML page of overlays (images referenced by relative path)."""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import quote

from ..io import save_atomic

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; } td, th { padding: 4px 8px; border-bottom: 1px solid #ddd; vertical-align: top; }
th { text-align: left; } img { width: 160px; height: 160px; display: block; }
.meta { font-size: 0.85em; max-width: 220px; } .fail { color: #a00; }
img.strip { width: auto; height: 150px; display: inline-block; margin-right: 8px; }
"""


def href(path: str) -> str:
    """A relative file path as an attribute value: percent-encoded (``#``, ``?``, spaces) and
    HTML-escaped, so that every file name links to itself."""
    return html.escape(quote(path, safe="/"))


def write_report(dest: Path, title: str, sections: list[dict]) -> Path:
    """Write ``dest`` (index.html). Each section: ``{"title", "methods", "rows", "failures", "base"}``,
    a row: ``{"file", "view", "overlays": {method: path}, "predicted", "probability", "target"}`` and
    optionally ``"flows": {method: strip path}`` (shown under the row)
    with paths relative to ``base`` (a folder relative to the page)."""
    dest = Path(dest)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    for sec in sections:
        base = sec.get("base", "")
        prefix = f"{base}/" if base else ""
        parts.append(f"<h2>{html.escape(sec['title'])}</h2><table><tr><th>image</th><th>original</th>")
        parts += [f"<th>{html.escape(m)}</th>" for m in sec["methods"]]
        parts.append("</tr>")
        for row in sec["rows"]:
            meta = (f"<b>{html.escape(Path(row['file']).name)}</b><br>predicted: {html.escape(row['predicted'])}"
                    f"<br>probability: {row['probability']:.3f}<br>explained: {html.escape(row['target'])}")
            parts.append(f"<tr><td class='meta'>{meta}</td><td><img src='{href(prefix + row['view'])}' alt='input'></td>")
            parts += [f"<td><img src='{href(prefix + row['overlays'][m])}' alt='{html.escape(m)}'></td>" for m in sec["methods"]]
            parts.append("</tr>")
            for m, strip in (row.get("flows") or {}).items():  # attention flows: one panel per block
                parts.append(f"<tr><td class='meta'>{html.escape(m)} flow, first to last block</td>"
                             f"<td colspan='{len(sec['methods']) + 1}'><img class='strip' src='{href(prefix + strip)}' "
                             f"alt='{html.escape(m)} flow'></td></tr>")
        parts.append("</table>")
        if sec.get("failures"):
            parts.append("<p class='fail'>Failed:</p><ul class='fail'>")
            parts += [f"<li>{html.escape(f['error'])}</li>" for f in sec["failures"]]
            parts.append("</ul>")
    parts.append("</body></html>\n")
    text = "".join(parts)
    save_atomic(lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), dest)
    return dest
