"""The explorer's work, without web code: the loaded models, the images it may read, and maps
computed one request at a time per device (kept briefly for their PNG and NPZ downloads)."""

from __future__ import annotations

import contextlib
import io
import secrets
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..cli import NAFLOW_CLI_DAMP, NAFLOW_CLI_MAX_ITER  # the command line's NAFlow solve: damped, converges in seconds
from ..core.hooks import preserved_model_state
from ..core.layers import layer_shapes
from ..data.images import IMAGE_SUFFIXES, load_image
from ..errors import ImageLoadError, InputError, one_line
from ..methods import METHODS, REGISTRY
from ..methods.base import PerturbationMethod
from ..methods.registry import unknown_method
from ..models.zoo import ZooModel
from ..pipeline import make_method, parse_method
from ..viz.colormaps import check_cmap
from ..viz.labels import signed_method
from ..viz.overlay import overlay
from . import safety, similarity
from .jobs import STOP_WAIT_S, Job, Jobs
from .pictures import colour_bar, data_url, heat_url, png_bytes
from .results import image_input, record_methods, run_model, settings_of
from .similarity import SIMILARITY_CHOICES

KEEP = 32  # uploads and results kept in memory (oldest dropped first)
UPLOAD_BUDGET = 64 * 1024 * 1024  # bytes of decoded uploads kept in all (oldest dropped first)
LOCK_WAIT_S = 30.0  # how long a request waits for its device before a 503 (jobs wait as "queued")
MAX_METHODS = 6
LONG_METHODS = ("naflow", "scorecam", "ablationcam")  # run as jobs by the page, with progress and Cancel
# a perturbation method's passes besides its channel batches (its forward; Score-CAM's check of its
# scoring copy, Ablation-CAM's check of its stand-in input), counted on mobilenet_v2
SETUP_PASSES = {"scorecam": 5, "ablationcam": 2}


