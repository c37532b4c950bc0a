"""What the explorer refuses: files outside its folders, oversized uploads, decompression bombs."""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..data.images import IMAGE_SUFFIXES, load_image
from ..errors import ImageLoadError, InputError, VisionlensError

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000


class TooLarge(InputError):
    """An upload over the byte or pixel limit (HTTP 413)."""


class NotServed(InputError):
    """A path outside the folders the explorer serves, or no such file there (HTTP 404)."""


class ShuttingDown(VisionlensError):
    """A request that would start work while the explorer is stopping (HTTP 503)."""


def inside(root: Path, name: str) -> Path:
    """``root / name`` resolved, if it stays inside ``root`` (symbolic links followed) and is a file."""
    if not name or "\x00" in name or Path(name).is_absolute():
        raise NotServed(f"not served: {name!r} (give a path relative to the served folder)")
    base = root.resolve()
    path = (base / name).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        raise NotServed(f"not served: {name!r} is not a file inside the served folder")
    return path


def image_names(root: Path, limit: int = 2000) -> list[str]:
    """The image files under ``root`` (relative POSIX paths, sorted; at most ``limit``)."""
    base = root.resolve()
    found = sorted(p.relative_to(base).as_posix() for p in base.rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and p.resolve().is_relative_to(base))
    return found[:limit]


def check_pixels(data: bytes, max_pixels: int) -> None:
    """Read only the header: refuse an image with more than ``max_pixels`` pixels before decoding it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the pixel limit below decides
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except Image.DecompressionBombError:
        raise TooLarge("image is too large to decode safely (decompression-bomb limit)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageLoadError("upload: not a readable image (unknown format or corrupt header)") from None
    if width * height > max_pixels:
        raise TooLarge(f"upload: image has {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}")


def load_upload(data: bytes, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """An uploaded image as RGB, after the size and pixel checks (decoded with the library's
    :func:`~visionlens.data.images.load_image`, which also refuses PIL's decompression bombs)."""
    if len(data) > max_bytes:
        raise TooLarge(f"upload: {len(data):,} bytes is over the limit of {max_bytes:,} bytes")
    check_pixels(data, max_pixels)
    handle, tmp = tempfile.mkstemp(prefix="visionlens-serve-", suffix=".upload")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        image = load_image(tmp)
    except ImageLoadError as err:
        raise ImageLoadError(str(err).replace(tmp, "upload")) from None
    finally:
        os.unlink(tmp)
    return image
