"""Pictures for the page: PNG bytes, data URLs, and maps coloured with their colour bar's description."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from ..viz.colormaps import bar_labels, colorize, css_gradient


def png_bytes(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(picture: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(picture)).decode("ascii")


def heat_url(heat: np.ndarray, cmap: str, signed: bool = False) -> str:
    """A map coloured with ``cmap`` (diverging around 0 when ``signed``) as a data URL."""
    return data_url(Image.fromarray(colorize(heat, cmap, signed)))


def colour_bar(cmap: str, signed: bool = False) -> dict:
    """The page's colour bar: a CSS gradient and its end labels."""
    return {"gradient": css_gradient(cmap, signed), "labels": list(bar_labels(signed))}
