"""Render the HTML pages from the Jinja2 templates in ``templates/`` (autoescape on) with the one
stylesheet ``templates/style.css`` inlined, so that each page stands alone.

Jinja2 comes with the ``cli`` extra and is imported only here, when a page is written. Without it
the page is skipped and one line on stderr says how to install it; every other output is written."""

from __future__ import annotations

import html
import sys
from pathlib import Path
from urllib.parse import quote

from ..io import save_atomic
from .colormaps import bar_labels, css_gradient

TEMPLATES = Path(__file__).with_name("templates")
INSTALL_HINT = "pip install 'visionlens[cli]'"
_state = {"warned": False}


def href(path: str) -> str:
    """A relative file path as an attribute value: percent-encoded (``#``, ``?``, spaces) and
    HTML-escaped, so that every file name links to itself."""
    return html.escape(quote(path, safe="/"))


def _url(path: str) -> str:
    """Percent-encoded relative path (the template escapes it for HTML)."""
    return quote(str(path), safe="/")


def colorbar(cmap: str | None, signed: bool, title: str) -> dict:
    """What a page's colour bar shows: the gradient, its end labels and a title."""
    return {"gradient": css_gradient(cmap, signed), "labels": bar_labels(signed), "title": title}


def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["url"] = _url
    return env


def _warn_missing() -> None:
    if not _state["warned"]:
        print(f"note: HTML pages not written (they need Jinja2): {INSTALL_HINT}", file=sys.stderr)
        _state["warned"] = True


def render(template: str, **context) -> str | None:
    """The text of ``template`` with ``context`` and the stylesheet; None when Jinja2 is missing."""
    try:
        env = _environment()
    except ImportError:
        _warn_missing()
        return None
    css = (TEMPLATES / "style.css").read_text(encoding="utf-8")
    return env.get_template(template).render(css=css, **context)


def write_page(dest: Path, template: str, **context) -> Path | None:
    """Render ``template`` to ``dest`` (written atomically); None (nothing written) without Jinja2."""
    text = render(template, **context)
    if text is None:
        return None
    dest = Path(dest)
    # a file name that is not UTF-8 (its bytes held as surrogates) is shown escaped, as ``\udce9``
    save_atomic(lambda tmp: Path(tmp).write_text(text, encoding="utf-8", errors="backslashreplace"), dest)
    return dest
