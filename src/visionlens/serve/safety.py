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
MAX_LISTED = 2000  # images the page lists of --images (the first, sorted)
WORKING_SIDE = 1024  # an upload is kept at most this many pixels wide and high (the models see 224-518)


class TooLarge(InputError):
    """An upload over the byte or pixel limit (HTTP 413)."""


class NotServed(InputError):
    """A path outside the folders the explorer serves, or no such file there (HTTP 404)."""


class ShuttingDown(VisionlensError):
    """A request that would start work while the explorer is stopping (HTTP 503)."""


class Busy(ShuttingDown):
    """A request that waited too long for its device (HTTP 503)."""


class TooMany(VisionlensError):
    """A job over the cap of queued and running jobs (HTTP 429)."""


class Refused(VisionlensError):
    """A request from a foreign host or origin (HTTP 403)."""


def size_text(n: int) -> str:
    """``20 MiB``, ``1.5 MiB`` or ``512 KiB``: a byte limit as the page and the flags state it."""
    mib = n / (1024 * 1024)
    if mib >= 1:
        return f"{mib:g} MiB" if mib == int(mib) else f"{mib:.1f} MiB"
    return f"{n / 1024:.0f} KiB"


def too_large(max_bytes: int) -> TooLarge:
    return TooLarge(f"upload: the file is over the limit; uploads are limited to {size_text(max_bytes)} (--max-upload-mb)")


def inside(root: Path, name: str) -> Path:
    """``root / name`` resolved, if it stays inside ``root`` (symbolic links followed) and is a file."""
    if not name or "\x00" in name or Path(name).is_absolute():
        raise NotServed(f"not served: {name!r} (give a path relative to the served folder)")
    base = root.resolve()
    path = (base / name).resolve()
    if not path.is_relative_to(base) or not path.is_file():
        raise NotServed(f"not served: {name!r} is not a file inside the served folder")
    return path


def image_names(root: Path, limit: int | None = MAX_LISTED) -> list[str]:
    """The image files under ``root`` (relative POSIX paths, sorted; at most ``limit``, None: all)."""
    base = root.resolve()
    found = sorted(p.relative_to(base).as_posix() for p in base.rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and p.resolve().is_relative_to(base))
    return found if limit is None else found[:limit]


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
        raise too_large(max_bytes)
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


def working_copy(image: Image.Image, side: int = WORKING_SIDE) -> Image.Image:
    """``image`` scaled down (aspect kept) to at most ``side`` pixels wide and high: all that the
    models' views (a few hundred pixels) need, kept in memory instead of the full-size decode."""
    if max(image.size) > side:
        image.thumbnail((side, side), Image.Resampling.LANCZOS)  # in place: the full-size decode is let go
    return image
