"""The explain/demo page: per image the input and one overlay per method, wrapping to the window,
with the colour bars of the section and the true label where it is known (images referenced by
relative path)."""

from __future__ import annotations

from pathlib import Path

from .colormaps import DEFAULT_CMAP
from .render import colorbar, href, write_page

__all__ = ["write_report", "section_colorbars", "href"]


def section_colorbars(methods: list[str], signed: list[str], cmap: str | None) -> list[dict]:
    """One colour bar for the normalised maps and one for the signed maps, where a section has them."""
    bars = []
    if any(m not in signed for m in methods):
        bars.append(colorbar(cmap, False, "normalised maps (per image)"))
    if any(m in signed for m in methods):
        bars.append(colorbar(cmap, True, "signed maps: " + ", ".join(m for m in methods if m in signed)))
    return bars


def _section_context(sec: dict) -> dict:
    base = sec.get("base", "")
    signed = list(sec.get("signed", []))
    rows = [{**row, "name": Path(row["file"]).name, "flows": row.get("flows") or {},
             "label": row.get("label"), "wrong": bool(row.get("wrong"))} for row in sec["rows"]]
    return {"title": sec["title"], "methods": list(sec["methods"]), "rows": rows, "failures": sec.get("failures", []),
            "prefix": f"{base}/" if base else "", "signed": signed,
            "colorbars": section_colorbars(list(sec["methods"]), signed, sec.get("cmap") or DEFAULT_CMAP)}


def write_report(dest: Path, title: str, sections: list[dict]) -> Path | None:
    """Write ``dest`` (index.html); None (not written) without Jinja2.

    Each section: ``{"title", "methods", "rows", "failures", "base"}`` and optionally ``"signed"``
    (the methods whose maps are signed) and ``"cmap"``; a row: ``{"file", "view", "overlays":
    {method: path}, "predicted", "probability", "target"}`` and optionally ``"flows": {method: strip
    path}``, ``"label"`` (the true label, shown) and ``"wrong"`` (marks the row), with paths relative
    to ``base`` (a folder relative to the page)."""
    return write_page(Path(dest), "explain.html.j2", title=title, sections=[_section_context(s) for s in sections])
