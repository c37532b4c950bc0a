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


def model_type(path: Path, what: str) -> str:
    """The ``model_type`` that ``path/config.json`` declares ("" when it names none); a config.json
    that is not a JSON object is one :class:`InputError` line naming it."""
    import json

    cfg = Path(path) / "config.json"
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        reason = " ".join(str(err).split())[:120] or type(err).__name__
        raise InputError(f"cannot read the {what} config {cfg}: {reason}") from None
    if not isinstance(data, dict):
        raise InputError(f"cannot read the {what} config {cfg}: not a JSON object")
    kind = data.get("model_type", "")
    return kind if isinstance(kind, str) else ""


def require_model_type(path: Path, what: str, accepted: tuple[str, ...]) -> None:
    """Refuse, before anything is loaded, a folder whose config.json declares another kind of model
    (transformers would otherwise build a randomly initialised ``what`` from it)."""
    kind = model_type(path, what)
    if kind not in accepted:
        declared = f"config.json model_type {kind!r}" if kind else "its config.json names no model_type"
        raise InputError(f"{path} is not a {what} model ({declared}, expected {' or '.join(map(repr, accepted))})")


@contextmanager
def loading(what: str, path: Path):
    """Around ``from_pretrained`` calls: no progress bar on stderr and none of transformers' own
    warnings (its load report; both restored afterwards), and any failure to read the folder as
    one :class:`InputError` line naming it."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    verbosity = logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    except (AssetError, InputError):
        raise
    except Exception as err:  # noqa: BLE001 - a damaged folder can fail in many ways
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise InputError(f"cannot load the {what} in {path}: {reason}") from None
    finally:
        logging.set_verbosity(verbosity)
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
