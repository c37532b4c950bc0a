"""Files the project writes and reads: atomic writes, strict JSON, safe checkpoints, versions.

Every writer goes through :func:`save_atomic` (no half-written file is ever left behind) and every
JSON file through :func:`write_json` (strict JSON: a NaN or infinity becomes ``null``, never the
bare ``NaN`` token other parsers refuse)."""

from __future__ import annotations

import json
import math
import os
import pickle
import platform
import tempfile
import warnings
from pathlib import Path
from typing import Any

from .errors import InputError, display


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_atomic(write, dest: str | Path) -> None:
    """Call ``write(tmp_path)`` and move the result to ``dest``; no partial file on failure."""
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=dest.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; use the usual permissions
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def strict(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (recursively), so that it dumps
    as strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    return value


def dumps(value: Any, indent: int | None = 2) -> str:
    """Strict JSON text of ``value`` (non-finite floats as ``null``)."""
    return json.dumps(strict(value), indent=indent, allow_nan=False)


def write_json(value: Any, dest: str | Path, indent: int | None = 2) -> Path:
    """Write ``value`` to ``dest`` as strict JSON, atomically; return ``dest``."""
    text = dumps(value, indent)
    save_atomic(lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"), dest)
    return Path(dest)


def load_checkpoint(path: str | Path, what: str = "checkpoint", map_location="cpu"):
    """``torch.load(path, weights_only=True)`` with every failure as one :class:`InputError` line
    (missing file, pickled code, a corrupt or non-torch file)."""
    import torch

    path = Path(path)
    if not path.exists():
        raise InputError(f"{display(path)}: no such {what} file")
    if not path.is_file():
        raise InputError(f"{display(path)}: not a regular file (expected a {what} file)")
    with open(path, "rb") as f:
        head = f.read(2)
    if head != b"PK" and head[:1] != b"\x80":  # torch.save writes a zip archive (legacy: a pickle)
        raise InputError(f"{display(path)}: not a PyTorch {what} file (torch.save writes a zip archive); check the path")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the load still refuses code
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise InputError(f"{display(path)}: not a safe PyTorch {what}: it holds pickled code or objects other than "
                         f"tensors (refused by weights_only=True); save the {what} with torch.save(model.state_dict(), path)") from None
    except Exception as err:  # corrupt or truncated file
        text = " ".join(str(err).split())
        if len(text) > 120:  # cut at a word, marked, not mid-word
            text = text[:120].rsplit(" ", 1)[0] + " ..."
        reason = text or type(err).__name__
        raise InputError(f"{display(path)}: not a safe PyTorch {what} (weights_only load failed: {reason})") from None


def versions() -> dict:
    """Versions of the packages a result depends on (optional ones only when installed)."""
    from importlib import metadata

    from ._version import __version__

    found = {"visionlens": __version__, "python": platform.python_version()}
    for package in ("torch", "torchvision", "numpy", "timm", "transformers"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found
