"""The Results view's maps of one image: ``evaluate`` keeps example overlays of its first images
only (``examples/``), so the explorer computes a clicked image's maps again, from what the results
folder recorded: the model (its ``settings.json``: spec and weights), the data (the same images,
loaded as ``evaluate`` loads them) and the record's methods, each explaining the predicted class
as ``evaluate`` does for a classifier."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from ..evaluation.data import data_items, load_batch, parse_data
from ..evaluation.store import read_folder_results
from ..models.zoo import ZOO, ZooModel, load_model
from .safety import NotServed

RECOMPUTABLE_DATA = ("world", "samples", "folder", "imagefolder")


def settings_of(folder: Path) -> dict:
    """The run's ``settings.json``: a JSON object whose ``models`` and ``data``, where given, are
    objects too (the models' entries as well); else one :class:`InputError` line naming the folder
    and the file."""
    path = folder / "settings.json"
    where = f"results folder '{folder.name}'"
    if not path.is_file():
        raise InputError(f"{where} has no settings.json; its maps cannot be computed again")
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        why = " ".join(str(err).split())[:200] or type(err).__name__
        raise InputError(f"{where}: settings.json is not valid JSON ({why}); its maps cannot be computed again") from None
    except OSError as err:
        raise InputError(f"{where}: settings.json cannot be read ({err.strerror or type(err).__name__}); "
                         "its maps cannot be computed again") from None
    if not isinstance(settings, dict):
        raise InputError(f"{where}: settings.json holds {_kind(settings)}, not an object of the run's settings; "
                         "its maps cannot be computed again")
    for key in ("models", "data"):
        if settings.get(key) is not None and not isinstance(settings[key], dict):
            raise InputError(f"{where}: settings.json's '{key}' is {_kind(settings[key])}, not an object; "
                             "its maps cannot be computed again")
    for name, source in (settings.get("models") or {}).items():
        if source is not None and not isinstance(source, dict):
            raise InputError(f"{where}: settings.json's model '{name}' is {_kind(source)}, not an object; "
                             "its maps cannot be computed again")
    return settings


def _kind(value) -> str:
    """``a list``, ``a number``, ...: what a JSON value is, for an error line."""
    names = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def record_methods(folder: Path, image: str, model: str) -> list[dict]:
    """The folder's records of ``image`` by ``model`` (one per method, in the order written)."""
    records = [r for r in read_folder_results(folder, warn=False) if r.get("image") == image and r.get("model") == model]
    if not records:
        raise InputError(f"no record of image '{image}' by model '{model}' in this results folder")
    return records


def run_model(loaded: dict[str, ZooModel], cache: dict[str, ZooModel], settings: dict, name: str) -> ZooModel:
    """The run's model ``name``: the explorer's own model of that name, else the zoo model the
    run recorded (zoo weights, loaded once and kept in ``cache``)."""
    source = (settings.get("models") or {}).get(name) or {}
    spec, weights = source.get("spec", name), source.get("weights", "zoo")
    if not isinstance(spec, str) or not isinstance(weights, str):
        raise InputError(f"this run's settings.json records model '{name}' without a readable spec and weights; "
                         "its maps cannot be computed again")
    if spec in ZOO and ZOO[spec].task.endswith("embedding"):
        raise InputError(f"model '{name}' is an embedding model: the explorer computes no maps of its retrieval "
                         "explanations; see the report card's example overlays")
    if name in loaded:
        return loaded[name]
    if spec not in ZOO or weights != "zoo":
        raise InputError(f"model '{name}' of this run ({spec}, weights {weights}) is not loaded; start the explorer "
                         f"with --model {spec} to see its maps")
    if spec not in cache:
        cache[spec] = load_model(spec, device="cpu")
    return cache[spec]


def _run_data(settings: dict) -> dict:
    data = settings.get("data") or {}
    kind = data.get("kind")
    if kind not in RECOMPUTABLE_DATA:
        raise InputError(f"the images of a '{kind}' run cannot be loaded again by the explorer; "
                         "use the report card's example overlays")
    where = data.get("name") if kind in ("world", "samples") else data.get("path")
    if not isinstance(where, str) or not where:
        raise InputError(f"this run's settings.json records no name or folder of its '{kind}' data; "
                         "its maps cannot be computed again")
    if kind not in ("world", "samples") and not (where and Path(where).is_dir()):
        raise InputError(f"the run's data folder {where} is not there any more; its maps cannot be computed again")
    return parse_data(where)


def _check_inside(image: str, source, allowed: list[Path]) -> None:
    """Refuse a run's image file outside the served folders (and the run's own folder)."""
    path = Path(source).resolve() if isinstance(source, (str, os.PathLike)) else None
    if path is None or not any(path.is_relative_to(root.resolve()) for root in allowed):
        raise NotServed(f"not served: image '{image}' of this run is outside the explorer's --images and --results folders")


def image_input(settings: dict, image: str, model: ZooModel,
                allowed: list[Path] | None = None) -> tuple[Image.Image, torch.Tensor]:
    """The record's image as the run fed it to ``model``: ``(view, input batch of one)``; with
    ``allowed``, an image file only if it resolves inside one of these folders (else :class:`NotServed`)."""
    data = _run_data(settings)
    if data["kind"] == "world":
        prefix, _, index = image.rpartition(":")
        if prefix != data["name"] or not index.isdigit():
            raise InputError(f"image '{image}' is not an image of {data['name']}")
        item = (image, int(index), -1)
    else:
        item = next((it for it in data_items(data, None) if it[0] == image), None)
        if item is None:
            raise InputError(f"image '{image}' is not in the run's data any more")
        if allowed is not None and data["kind"] != "samples":  # the bundled photos are the library's own
            _check_inside(image, item[1], allowed)
    batch = load_batch(data, [item[:2] + (-1,)], model)
    raw = (batch.raw[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(raw), batch.x
