"""The concept sheet of a class (concepts x prototypes, PNG) and its HTML section."""

from __future__ import annotations

import html
from pathlib import Path

from PIL import Image, ImageDraw

from ..io import save_atomic
from .bessel import bessel_view, ice_view

VIEWS = {"bessel": bessel_view, "ice": ice_view}


def concept_sheet(concepts, view: str = "bessel", tile: int = 96, max_concepts: int = 20,
                  n_prototypes: int = 5, threshold: float = 0.5) -> Image.Image:
    """Rows: concepts in FeatureRank order (id, weight, best-part IoU when known); columns: the
    top prototypes, each rendered with the ``view`` (``bessel`` or ``ice``)."""
    render = VIEWS[view]
    label_w, head_h = 120, 22
    rows = concepts.ranking[:max_concepts]
    cols = min(n_prototypes, len(concepts.items))
    sheet = Image.new("RGB", (label_w + cols * (tile + 4), head_h + len(rows) * (tile + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    s = concepts.scores
    draw.text((4, 4), f"{concepts.class_name} @ {concepts.layer} ({view}): Faith {s['faith']:.1f}  "
              f"Fidelity {s['fidelity']:.1f}  Coherence {s['coherence']:.1f}", fill=(0, 0, 0))
    ious = concepts.extras.get("part_iou", {})
    for r, k in enumerate(rows):
        y = head_h + r * (tile + 4)
        text = f"concept {k}\nweight {float(concepts.weights[k]):.3g}"
        if ious:
            text += f"\npart IoU {ious['iou'][k]:.2f}"
        draw.multiline_text((4, y + 4), text, fill=(0, 0, 0))
        for c, idx in enumerate(concepts.prototypes[k][:cols]):
            view_img = concepts.views[idx]
            panel = render(view_img, concepts.heatmaps[idx, k].numpy(), threshold=threshold)
            sheet.paste(panel.resize((tile, tile), Image.BILINEAR), (label_w + c * (tile + 4), y))
    return sheet


def fixed(value: float, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals, never ``-0.00`` (a score that rounds to zero shows as 0)."""
    return f"{round(value, digits) + 0.0:.{digits}f}"


def save_sheet(sheet: Image.Image, dest: Path) -> Path:
    dest = Path(dest)
    save_atomic(lambda tmp: sheet.save(tmp, format="PNG", optimize=True), dest)
    return dest


def concepts_section_html(title: str, classes: list[dict]) -> str:
    """An HTML section: per class its scores and sheet images (paths relative to the page).
    ``classes``: ``{"name", "scores": {fidelity, coherence, faith}, "sheets": {view: path}}``."""
    parts = [f"<h2>{html.escape(title)}</h2><table><tr><th>class</th><th>Fidelity %</th><th>Coherence %</th>"
             "<th>Faith %</th><th>concept sheets</th></tr>"]
    for c in classes:
        s = c["scores"]
        imgs = "".join(f"<div><b>{html.escape(v)}</b><br><img class='sheet' src='{html.escape(p)}' alt='{html.escape(v)}'></div>"
                       for v, p in c["sheets"].items())
        parts.append(f"<tr><td>{html.escape(c['name'])}</td><td>{fixed(s['fidelity'])}</td>"
                     f"<td>{fixed(s['coherence'])}</td><td>{fixed(s['faith'])}</td><td>{imgs}</td></tr>")
    parts.append("</table>")
    return "".join(parts)


def write_concepts_page(dest: Path, title: str, sections: list[str]) -> Path:
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>" + html.escape(title) + "</title><style>"
            "body{font-family:system-ui,sans-serif;margin:1.5em;color:#222} table{border-collapse:collapse}"
            "td,th{padding:4px 8px;border-bottom:1px solid #ddd;vertical-align:top} img.sheet{max-width:640px}"
            "</style></head><body><h1>" + html.escape(title) + "</h1>" + "".join(sections) + "</body></html>\n")
    dest = Path(dest)
    save_atomic(lambda tmp: Path(tmp).write_text(page, encoding="utf-8"), dest)
    return dest
