"""The explorer's work, without web code: the loaded models, the images it may read, and maps
computed one request at a time per device (kept briefly for their PNG and NPZ downloads)."""

from __future__ import annotations

import base64
import io
import secrets
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core.layers import layer_shapes
from ..data.images import IMAGE_SUFFIXES, load_image
from ..errors import InputError
from ..methods import REGISTRY
from ..models.zoo import ZooModel
from ..pipeline import make_method
from ..viz.colormaps import bar_labels, check_cmap, colorize, css_gradient
from ..viz.labels import signed_method
from ..viz.overlay import overlay
from . import safety

KEEP = 32  # uploads and results kept in memory (oldest dropped first)
MAX_METHODS = 6


def png_bytes(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(picture: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(picture)).decode("ascii")


class Recent:
    """Values under random tokens, only the ``size`` newest kept (safe across request threads)."""

    def __init__(self, size: int = KEEP):
        self.size, self._items, self._lock = size, OrderedDict(), threading.Lock()

    def add(self, value) -> str:
        token = secrets.token_hex(8)
        with self._lock:
            self._items[token] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return token

    def get(self, token: str):
        """The value under ``token``, or None once dropped (or never there)."""
        with self._lock:
            return self._items.get(token)


class Explorer:
    """The models (loaded once, by name), the ``images`` and ``results`` folders it serves, and
    the upload limits."""

    def __init__(self, models: dict[str, ZooModel], images: str | Path | None = None,
                 results: str | Path | None = None, max_upload_bytes: int = safety.MAX_UPLOAD_BYTES,
                 max_pixels: int = safety.MAX_PIXELS):
        if not models:
            raise InputError("give at least one model")
        self.models = dict(models)
        self.images = self.folder(images, "--images")
        self.results = self.folder(results, "--results")
        self.max_upload_bytes, self.max_pixels = max_upload_bytes, max_pixels
        self.uploads: Recent = Recent()
        self.computed: Recent = Recent()
        self._layers: dict[str, list] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @staticmethod
    def folder(path, flag: str) -> Path | None:
        """``path`` resolved if it is a folder (None stays None); else one :class:`InputError` line."""
        if path is None:
            return None
        folder = Path(path)
        if not folder.is_dir():
            raise InputError(f"{flag} {path}: not a folder")
        return folder.resolve()

    # --- what the page lists ------------------------------------------------------------

    def model(self, name: str) -> ZooModel:
        if name not in self.models:
            raise InputError(f"unknown model '{name}'; this explorer has: {', '.join(self.models)}")
        return self.models[name]

    def describe(self) -> dict:
        """Models (with default layer), class-explaining methods and the served folders."""
        return {
            "models": [{"name": n, "layer": m.layer, "classes": len(m.class_names or ())} for n, m in self.models.items()],
            "methods": [{"name": i.name, "kind": i.kind, "summary": i.summary} for i in REGISTRY if i.explains == "class"],
            "images": self.images is not None, "results": self.results is not None,
            "max_upload_bytes": self.max_upload_bytes, "max_pixels": self.max_pixels,
        }

    def layers(self, name: str) -> list[dict]:
        """The model's layers in execution order with their output shapes (batch of one)."""
        model = self.model(name)
        if name not in self._layers:
            crop = model.preprocess.crop
            with self.device_lock(model):
                shapes = layer_shapes(model.module, torch.zeros(1, 3, crop, crop))
            self._layers[name] = [{"name": n, "shape": list(s) if s is not None else None} for n, s in shapes]
        return self._layers[name]

    def image_names(self) -> list[str]:
        if self.images is None:
            raise safety.NotServed("this explorer serves no images folder (start it with --images DIR)")
        return safety.image_names(self.images)

    def served_file(self, kind: str, name: str) -> Path:
        """A file inside ``--images`` (image files only) or ``--results``; anything else is refused."""
        root = self.images if kind == "images" else self.results if kind == "results" else None
        if root is None:
            raise safety.NotServed(f"this explorer serves no {kind} folder")
        path = safety.inside(root, name)
        if kind == "images" and path.suffix.lower() not in IMAGE_SUFFIXES:
            raise safety.NotServed(f"not served: {name!r} is not an image file")
        return path

    def result_runs(self) -> list[str]:
        """Folders under ``--results`` (and the folder itself) that hold a report card (``index.html``)."""
        if self.results is None:
            raise safety.NotServed("this explorer serves no results folder (start it with --results DIR)")
        cards = sorted(p.parent for p in self.results.rglob("index.html") if p.resolve().is_relative_to(self.results))
        return [c.relative_to(self.results).as_posix() for c in cards]

    def scores(self, run: str, limit: int = 5000) -> list[dict]:
        """Per-image records of a results folder's run: image, model, method, label, prediction,
        metric values and deletion/insertion curves (at most ``limit``)."""
        from ..evaluation.store import read_folder_results

        folder = self.served_file("results", f"{run}/index.html").parent
        keep = ("image", "model", "method", "label", "predicted", "metrics", "curves")
        records = [r for r in read_folder_results(folder, warn=False) if r.get("image") != "*"]
        return [{k: r.get(k) for k in keep} for r in records[:limit]]

    # --- images ---------------------------------------------------------------------------

    def add_upload(self, data: bytes) -> dict:
        image = safety.load_upload(data, self.max_upload_bytes, self.max_pixels)
        return {"image": "upload:" + self.uploads.add(image), "width": image.width, "height": image.height}

    def image(self, ref: str) -> Image.Image:
        """``upload:TOKEN`` (an upload of this session) or ``file:NAME`` (inside ``--images``)."""
        kind, _, value = str(ref).partition(":")
        if kind == "upload" and (upload := self.uploads.get(value)) is not None:
            return upload
        if kind == "file":
            return load_image(self.served_file("images", value))
        raise InputError(f"unknown image {ref!r}; upload it again or pick one from the list")

    # --- maps -------------------------------------------------------------------------------

    def device_lock(self, model: ZooModel) -> threading.Lock:
        """One lock per device: requests on a device run one at a time."""
        with self._guard:
            return self._locks.setdefault(str(model.device), threading.Lock())

    def _input(self, model: ZooModel, ref: str) -> tuple[Image.Image, torch.Tensor]:
        view = model.preprocess.view(self.image(ref))
        return view, model.preprocess.normalize(view)[None]

    def top_classes(self, model: ZooModel, logits: torch.Tensor, k: int = 5) -> list[dict]:
        probs = logits.float().softmax(dim=1)[0].cpu()
        values, indices = probs.topk(min(k, probs.numel()))
        return [{"index": int(i), "name": model.class_name(int(i)), "probability": float(p)} for p, i in zip(values, indices)]

    def predict(self, name: str, ref: str) -> list[dict]:
        """The top-5 classes of an image, with probabilities."""
        model = self.model(name)
        _, x = self._input(model, ref)
        with self.device_lock(model), torch.no_grad():
            logits = model.module(x.to(model.device))
        return self.top_classes(model, logits)

    def _target(self, model: ZooModel, target) -> int | None:
        if target is None or str(target).strip() in ("", "predicted"):
            return None
        return model.class_indices([str(target)])[0]

    def explain(self, name: str, ref: str, methods: list[str], layer: str | None = None, target=None,
                cmap: str | None = None) -> dict:
        """Maps of one image by each method (side by side on the page), with the top-5 classes;
        the arrays are kept under the returned ``token`` for the downloads."""
        model = self.model(name)
        methods = list(dict.fromkeys(m.strip() for m in methods if m and m.strip()))
        if not methods or len(methods) > MAX_METHODS:
            raise InputError(f"choose between 1 and {MAX_METHODS} methods")
        cmap = check_cmap(cmap or "viridis")
        view, x = self._input(model, ref)
        target = self._target(model, target)
        with self.device_lock(model):
            explainers = {m: make_method(m, model, layer or None) for m in methods}
            results = {m: ex(x.to(model.device), target) for m, ex in explainers.items()}
        kept = {"model": name, "view": view, "cmap": cmap, "results": {m: _arrays(r) for m, r in results.items()}}
        token = self.computed.add(kept)
        first = next(iter(results.values()))
        return {"token": token, "view": data_url(view), "top5": self.top_classes(model, first.logits),
                "target": {"index": int(first.targets[0]), "name": model.class_name(int(first.targets[0]))},
                "maps": [self._shown(model, m, r, kept["results"][m], cmap) for m, r in results.items()]}

    def _shown(self, model: ZooModel, key: str, result, arrays: dict, cmap: str) -> dict:
        signed = signed_method(key)
        heat = arrays["raw"] if signed else arrays["map"]
        shown = {"method": key, "layer": result.layer, "score": float(result.scores[0]), "signed": signed,
                 "heat": data_url(Image.fromarray(colorize(heat, cmap, signed))),
                 "gradient": css_gradient(cmap, signed), "labels": list(bar_labels(signed))}
        if "flow" in arrays:
            names = result.flow_layers or _block_names(model, result.layer, len(arrays["flow"]))
            shown["flow"] = [{"layer": n, "heat": data_url(Image.fromarray(colorize(f, cmap)))}
                             for n, f in zip(names, arrays["flow"])]
        return shown

    def _kept(self, token: str) -> dict:
        kept = self.computed.get(token)
        if kept is None:
            raise safety.NotServed("this result is no longer kept; compute the maps again")
        return kept

    def overlay_png(self, token: str, key: str, alpha: float = 0.5) -> bytes:
        """The map of ``key`` over the model's view at opacity ``alpha``, with its colour bar."""
        kept = self._kept(token)
        if key not in kept["results"]:
            raise safety.NotServed(f"no map '{key}' in this result")
        if not 0.0 <= alpha <= 1.0:
            raise InputError(f"opacity must be between 0 and 1, got {alpha}")
        arrays, signed = kept["results"][key], signed_method(key)
        shown = arrays["raw"] if signed else arrays["map"]
        return png_bytes(overlay(kept["view"], shown, alpha=alpha, cmap=kept["cmap"], signed=signed, colorbar=True))

    def npz_bytes(self, token: str) -> bytes:
        """Every map of a result as ``METHOD_map`` / ``METHOD_raw`` / ``METHOD_flow`` arrays."""
        arrays = {f"{m}_{k}": v for m, r in self._kept(token)["results"].items() for k, v in r.items()}
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()


def _arrays(result) -> dict:
    """Image 0's arrays of a result: ``map`` in [0, 1], ``raw`` and, for flows, ``flow`` per block."""
    arrays = {"map": result.maps[0].detach().cpu().numpy(), "raw": result.raw[0].detach().cpu().numpy()}
    if result.flow is not None:
        arrays["flow"] = result.flow[0].detach().cpu().numpy()
    return arrays


def _block_names(model: ZooModel, container: str, n: int) -> list[str]:
    """The names of a flow's blocks: ``CONTAINER.i`` where the model has them, else ``block i``."""
    modules = dict(model.module.named_modules())
    base = str(container).split("[", 1)[0]  # DAAM reports e.g. blocks[0:4]
    names = [f"{base}.{i}" for i in range(n)]
    return names if all(name in modules for name in names) else [f"block {i + 1}" for i in range(n)]