class Recent:
    """Values under random tokens, only the ``size`` newest kept, and with ``budget`` only as many
    of the newest as fit in it by ``weigh(value)`` bytes (safe across request threads)."""

    def __init__(self, size: int = KEEP, budget: int | None = None, weigh=None):
        self.size, self._items, self._lock = size, OrderedDict(), threading.Lock()
        self.budget, self.weigh, self._weights = budget, weigh or (lambda value: 0), {}

    def add(self, value) -> str:
        token = secrets.token_hex(8)
        with self._lock:
            self._items[token], self._weights[token] = value, self.weigh(value)
            while len(self._items) > 1 and (len(self._items) > self.size or self.over_budget()):
                self._weights.pop(self._items.popitem(last=False)[0])
        return token

    def over_budget(self) -> bool:
        return self.budget is not None and sum(self._weights.values()) > self.budget

    @property
    def kept_bytes(self) -> int:
        """The kept values' bytes by ``weigh``."""
        with self._lock:
            return sum(self._weights.values())

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
        self.uploads: Recent = Recent(budget=UPLOAD_BUDGET, weigh=image_bytes)
        self.computed: Recent = Recent()
        self.jobs = Jobs()
        self._run_models: dict[str, ZooModel] = {}  # zoo models of --results runs, loaded on first use
        self._layers: dict[str, list] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def stop_jobs(self, timeout: float | None = STOP_WAIT_S) -> bool:
        """Cancel the running and queued jobs and wait for their threads (at most ``timeout``
        seconds); True when none is left running. The app calls it when its server stops."""
        return self.jobs.stop(timeout)

    def close(self, timeout: float | None = STOP_WAIT_S) -> bool:
        """:meth:`stop_jobs`, and refuse new jobs from now on (``serve`` calls it before it exits)."""
        return self.jobs.close(timeout)

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
            "methods": [{"name": i.name, "kind": i.kind, "summary": i.summary, "long": i.name in LONG_METHODS}
                        for i in REGISTRY if i.explains == "class"],
            "similarity_methods": list(SIMILARITY_CHOICES),
            "images": self.images is not None, "results": self.results is not None,
            "images_total": None if self.images is None else len(self._all_image_names()),
            "images_listed": safety.MAX_LISTED,
            "max_upload_bytes": self.max_upload_bytes, "max_pixels": self.max_pixels,
        }

    def layers(self, name: str) -> list[dict]:
        """The model's layers in execution order with their output shapes (batch of one)."""
        model = self.model(name)
        if name not in self._layers:
            with self.locked(model):
                self._layer_shapes(name, model)
        return self._layers[name]

    def _layer_shapes(self, name: str, model: ZooModel) -> list[dict]:
        """:meth:`layers` for a caller that holds the device lock."""
        if name not in self._layers:
            crop = model.preprocess.crop
            shapes = layer_shapes(model.module, torch.zeros(1, 3, crop, crop))
            self._layers[name] = [{"name": n, "shape": list(s) if s is not None else None} for n, s in shapes]
        return self._layers[name]

    def _expected_passes(self, name: str, explainer, x: torch.Tensor) -> int | None:
        """About how many forward passes a perturbation method (Score-CAM, Ablation-CAM) makes:
        one per batch of its layer's channels, and a few to set up; None for other methods."""
        if not isinstance(explainer, PerturbationMethod) or not isinstance(explainer.batch_size, int):
            return None  # not a perturbation method, or its batch is found from the memory on each call
        layer = explainer.resolve(x)[0]
        shapes = {entry["name"]: entry["shape"] for entry in self._layer_shapes(name, self.model(name))}
        shape = shapes.get(layer)
        if not shape or len(shape) < 3:
            return None
        channels = shape[1] if len(shape) == 4 else shape[-1]
        return -(-channels // explainer.batch_size) + SETUP_PASSES.get(explainer.name, 1)

    def image_names(self) -> list[str]:
        """The first :data:`~.safety.MAX_LISTED` images of ``--images`` (``describe`` says how many there are)."""
        return self._all_image_names()[:safety.MAX_LISTED]

    def _all_image_names(self) -> list[str]:
        if self.images is None:
            raise safety.NotServed("this explorer serves no images folder (start it with --images DIR)")
        return safety.image_names(self.images, limit=None)

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
        """Check and decode an upload; it is kept as a working copy (:func:`~.safety.working_copy`)."""
        image = safety.load_upload(data, self.max_upload_bytes, self.max_pixels)
        width, height = image.size
        return {"image": "upload:" + self.uploads.add(safety.working_copy(image)), "width": width, "height": height}

    def image(self, ref: str) -> Image.Image:
        """``upload:TOKEN`` (an upload of this session) or ``file:NAME`` (inside ``--images``)."""
        kind, _, value = str(ref).partition(":")
        if kind == "upload" and (upload := self.uploads.get(value)) is not None:
            return upload
        if kind == "file":
            path = self.served_file("images", value)
            try:
                return load_image(path)
            except ImageLoadError as err:  # named as listed, not by the server's absolute path
                raise ImageLoadError(one_line(err).replace(str(path), value)) from None
        raise InputError(f"unknown image {ref!r}; upload it again or pick one from the list")

    # --- maps -------------------------------------------------------------------------------

    def device_lock(self, model: ZooModel) -> threading.Lock:
        """One lock per device: requests on a device run one at a time."""
        with self._guard:
            return self._locks.setdefault(str(model.device), threading.Lock())

    @contextlib.contextmanager
    def locked(self, model: ZooModel):
        """Hold the model's device lock, waiting at most :data:`LOCK_WAIT_S` (then :class:`~.safety.Busy`)."""
        lock = self.device_lock(model)
        if not lock.acquire(timeout=LOCK_WAIT_S):
            raise safety.Busy(f"the device is busy with other requests (waited {LOCK_WAIT_S:g} s); "
                              "try again, or start long work as a job (POST /api/jobs)")
        try:
            yield
        finally:
            lock.release()

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
        with self.locked(model), preserved_model_state(model.module), torch.no_grad():  # eval mode, as explain
            logits = model.module(x.to(model.device))
        return self.top_classes(model, logits)

    def _target(self, model: ZooModel, target) -> int | None:
        if target is None or str(target).strip() in ("", "predicted"):
            return None
        return model.class_indices([str(target)])[0]

    def explain_request(self, name: str, ref: str, methods: list[str], layer: str | None = None, target=None,
                        cmap: str | None = None) -> "ExplainRequest":
        """A checked request: model, methods, colormap, image and target (one line for the first bad one)."""
        model = self.model(name)
        methods = list(dict.fromkeys(m.strip() for m in methods if m and m.strip()))
        if not methods or len(methods) > MAX_METHODS:
            raise InputError(f"choose between 1 and {MAX_METHODS} methods")
        for method in methods:
            if parse_method(method)[0] not in METHODS:
                raise InputError(unknown_method(parse_method(method)[0], METHODS))
        cmap = check_cmap(cmap or "viridis")
        view, x = self._input(model, ref)
        return ExplainRequest(name, model, view, x, methods, layer or None, self._target(model, target), cmap)

    def explain(self, name: str, ref: str, methods: list[str], layer: str | None = None, target=None,
                cmap: str | None = None) -> dict:
        """Maps of one image by each method (side by side on the page), with the top-5 classes;
        the arrays are kept under the returned ``token`` for the downloads."""
        request = self.explain_request(name, ref, methods, layer, target, cmap)
        with self.locked(request.model):
            return self.run_explain(request)

    def explain_job(self, name: str, ref: str, methods: list[str], layer: str | None = None, target=None,
                    cmap: str | None = None) -> Job:
        """:meth:`explain` as a job (progress: one step per method; cancellable)."""
        request = self.explain_request(name, ref, methods, layer, target, cmap)
        return self.jobs.start(self.device_lock(request.model), lambda job: self.run_explain(request, job.advance),
                               label=", ".join(request.methods), total=len(request.methods))

    def run_explain(self, request: "ExplainRequest", advance=None) -> dict:
        """Compute a checked request (the caller holds the device lock); ``advance(i, method)``
        before each method. NAFlow gets the command line's damped solve (``damp`` 0.1: converged
        in seconds); warnings (e.g. not converged) come back as one line each."""
        model, x = request.model, request.x.to(request.model.device)
        results = {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for i, method in enumerate(request.methods):
                explainer = make_method(method, model, request.layer, max_iter=NAFLOW_CLI_MAX_ITER, damp=NAFLOW_CLI_DAMP)
                if advance is not None:
                    advance(i, method, self._expected_passes(request.name, explainer, x))
                results[method] = explainer(x, request.target)
        kept = {"model": request.name, "view": request.view, "cmap": request.cmap,
                "results": {m: _arrays(r) for m, r in results.items()}}
        token = self.computed.add(kept)
        first = next(iter(results.values()))
        return {"token": token, "view": data_url(request.view), "top5": self.top_classes(model, first.logits),
                "target": _target_of(model, first),
                "maps": [self._shown(model, m, r, kept["results"][m], request.cmap) for m, r in results.items()],
                "warnings": _warning_lines(caught)}

    # --- similarity and results ---------------------------------------------------------------

    def similarity(self, name: str, a: str, b: str | None = None, gallery: list[str] | None = None,
                   methods: list[str] = ("sfam",), metric: str = "cosine", top: int = 5, cmap: str | None = None) -> dict:
        """Why ``a`` and ``b`` are similar (maps of both), or, without ``b``, the ``top`` matches of
        ``a`` in ``gallery`` (image refs; default: every image of ``--images``) with their maps."""
        model = self.model(name)
        methods = similarity.check_request(methods, metric, None if b else top)
        cmap = check_cmap(cmap or "viridis")
        view = lambda ref: model.preprocess.view(self.image(ref))  # noqa: E731
        query = view(a)
        if b:
            views = (query, view(b))
            with self.locked(model), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                paired = similarity.explain_pair(model, views, methods, metric, cmap)
            return {"mode": "pair", **paired, "warnings": _warning_lines(caught)}
        refs = list(dict.fromkeys(gallery or ["file:" + n for n in self._all_image_names()]))
        if len(refs) > similarity.MAX_GALLERY:
            raise InputError(f"the gallery has {len(refs):,} images; the explorer ranks at most {similarity.MAX_GALLERY}")
        refs, views, failures = similarity.gallery_views(view, refs)
        with self.locked(model), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ranked = similarity.rank_gallery(model, (a, query), (refs, views), methods, metric, top, cmap)
        return {"mode": "gallery", **ranked, "failures": failures, "warnings": _warning_lines(caught)}

    def record_maps(self, run: str, image: str, model_name: str, cmap: str | None = None) -> dict:
        """The maps of one image of a results folder by each method it was scored with, computed
        again from the folder's recorded model, data and methods (see :mod:`.results`)."""
        folder = self.served_file("results", f"{run}/index.html").parent
        cmap = check_cmap(cmap or "viridis")
        settings = settings_of(folder)
        records = record_methods(folder, image, model_name)
        model = run_model(self.models, self._run_models, settings, model_name)
        allowed = [folder, *(f for f in (self.images, self.results) if f is not None)]
        view, x = image_input(settings, image, model, allowed)
        computed = {}
        with self.locked(model), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for record in records:
                computed[record["method"]] = make_method(record["method"], model)(x.to(model.device))
        kept = {"model": model_name, "view": view, "cmap": cmap, "results": {m: _arrays(r) for m, r in computed.items()}}
        maps = [{**self._shown(model, m, r, kept["results"][m], cmap),
                 "predicted": None if r.targets is None else int(r.targets[0]), "recorded_predicted": rec.get("predicted")}
                for (m, r), rec in zip(computed.items(), records)]
        return {"token": self.computed.add(kept), "image": image, "model": model_name, "view": data_url(view),
                "source": "recomputed", "maps": maps, "warnings": _warning_lines(caught)}

    def _shown(self, model: ZooModel, key: str, result, arrays: dict, cmap: str) -> dict:
        signed = signed_method(key)
        heat = arrays["raw"] if signed else arrays["map"]
        shown = {"method": key, "layer": result.layer, "score": float(result.scores[0]), "signed": signed,
                 "heat": heat_url(heat, cmap, signed), **colour_bar(cmap, signed)}
        if "flow" in arrays:
            names = result.flow_layers or _block_names(model, result.layer, len(arrays["flow"]))
            shown["flow"] = [{"layer": n, "heat": heat_url(f, cmap)}
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


@dataclass
class ExplainRequest:
    """A checked explain request: the model by name, the image (view and input), what to explain."""

    name: str
    model: ZooModel
    view: Image.Image
    x: torch.Tensor
    methods: list[str]
    layer: str | None
    target: int | None
    cmap: str


def image_bytes(image: Image.Image) -> int:
    """The bytes of a decoded image's pixels."""
    return image.width * image.height * len(image.getbands())


def _target_of(model: ZooModel, result) -> dict | None:
    """The explained class of the request's first image, or None (a class-free map of an embedding)."""
    if result.targets is None:
        return None
    index = int(result.targets[0])
    return {"index": index, "name": model.class_name(index)}


def _warning_lines(caught) -> list[str]:
    """The first line of each distinct warning the library gave (not third-party deprecations)."""
    lines = [str(w.message).strip().splitlines()[0] for w in caught
             if issubclass(w.category, UserWarning) and not issubclass(w.category, DeprecationWarning) and str(w.message).strip()]
    return list(dict.fromkeys(lines))


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
