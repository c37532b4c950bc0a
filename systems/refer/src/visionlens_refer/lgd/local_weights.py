"""Local-weights helpers: nothing is ever downloaded. A model directory must be a
``save_pretrained`` folder (config.json + weights); errors name the path and what is expected."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from visionlens.errors import AssetError, InputError


def require_transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import transformers
    except ImportError:
        raise InputError("this backend needs transformers: pip install 'transformers>=5'") from None
    return transformers


def model_dir(path: str | Path | None, what: str, env: str, example: str) -> Path:
    """Resolve ``path`` (or ``$env``) to a local save_pretrained folder or raise AssetError."""
    raw = path or os.environ.get(env)
    if not raw:
        raise AssetError(f"no local {what} weights given: pass a folder (or set ${env}) holding a Hugging Face "
                         f"save_pretrained copy of e.g. {example} (config.json + model.safetensors)")
    p = Path(raw).expanduser()
    if not (p / "config.json").is_file():
        raise AssetError(f"{what} weights not found: expected {p / 'config.json'} and its weights file "
                         f"(a save_pretrained copy of e.g. {example}); nothing is downloaded")
    if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
        raise AssetError(f"{what} weights not found: {p} has config.json but no *.safetensors / *.bin file")
    return p


@contextmanager
def loading(what: str, path: Path):
    """Around ``from_pretrained`` calls: no progress bar on stderr (restored afterwards), and any
    failure to read the folder as one :class:`InputError` line naming it."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    except (AssetError, InputError):
        raise
    except Exception as err:  # noqa: BLE001 - a damaged folder can fail in many ways
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise InputError(f"cannot load the {what} in {path}: {reason}") from None
    finally:
        if shown:
            logging.enable_progress_bar()


def weights_identity(path: Path) -> str:
    """A cache key for a save_pretrained folder: a hash of ``config.json`` and each weights
    file's name, size and modification time (a changed or replaced file gives a new key)."""
    import hashlib

    digest = hashlib.sha256((path / "config.json").read_bytes())
    for f in sorted([*path.glob("*.safetensors"), *path.glob("*.bin")]):
        stat = f.stat()
        digest.update(f"{f.name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return f"{path.name}:{digest.hexdigest()[:16]}"
