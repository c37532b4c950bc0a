"""Read image files into RGB, with one-line errors that name the file.

Grayscale, RGBA/LA (composited on white), palette, CMYK, 16-bit and 32-bit integer or float
images are converted to 8-bit RGB; multi-frame files give their first frame; EXIF rotation is
applied.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageLoadError, InputError, display
from ..outputs import STAGE_PREFIX, own_files

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                  *({".avif"} & set(Image.registered_extensions()))}  # AVIF where this Pillow decodes it


def _to_rgb_uint8(img: Image.Image, where: str) -> Image.Image:
    mode = img.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ImageLoadError(f"{where}: image contains NaN or infinite pixel values; fix or drop the file")
        if mode.startswith("I;16"):
            scale = 65535.0
        elif mode == "F" and arr.max(initial=0.0) <= 1.0:
            scale = 1.0
        elif mode == "F" and arr.max(initial=0.0) <= 255.0:  # a float image in 8-bit units
            scale = 255.0
        else:
            scale = 65535.0 if arr.max(initial=0.0) <= 65535 else float(arr.max())
        arr = np.clip(arr / scale, 0.0, 1.0)
        gray = Image.fromarray(np.round(arr * 255).astype(np.uint8), mode="L")
        return gray.convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def as_rgb(img: Image.Image, where: str = "image") -> Image.Image:
    """An opened ``PIL.Image`` as the file loader would give it: EXIF rotation applied, then
    8-bit RGB (see the module docstring); ``where`` names it in errors."""
    return _to_rgb_uint8(ImageOps.exif_transpose(img), where)


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open ``path`` as an 8-bit RGB ``PIL.Image``; raise :class:`ImageLoadError` on any problem."""
    p = Path(path)
    where = display(path)
    if not p.exists():
        raise ImageLoadError(f"{where}: no such file")
    if p.is_dir():
        raise ImageLoadError(f"{where}: is a directory, not an image file")
    if not p.is_file():  # a device, FIFO or socket: reading it could block or never end
        raise ImageLoadError(f"{where}: not a regular file; give an image file")
    if p.stat().st_size == 0:
        raise ImageLoadError(f"{where}: file is empty (0 bytes); not an image")
    try:
        with warnings.catch_warnings():  # up to twice Pillow's limit (179 MP: a 108 MP phone photo) decodes
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                img.seek(0)
                img.load()
                rgb = as_rgb(img, where)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(f"{where}: not a readable image (unknown format or corrupt header)") from None
    except Image.DecompressionBombError:
        limit = f" of {2 * Image.MAX_IMAGE_PIXELS:,} pixels" if Image.MAX_IMAGE_PIXELS else ""
        raise ImageLoadError(f"{where}: image is too large to decode safely (over Pillow's decompression-bomb "
                             f"limit{limit}); resize it first") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ImageLoadError(f"{where}: image data is truncated or corrupt ({reason})") from None
    if rgb.width < 1 or rgb.height < 1:
        raise ImageLoadError(f"{where}: image has no pixels")
    return rgb


def require_readable(paths) -> None:
    """An :class:`InputError` when none of ``paths`` is a readable image (decoded one at a time up
    to the first that is): a run that could explain nothing is refused before any work, where a run
    with some unreadable images skips them."""
    paths = list(paths)
    first = None
    for path in paths:
        try:
            load_image(path)
            return
        except ImageLoadError as err:
            first = first or str(err)
    if first is not None:
        raise InputError(first if len(paths) == 1 else f"none of the {len(paths)} images can be read; the first: {first}")


def _check_file(path: Path) -> None:
    """An :class:`InputError` for a named input that is missing or not a regular file."""
    if not path.exists():
        raise InputError(f"{display(path)}: no such file or folder")
    if not path.is_file():  # a device, FIFO or socket: reading it could block or never end
        raise InputError(f"{display(path)}: not a regular file; give an image file or a folder")


def written_by_visionlens(files: list[Path]) -> set[str]:
    """The real paths of those of ``files`` that a visionlens run wrote: listed in the
    ``summary.json`` of their folder, or inside the hidden folder of a run in progress."""
    written: set[str] = set()
    for folder in {f.parent for f in files}:
        if (folder / "summary.json").is_file():
            written |= {os.path.realpath(folder / name) for name in own_files(folder)}
    return written | {os.path.realpath(f) for f in files if any(part.startswith(STAGE_PREFIX) for part in f.parts)}


def _folder_images(folder: Path, recursive: bool) -> list[Path]:
    """The image files (by suffix) in ``folder``, sorted; hidden files and folders (a leading dot:
    ``.thumbnails``, macOS's ``._IMG_1.jpg`` copies, a run's partial outputs) are left out. With
    ``recursive`` also those of its sub-folders, a linked sub-folder followed once."""
    found, seen = [], set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive and real not in seen else []
        if real in seen:
            continue
        seen.add(real)
        found += [Path(root) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(p for p in found if p.is_file())


def image_files(paths, recursive: bool = False) -> list[Path]:
    """The images named by ``paths``: a file as given, a folder as its image files (by suffix,
    sorted, hidden files left out; with ``recursive`` also those in sub-folders), each file once (``a.jpg ./a.jpg`` and a
    file also in a given folder count once, first place kept). A path that does not exist or is
    not a regular file, and a folder without images, are an :class:`InputError`. A folder's files
    that a visionlens run wrote (listed in the ``summary.json`` beside them) are not inputs: the same
    command run twice reads the same images."""
    found: list[Path] = []
    for given in map(Path, paths):
        if not given.is_dir():
            _check_file(given)
            found.append(given)
            continue
        images = _folder_images(given, recursive)
        written = written_by_visionlens(images)
        if images and all(os.path.realpath(p) in written for p in images):
            raise InputError(f"{display(given)}: its images are a visionlens run's outputs (listed in its summary.json), "
                             "which are not read as inputs; give the original images")
        images = [p for p in images if os.path.realpath(p) not in written]
        if not images:
            hint = "" if recursive else " (add --recursive to look in its sub-folders)"
            raise InputError(f"{display(given)}: no image files in this folder{hint}")
        found.extend(images)
    first: dict[str, Path] = {}
    for p in found:
        first.setdefault(os.path.realpath(p), p)
    return list(first.values())
