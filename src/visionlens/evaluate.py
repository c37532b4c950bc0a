"""The evaluation harness behind ``visionlens evaluate``: models x methods x metrics on a data set.

Data streams in batches, each within a byte budget (:data:`BATCH_BYTES`) whatever the batch size
asked for. Per-image results are appended to ``results.jsonl`` (one strict-JSON object per (model,
method, image), flushed and fsynced per batch; a folder's image is known by its path relative to
the folder). A re-run with the same ``--out`` skips the keys already there, so a crashed or killed
run resumes without losing or duplicating results; a partially written last line is cut off before
appending, and a line that is not a record (or a record that contradicts an earlier one) is
ignored with a one-line warning. One run at a time writes a results file (``flock``); a run that
stops before its first result removes what it made, while it still holds the lock. Batches are
fixed by image index, so a resumed batch is computed exactly as in an uninterrupted run.
``settings.json`` records what the values depend on (data, step, seed, metrics); a re-run with
other values is refused rather than mixing incomparable results. At the end: ``report.csv`` / ``report.json`` (method x metric: mean, 95 % CI, n), ``index.html`` with example
overlays, and ``manifest.json`` (versions, seed, device, timings, batch sizes, arguments).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows: results files are not locked
    fcntl = None

import numpy as np
import torch
from PIL import Image

from . import metrics as M
from .checks import check_number
from .core.inference import checked_inference_copy
from .core.progress import Progress
from .errors import ImageLoadError, InputError
from .io import save_atomic, strict, versions, write_json
from .models.zoo import ZOO, ZooModel, load_model, resolve_device
from .viz.overlay import overlay

DEFAULT_METRICS = [m for m in M.METRICS if m != "randomisation"]  # randomisation: opt-in (cost: one map per layer)
PER_CLASS_METRIC = "pointing-game-classes"  # summarised per class first; its n counts classes


# --- data -----------------------------------------------------------------------------------

def parse_data(spec: str) -> dict:
    """``world[:split]`` (masks and boxes), ``samples`` (bundled photos), or a folder with labels.csv."""
    if spec == "world" or spec.startswith("world:"):
        split = spec.partition(":")[2] or "test"
        if split not in ("train", "val", "test"):
            raise InputError(f"bad --data '{spec}': world split must be train, val or test")
        return {"kind": "world", "split": split, "name": f"world:{split}"}
    if spec == "samples":
        return {"kind": "samples", "name": "samples"}
    folder = Path(spec)
    if not folder.is_dir():
        raise InputError(f"bad --data '{spec}': use world[:split], samples, or a folder of images with labels.csv")
    labels = folder / "labels.csv"
    if not labels.is_file():
        raise InputError(f"bad --data '{spec}': the folder has no labels.csv (columns file,class_index)")
    with open(labels, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "file" not in rows[0] or "class_index" not in rows[0]:
        raise InputError(f"bad --data '{spec}': labels.csv needs the columns file,class_index")
    items, lines = [], {}
    for line, r in enumerate(rows, start=2):
        try:
            label = int(r["class_index"])
        except (TypeError, ValueError):
            raise InputError(f"bad --data '{spec}': labels.csv line {line}: class_index {r['class_index']!r} "
                             "is not a whole number") from None
        if label < 0:
            raise InputError(f"bad --data '{spec}': labels.csv line {line}: class_index {label} is negative")
        key = image_key(r["file"] or "")
        if key in lines:
            raise InputError(f"bad --data '{spec}': labels.csv line {line}: {r['file']!r} is listed twice "
                             f"(first on line {lines[key]})")
        lines[key] = line
        items.append((key, folder / key, label))
    missing = [key for key, p, _ in items if not p.is_file()]
    if missing:
        raise InputError(f"bad --data '{spec}': labels.csv lists {len(missing)} file(s) that are not in the folder, "
                         f"first {missing[0]!r}")
    return {"kind": "folder", "name": str(folder), "items": items,
            "labels_sha256": hashlib.sha256(labels.read_bytes()).hexdigest()}


def image_key(file: str) -> str:
    """The id of a folder's image in results: its path relative to the data root (the folder with
    labels.csv), normalised, with ``/`` separators, so that ``a/x.JPEG`` and ``b/x.JPEG`` stay two
    images. Results written when images were keyed by file name alone keep their keys in a flat
    folder (name and path agree); in a nested one they match no image and are computed again."""
    return Path(os.path.normpath(file)).as_posix()


def ground_truth(data: dict) -> set[str]:
    """What a metric may need that the data provides (``MetricInfo.needs``)."""
    return {"model", "masks", "boxes"} if data["kind"] == "world" else {"model"}


def _items(data: dict, n: int | None) -> list[tuple[str, object, int]]:
    """(image id, source, label) for the first ``n`` images."""
    if data["kind"] == "world":
        count = n if n is not None else 2000
        return [(f"{data['name']}:{i}", i, -1) for i in range(count)]
    if data["kind"] == "samples":
        from .data.samples import imagenet_label, sample_images

        items = [(p.name, p, imagenet_label(p)) for p in sample_images("all")]
        items = [(i, p, -1 if lab is None else lab) for i, p, lab in items]
    else:
        items = list(data["items"])
    return items[:n] if n is not None else items


def _load_batch(data: dict, items, model: ZooModel) -> dict:
    pre = model.preprocess
    mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
    if data["kind"] == "world":
        from .data.world import World, WorldConfig

        b = World(WorldConfig(size=pre.crop)).batch(data["split"], [src for _, src, _ in items])
        raw = b["image"]
        return {"ids": [i for i, _, _ in items], "x": (raw - mean) / std, "raw": raw, "label": b["label"],
                "masks": b["object_mask"], "boxes": b["object_box"]}
    from .data.images import load_image

    try:
        xs = [pre(load_image(src)) for _, src, _ in items]
    except ImageLoadError as err:
        raise ImageLoadError(f"{err}; replace the file and re-run to resume (results so far are kept), or list only "
                             "readable images in labels.csv and use a new --out") from None
    x = torch.stack(xs)
    return {"ids": [i for i, _, _ in items], "x": x, "raw": (x * std + mean).clamp(0, 1),
            "label": torch.tensor([lab for _, _, lab in items]), "masks": None, "boxes": None}


# --- results file ---------------------------------------------------------------------------

def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _warn_first(problems: list[str], what: str) -> None:
    """One line for a list of problems: the first, and how many more of the same kind."""
    if problems:
        more = f" (and {len(problems) - 1} more {what})" if len(problems) > 1 else ""
        _warn(problems[0] + more)


def _is_value(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _record_problem(rec) -> str | None:
    """Why a parsed line is not a results record, or None if it is one."""
    if not isinstance(rec, dict):
        return f"a JSON {type(rec).__name__}, not an object"
    if not all(isinstance(rec.get(k), str) for k in ("model", "method", "image")):
        return "no model, method and image"
    if rec["image"] == "*":
        return None if isinstance(rec.get("skipped"), str) else "a skipped method without its reason"
    if not isinstance(rec.get("label"), int) or isinstance(rec.get("label"), bool):
        return "no integer label"
    metrics = rec.get("metrics")
    if not isinstance(metrics, dict) or not all(_is_value(v) for v in metrics.values()):
        return "no metrics object of numbers"
    return None


def _located_records(path: Path, invalid: list[str]) -> Iterator[tuple[str, dict]]:
    """("FILE line N", record) for the complete lines of a results file that are records; the others
    are added to ``invalid``. The part after the last newline (empty, or a line a kill cut short)
    is no line."""
    for number, line in enumerate(path.read_bytes().split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            rec = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            invalid.append(f"{where} is not JSON; ignored")
            continue
        why = _record_problem(rec)
        if why is not None:
            invalid.append(f"{where} is not a results record ({why}); ignored")
            continue
        yield where, rec


def _key_text(key: tuple) -> str:
    return "(" + ", ".join(key) + ")"


def _first_per_key(located, conflicts: list[str]) -> list[dict]:
    """The first record per (model, method, image); a later one with other values is added to ``conflicts``."""
    first: dict[tuple, tuple[str, dict]] = {}
    for where, rec in located:
        key = (rec["model"], rec["method"], rec["image"])
        if key not in first:
            first[key] = (where, rec)
        elif rec != first[key][1]:
            conflicts.append(f"{where}: a second record for {_key_text(key)} with other values; the first "
                             f"({first[key][0]}) is used")
    return [rec for _, rec in first.values()]


def _read(paths: list[Path], warn: bool) -> list[dict]:
    invalid: list[str] = []
    conflicts: list[str] = []
    records = _first_per_key((x for path in paths for x in _located_records(path, invalid)), conflicts)
    if warn:
        _warn_first(invalid, "such lines")
        _warn_first(conflicts, "such records")
    return records


def read_results(path: Path, warn: bool = True) -> list[dict]:
    """Complete records of a results file, first record per (model, method, image). A torn last
    line is ignored silently; with ``warn``, invalid lines and records that contradict an earlier
    one get one line each kind on stderr."""
    path = Path(path)
    return _read([path], warn) if path.exists() else []


RESULTS = "results.jsonl"


def results_file(shard: tuple[int, int] | None) -> str:
    """A run's own results file in its folder: one per shard, so that shards run side by side."""
    return RESULTS if shard is None else f"results.shard-{shard[0]}-of-{shard[1]}.jsonl"


def result_files(folder: Path) -> list[Path]:
    """The results files of a folder: the unsharded one first, then the shards' in name order."""
    folder = Path(folder)
    return [p for p in [folder / RESULTS, *sorted(folder.glob("results.shard-*-of-*.jsonl"))] if p.exists()]


def read_folder_results(folder: Path, warn: bool = True) -> list[dict]:
    """Complete records of all of a folder's results files; first record per key wins (as :func:`read_results`)."""
    return _read(result_files(folder), warn)


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``"K/N"`` (the K-th of N contiguous blocks of the images) as ``(K, N)``."""
    if spec is None:
        return None
    try:
        k, n = (int(v) for v in spec.split("/"))
    except ValueError:
        k = n = 0
    if not 1 <= k <= n:
        raise InputError(f"bad --shard '{spec}': use K/N with 1 <= K <= N, e.g. 2/4 for the second of four parts")
    return k, n


def shard_bounds(count: int, shard: tuple[int, int] | None) -> tuple[int, int]:
    """Start and stop of the K-th of N contiguous, nearly equal blocks of ``count`` items (all without a shard)."""
    if shard is None:
        return 0, count
    k, n = shard
    return (k - 1) * count // n, k * count // n


def _busy(path: Path) -> InputError:
    part = "" if path.name == RESULTS else f" ({path.name})"
    return InputError(f"another `visionlens evaluate` is writing to {path.parent}{part}; let it finish or stop it "
                      "before re-running there, or use another --out")


def _still_named(f, path: Path) -> bool:
    """Whether the open file ``f`` is still the file at ``path`` (not removed, nor replaced)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(f.fileno())
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _lock(path: Path):
    """``path`` opened for appending and locked (where the OS has ``flock``). A run that stopped
    before its first result removes its file while it holds the lock, so a file locked only once
    it has lost its name is let go and ``path`` opened again: no run writes into a removed file."""
    for _ in range(100):
        path.parent.mkdir(parents=True, exist_ok=True)  # its folder, too, may just have been removed
        f = open(path, "a", encoding="utf-8")
        if fcntl is None:
            return f
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise _busy(path) from None
        if _still_named(f, path):
            return f
        f.close()
    raise _busy(path)


def _open_for_append(path: Path):
    """Open for appending, locked against a second ``evaluate`` on the same file, then cut a torn
    last line (a kill mid-write)."""
    f = _lock(path)
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        os.ftruncate(f.fileno(), end)
    return f


def _remove_new_files(out: Path, own: Path, created: list[Path]) -> None:
    """Undo a run that stopped before its first result: its files, and the folders it made (not
    the settings and folders that another shard's results file, even an empty one, relies on).
    Called while the run still holds the lock on ``own``, so that no run can have opened it since."""
    own.unlink(missing_ok=True)
    if result_files(out):
        return
    (out / SETTINGS).unlink(missing_ok=True)
    if out / "examples" in created:
        for png in (out / "examples").glob("*.png"):
            png.unlink(missing_ok=True)
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            pass


def _write(f, records: list[dict]) -> None:
    f.write("".join(json.dumps(strict(r), sort_keys=True, allow_nan=False) + "\n" for r in records))
    f.flush()
    os.fsync(f.fileno())


# --- what a folder's results were computed with ------------------------------------------------

SETTINGS = "settings.json"


def run_settings(data: dict, metrics: list[str], step: int | None, seed: int, gallery_size: int) -> dict:
    """The arguments that per-image values depend on, besides the model and method of each record.
    Batch size, device and the scoring copy change values only by float rounding, so they may
    differ between the runs that fill one folder; these may not."""
    source = ({"kind": "folder", "labels_sha256": data["labels_sha256"], "path": str(Path(data["name"]).resolve())}
              if data["kind"] == "folder" else {"kind": data["kind"], "name": data["name"]})
    return {"data": source, "metrics": list(metrics), "step": step, "seed": seed, "gallery_size": gallery_size}


def _recorded_settings(out: Path) -> dict | None:
    """The folder's settings; for a folder written before they were recorded, those of the command
    in its manifest (None if that cannot be read)."""
    path = out / SETTINGS
    if path.exists():
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = None
        if not (isinstance(recorded, dict) and isinstance(recorded.get("data"), dict)
                and isinstance(recorded.get("metrics"), list)):
            raise InputError(f"{path} is unreadable; restore it, or delete it to resume without checking that the "
                             "results there were computed with this command's settings")
        return recorded
    try:
        cmd = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["command"]
        return run_settings(parse_data(cmd["data"]), cmd["metrics"], cmd["step"], cmd["seed"],
                            cmd.get("gallery_size", 1000))
    except (OSError, ValueError, KeyError, TypeError, InputError):
        return None


def settle_settings(out: Path, settings: dict, has_results: bool) -> list[str]:
    """Check this command's settings against the results already in ``out`` and record them;
    returns the metrics to compute for new images: the folder's own list, so that every record of
    a folder has the same metrics (a command may report a subset of them)."""
    recorded = _recorded_settings(out) if has_results else None
    if recorded is not None:
        def compared(values, key):  # a folder is known by its labels.csv, wherever it is now
            value = values.get(key)
            return {k: v for k, v in value.items() if k != "path"} if key == "data" else value

        def shown(key, value):
            if key == "data":
                return value.get("name") or f"{value.get('path')} (labels.csv {value.get('labels_sha256', '?')[:12]})"
            return "the image width (RISE)" if key == "step" and value is None else str(value)

        differ = [f"--{k.replace('_', '-')} {shown(k, recorded.get(k))} (this command: {shown(k, settings[k])})"
                  for k in ("data", "step", "seed", "gallery_size") if compared(recorded, k) != compared(settings, k)]
        extra = [m for m in settings["metrics"] if m not in recorded["metrics"]]
        if extra:
            differ.append(f"--metrics {','.join(recorded['metrics'])} (this command adds {','.join(extra)})")
        if differ:
            raise InputError(f"{out} holds results computed with {'; '.join(differ)}: re-run with the folder's "
                             "settings, or use another --out")
        settings = {**settings, "metrics": recorded["metrics"]}
    if recorded != settings or not (out / SETTINGS).exists():
        write_json(settings, out / SETTINGS, indent=1)
    return settings["metrics"]


# --- metrics for one batch ------------------------------------------------------------------

def _num(v) -> float | None:
    """A metric value for a record: NaN or infinity (undefined) becomes None."""
    v = float(v)
    return v if math.isfinite(v) else None


BATCH_BYTES = 128 * 3 * 224 * 224 * 4
"""The most bytes of input images one batch holds (the default scoring batch of 224 px images,
about 74 MiB): a batch size asked for beyond it is capped, whatever the flag says."""


def image_bytes(model: ZooModel) -> int:
    """Bytes of one model input image (float32 RGB at the crop size)."""
    return 3 * model.preprocess.crop ** 2 * 4


def image_batch(batch_size: int, count: int, per_image: int) -> int:
    """How many images are loaded and explained together: ``batch_size``, but no more than there are
    images (``count``) or than fit in :data:`BATCH_BYTES` (``per_image`` bytes each)."""
    return max(1, min(batch_size, count, BATCH_BYTES // per_image))


def scoring_batch(batch_size: int, per_image: int) -> int:
    """How many perturbed images the metrics score per forward pass: eight per image of the batch
    (at least 64), but no more than fit in :data:`BATCH_BYTES` (``per_image`` bytes each)."""
    return max(1, min(max(batch_size * 8, 64), BATCH_BYTES // per_image))


def batch_metrics(model: ZooModel, explain_fn, names: list[str], b: dict, maps: torch.Tensor, target: torch.Tensor,
                  step: int | None, batch_size: int, confidence: M.Confidence | None = None,
                  correct: torch.Tensor | None = None, scorer: torch.nn.Module | None = None,
                  ends_cache: dict | None = None) -> dict[str, list]:
    """Every requested metric for one batch. ``explain_fn(x, target) -> maps`` (for the sanity
    check); ``confidence``: softmax probability (classifiers) or a spec 7.6 confidence;
    ``correct``: per image, whether the decision was right (for the localisation error);
    ``scorer``: the module the perturbation metrics' forward passes use (default the model);
    ``ends_cache``: a dict shared by the methods of one batch, so that the map-independent first
    and last points of the softmax deletion/insertion curves are scored once per target."""
    module, x = model.module, b["x"].to(model.device)
    scorer = module if scorer is None else scorer
    pre = model.preprocess
    out: dict[str, list] = {}
    kw = {"confidence": confidence, "batch_size": scoring_batch(batch_size, x[0].numel() * x.element_size())}

    def ends(mode: str):
        if ends_cache is None or not (confidence is None or type(confidence) is M.Confidence):
            return None  # other confidences may carry per-method state
        key = (mode, tuple(target.tolist()))
        if key not in ends_cache:
            ends_cache[key] = M.curve_ends(scorer, x, target, mode, **kw)
        return ends_cache[key]

    if "deletion" in names:
        out["deletion"] = M.deletion(scorer, x, maps, target, step=step, ends=ends("deletion"), **kw).tolist()
    if "insertion" in names:
        out["insertion"] = M.insertion(scorer, x, maps, target, step=step, ends=ends("insertion"), **kw).tolist()
    if "average-drop" in names or "increase-confidence" in names:
        drop, inc = M.drop_increase(scorer, x, maps, pre.mean, pre.std, target, **kw)
        out["average-drop"], out["increase-confidence"] = (100 * drop).tolist(), (100 * inc).tolist()
    if b["masks"] is not None:
        masks = b["masks"].to(maps.device)
        if "pointing-game" in names or PER_CLASS_METRIC in names:
            out["pointing-game"] = M.pointing_game(maps, masks).tolist()
        if "relevance-mass" in names:
            out["relevance-mass"] = M.relevance_mass(maps, masks).tolist()
        if "relevance-rank" in names:
            out["relevance-rank"] = M.relevance_rank(maps, masks).tolist()
    if b["boxes"] is not None:
        boxes = b["boxes"].to(maps.device)
        if "energy-pointing-game" in names:
            out["energy-pointing-game"] = M.energy_pointing_game(maps, boxes).tolist()
        if "loc-error" in names:
            correct = (target.cpu() == b["label"]) if correct is None else correct.cpu()
            out["loc-error"] = M.localisation_error(maps, boxes, correct).__getitem__(0).tolist()
    if "randomisation" in names:
        res = M.model_randomisation(module, explain_fn, x, target)
        out["randomisation"] = M.randomisation_score(res).tolist()
    return {k: [_num(v) for v in vals] for k, vals in out.items()}


# --- how a method explains a batch, per kind of model ---------------------------------------

class ClassifierExplainer:
    """Classifiers: explain the predicted class; softmax confidence."""

    def __init__(self, method):
        self.method = method

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> dict:
        exp = self.method(x)
        target = exp.logits.argmax(1).detach()
        return {"maps": exp.maps.detach(), "target": target, "predicted": target.cpu(), "confidence": None,
                "correct": None, "extra": {}, "explain_fn": lambda xx, t: self.method(xx, t).maps}


@dataclass
class EmbeddingReference:
    """The gallery for an embedding model: L2-normalised embeddings and labels of the first
    ``size`` training images of the synthetic world (the k-NN bank, and where references come from)."""

    bank: "MemoryBank"

    @classmethod
    def build(cls, model: ZooModel, spec: dict, size: int) -> "EmbeddingReference":
        from .data.bank import build_bank

        if spec["kind"] != "world":
            raise InputError("embedding models are evaluated on the synthetic world (--data world[:split])")
        return cls(build_bank(model, world_split="train", n=size).to(model.device))

    def nearest(self, module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(index, embedding) of each image's nearest gallery entry (cosine)."""
        from .core.vit import model_output

        with torch.no_grad():
            e = torch.nn.functional.normalize(model_output(module(x)).float(), dim=1)
        idx = (e @ self.bank.features.T).argmax(1)
        return idx, self.bank.features[idx]


class RetrievalExplainer:
    """Similarity methods: why is the image similar to its nearest gallery image? Confidence: the
    clamped cosine to that (clean) reference; "correct": the neighbour has the image's class."""

    def __init__(self, method, module, reference: EmbeddingReference):
        self.method, self.module, self.reference = method, module, reference

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> dict:
        idx, refs = self.reference.nearest(self.module, x)
        exp = self.method.explain(x, refs)
        predicted = self.reference.bank.labels[idx].cpu()
        return {"maps": exp.maps.detach(), "target": torch.arange(len(x), device=x.device),
                "predicted": predicted, "confidence": M.SimilarityConfidence(refs), "correct": predicted == labels,
                "extra": {"reference": idx.cpu()}, "explain_fn": lambda xx, t: self.method.explain(xx, refs).maps}


class KNNExplainer:
    """Class-free flow methods on a self-supervised model (DAAM with the bank, rollout): explain
    the k-NN-predicted class; confidence: its k-NN vote mass over the gallery."""

    def __init__(self, method, module, reference: EmbeddingReference):
        self.method, self.module = method, module
        self.confidence = M.KNNConfidence(reference.bank.features, reference.bank.labels)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor) -> dict:
        from .core.vit import model_output

        with torch.no_grad():
            target = self.confidence.predict(model_output(self.module(x)))
        exp = self.method(x, target)
        return {"maps": exp.maps.detach(), "target": target, "predicted": target.cpu(), "confidence": self.confidence,
                "correct": None, "extra": {}, "explain_fn": lambda xx, t: self.method(xx, t).maps}


def make_explainer(name: str, model: ZooModel, reference: EmbeddingReference):
    """The explainer for method ``name`` (``METHOD@LAYER`` allowed) on an embedding model."""
    from .methods import METHODS, SIMILARITY_METHODS
    from .pipeline import make_method, parse_method

    base, layer = parse_method(name)
    if base in SIMILARITY_METHODS:
        cls = SIMILARITY_METHODS[base]
        return RetrievalExplainer(cls(model.module, layer if layer is not None else model.layer), model.module, reference)
    if not getattr(METHODS[base], "uses_layer", True):
        return KNNExplainer(make_method(name, model, bank=reference.bank), model.module, reference)
    raise InputError(f"'{base}' needs class logits; on embedding model '{model.name}' use "
                     f"{', '.join(SIMILARITY_METHODS)} (similarity) or daam, rollout (k-NN)")


# --- the run --------------------------------------------------------------------------------

def _versions() -> dict:
    """Versions of the packages the results depend on (optional ones only when installed)."""
    return versions()


def _checked_numbers(n, batch_size, step, gallery_size, examples) -> tuple:
    """The numeric arguments as integers, each checked (one :class:`InputError` line naming the flag)."""
    if n is not None:
        n = check_number("--n", n, minimum=1, integer=True)
    batch_size = check_number("--batch-size", batch_size, minimum=1, integer=True)
    if step is not None:
        step = check_number("--step", step, integer=True)
        if step < 1:
            raise InputError(f"--step must be at least 1 pixel (got {step}); leave it out for RISE's step, the image width")
    gallery_size = check_number("--gallery-size", gallery_size, minimum=1, integer=True)
    examples = check_number("examples", examples, minimum=0, integer=True)
    return n, batch_size, step, gallery_size, examples


def _checked_choices(models: list[str], methods: list[str], metrics: list[str] | None,
                     data: str) -> tuple[list[str], dict]:
    """The metrics to report and the parsed data, after checking models, methods and metrics against them."""
    from .methods import METHODS, SIMILARITY_METHODS
    from .pipeline import parse_method

    for m in models:
        if m not in ZOO:
            raise InputError(f"unknown model '{m}'; choose from: {', '.join(ZOO)}")
    known = list(METHODS) + [m for m in SIMILARITY_METHODS if m not in METHODS]
    for m in methods:
        if parse_method(m)[0] not in known:
            raise InputError(f"unknown method '{m}'; choose from: {', '.join(known)} (sfam: embedding models only)")
    names = list(DEFAULT_METRICS if not metrics else (list(M.METRICS) if metrics == ["all"] else metrics))
    for m in names:
        M.get_metric(m)
    spec = parse_data(data)
    available = ground_truth(spec)
    if metrics and metrics != ["all"]:  # asked for by name: say why one cannot be computed here
        for m in names:
            lacking = [need for need in M.METRICS[m].needs if need not in available]
            if lacking:
                raise InputError(f"metric '{m}' needs object {lacking[0]}, which --data {data} does not have "
                                 "(--data world has masks and boxes)")
    names = [m for m in names if set(M.METRICS[m].needs) <= available]
    top = max(label for _, _, label in spec["items"]) if spec["kind"] == "folder" else -1
    for m in models:
        world_model = ZOO[m].task.startswith("world")
        if (spec["kind"] == "world") != world_model:
            raise InputError(f"model '{m}' does not fit --data {data}: world models take world data, ImageNet models images")
        if ZOO[m].task == "imagenet" and top >= 1000:
            raise InputError(f"bad --data '{data}': class_index {top} in labels.csv is not an ImageNet-1k class "
                             f"(0-999) of model '{m}'")
    return names, spec


@dataclass
class _Run:
    """What the models of one command share: where results go and which images are this run's."""

    out: Path
    f: object                        # the locked results file
    spec: dict
    mine: list                       # (image id, source, label) of this run's images
    offset: int                      # index of mine[0] among the command's images
    metrics: list[str]               # computed for every new record (the folder's list)
    done: set
    step: int | None
    batch_size: int
    examples: int
    device: str | None
    progress: bool
    gallery_size: int
    fast_scoring: bool
    compile: bool
    timings: dict
    scoring: dict
    batches: dict


def _explainers(run: _Run, model: ZooModel, methods: list[str]) -> dict:
    """The explainer of each method not yet marked skipped for ``model``; those that cannot be made
    are recorded as skipped."""
    from .pipeline import make_method

    todo = [mm for mm in methods if (model.name, mm, "*") not in run.done]
    reference = None
    if ZOO[model.name].task.endswith("embedding") and todo:
        reference = EmbeddingReference.build(model, run.spec, run.gallery_size)
    live = {}
    for mm in todo:
        try:
            live[mm] = (make_explainer(mm, model, reference) if reference is not None
                        else ClassifierExplainer(make_method(mm, model)))
            if run.compile and hasattr(getattr(live[mm], "method", None), "compile"):
                live[mm].method.compile = True
        except Exception as err:  # noqa: BLE001 - reported as skipped, not a crash
            _write(run.f, [_skipped(model.name, mm, err)])
    return live


def _skipped(model: str, method: str, err: Exception) -> dict:
    return {"model": model, "method": method, "image": "*", "skipped": f"{type(err).__name__}: {err}"}


def _records(model: str, method: str, b: dict, res: dict, vals: dict, done: set) -> list[dict]:
    """The new per-image records of one method on one batch."""
    recs = []
    for j, image in enumerate(b["ids"]):
        if (model, method, image) in done:
            continue
        recs.append({"model": model, "method": method, "image": image, "label": int(b["label"][j]),
                     "predicted": int(res["predicted"][j]), **{k: int(v[j]) for k, v in res["extra"].items()},
                     "metrics": {k: v[j] for k, v in vals.items()}})
    return recs


def _evaluate_model(run: _Run, model_name: str, methods: list[str]) -> None:
    """Every method not done yet on ``model_name``, batch by batch, appended to the results file."""
    model = load_model(model_name, device=run.device)
    live = _explainers(run, model, methods)
    per_image = image_bytes(model)
    batch = image_batch(run.batch_size, len(run.mine), per_image)
    run.batches[model_name] = {"images": batch, "scoring": scoring_batch(batch, per_image)}
    bar = Progress(len(run.mine) * max(len(live), 1), f"{model_name}", enabled=run.progress)
    scorer = None
    for start in range(0, len(run.mine), batch):
        chunk = run.mine[start:start + batch]
        missing = {mm: [i for i, _, _ in chunk if (model_name, mm, i) not in run.done] for mm in live}
        if not any(missing.values()):
            bar.skip(len(chunk) * len(live))
            continue
        b = _load_batch(run.spec, chunk, model)
        ends_cache: dict = {}
        if scorer is None:
            scorer, run.scoring[model_name] = (
                checked_inference_copy(model.module, b["x"].to(model.device),
                                       compile_batch=scoring_batch(batch, per_image) if run.compile else None)
                if run.fast_scoring else (model.module, "model itself"))
        for mm, explainer in list(live.items()):
            if not missing[mm]:
                bar.skip(len(chunk))
                continue
            t0 = time.perf_counter()
            try:
                res = explainer(b["x"].to(model.device), b["label"])
                maps = res["maps"]
                vals = batch_metrics(model, res["explain_fn"], run.metrics, b, maps, res["target"], run.step, batch,
                                     res["confidence"], res["correct"], scorer, ends_cache)
            except Exception as err:  # noqa: BLE001
                _write(run.f, [_skipped(model_name, mm, err)])
                del live[mm]
                bar.update(len(run.mine) - start)
                continue
            key = f"{model_name}/{mm}"
            run.timings[key] = run.timings.get(key, 0.0) + time.perf_counter() - t0
            if run.offset + start < run.examples:  # overlays of the first images of the command
                _save_examples(run.out / "examples", model_name, mm, b, maps, run.offset + start, run.examples)
            recs = _records(model_name, mm, b, res, vals, run.done)
            _write(run.f, recs)
            run.done.update((model_name, mm, r["image"]) for r in recs)
            bar.update(len(chunk))


def evaluate(models: list[str], methods: list[str], data: str = "world:test", n: int | None = 100, batch_size: int = 16,
             device: str | None = "cpu", out: str | Path = "visionlens-eval", metrics: list[str] | None = None,
             step: int | None = None, seed: int = 0, examples: int = 4, progress: bool = True,
             gallery_size: int = 1000, fast_scoring: bool = True, compile: bool = False,
             shard: str | tuple[int, int] | None = None) -> dict:
    """Run (or resume) the evaluation and write the report card; returns the report dict.

    ``shard="K/N"`` computes only the K-th of N contiguous blocks of the first ``n`` images, into
    the folder's own results file for that shard, so that the N parts can run at the same time
    (processes, or machines whose files are then copied into one folder). The report card always
    covers all first ``n`` images done so far, in every results file of the folder.

    Embedding models (spec 7.6) are scored through a confidence instead of a softmax: methods for
    similarity (SFAM, Grad-CAM and Relevance-CAM on the similarity) explain each image's
    similarity to its nearest neighbour in a gallery (the first ``gallery_size`` training images),
    scored by the clamped cosine to that reference; class-free flow methods (DAAM with a k-NN bank,
    rollout) use the k-NN vote mass of the predicted class over the same gallery.

    With ``fast_scoring`` the forward passes of deletion, insertion and Average Drop run on a
    BatchNorm-folded, channels-last copy of the model (:mod:`visionlens.core.inference`), used only
    if it matches the model on the first batch; the manifest says which one scored. ``compile``
    also compiles that copy (``torch.compile``, one fixed batch size) for the metrics and for the
    masked passes of methods that take it (Score-CAM): a minute or so of compiling per model,
    then about 1.4-1.5x faster scoring on this project's CPU (docs/benchmarks.md)."""
    n, batch_size, step, gallery_size, examples = _checked_numbers(n, batch_size, step, gallery_size, examples)
    names, spec = _checked_choices(models, methods, metrics, data)
    if shard is not None:
        shard = parse_shard(shard if isinstance(shard, str) else f"{shard[0]}/{shard[1]}")
    out = Path(out)
    path = out / results_file(shard)
    created = [d for d in (out, out / "examples") if not d.exists()]
    items = _items(spec, n)
    offset, stop = shard_bounds(len(items), shard)
    torch.manual_seed(seed)
    t_start = time.perf_counter()
    with _open_for_append(path) as f:
        fresh = os.fstat(f.fileno()).st_size == 0
        try:
            (out / "examples").mkdir(exist_ok=True)
            done = {(r["model"], r["method"], r["image"]) for r in read_folder_results(out)}
            computed = settle_settings(out, run_settings(spec, names, step, seed, gallery_size), bool(done))
            run = _Run(out, f, spec, items[offset:stop], offset, computed, done, step, batch_size, examples, device,
                       progress, gallery_size, fast_scoring, compile, {}, {}, {})
            for model_name in models:
                _evaluate_model(run, model_name, methods)
        except BaseException:
            if fresh and os.fstat(f.fileno()).st_size == 0:  # stopped before its first result: leave nothing behind
                _remove_new_files(out, path, created)        # (still locked: no other run has the file open)
            raise
    # the report card covers the images of this command, all shards: a folder that also holds results
    # for more images (an earlier, larger --n) reports the first --n, e.g. a long run's progress so far
    wanted = {i for i, _, _ in items}
    report = aggregate([r for r in read_folder_results(out, warn=False) if r["image"] == "*" or r["image"] in wanted],
                       models, methods, names)
    manifest = {"command": {"models": models, "methods": methods, "data": data, "n": n, "batch_size": batch_size,
                            "device": str(device), "metrics": names, "step": step, "seed": seed,
                            "gallery_size": gallery_size, "fast_scoring": fast_scoring,
                            "compile": compile, "shard": None if shard is None else f"{shard[0]}/{shard[1]}"},
                "scoring": run.scoring, "batches": run.batches,
                "versions": _versions(), "device": str(resolve_device(device)),
                "seconds_this_run": round(time.perf_counter() - t_start, 2),
                "seconds_per_model_method_this_run": {k: round(v, 2) for k, v in run.timings.items()},
                "metrics": {k: {"direction": v.direction, "category": v.category, "description": v.description}
                            for k, v in M.METRICS.items() if k in names}}
    write_report_card(out, report, manifest)
    return report


def _save_examples(folder: Path, model: str, method: str, b: dict, maps: torch.Tensor, first: int, k: int) -> None:
    """Overlays of the batch's images whose index among the command's images (``first`` + j) is below ``k``."""
    for j in range(min(k - first, len(b["ids"]))):
        img = Image.fromarray((b["raw"][j].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8))
        name = f"{model}.{method}.{first + j}.png".replace("/", "_").replace("@", "_at_")
        ov = overlay(img, maps[j].float().cpu().numpy())
        save_atomic(lambda t, o=ov: o.save(t, format="PNG"), folder / name)
        view = folder / f"{model}.{first + j}.png"
        if not view.exists():
            save_atomic(lambda t, i=img: i.save(t, format="PNG"), view)


def ci95(values: np.ndarray) -> float:
    """Half-width of the 95 % confidence interval of the mean (normal approximation, 1.96 standard
    errors); NaN for fewer than two values."""
    return 1.96 * values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan")


def _finite(v) -> bool:
    """Whether a recorded metric value counts (None: undefined; NaN/infinity from older files likewise)."""
    return v is not None and math.isfinite(v)


def aggregate(records: list[dict], models: list[str], methods: list[str], names: list[str]) -> dict:
    """Mean, 95 % CI (normal approximation, 1.96 standard errors) and n per model x method x metric."""
    rows, skipped = [], []
    for model in models:
        for method in methods:
            recs = [r for r in records if r["model"] == model and r["method"] == method]
            skip = [r for r in recs if r.get("image") == "*"]
            if skip:
                skipped.append({"model": model, "method": method, "reason": skip[0]["skipped"]})
                continue
            for metric in names:
                if metric == PER_CLASS_METRIC:  # per class first, then over classes
                    hits: dict[int, list[float]] = {}
                    for r in recs:
                        if _finite(r["metrics"].get("pointing-game")):
                            hits.setdefault(r["label"], []).append(r["metrics"]["pointing-game"])
                    vals = np.array([np.mean(v) for v in hits.values()], float)
                else:
                    vals = np.array([r["metrics"][metric] for r in recs if _finite(r["metrics"].get(metric))], float)
                if not len(vals):
                    continue
                rows.append({"model": model, "method": method, "metric": metric, "mean": float(vals.mean()),
                             "ci95": float(ci95(vals)), "n": int(len(vals)), "direction": M.METRICS[metric].direction})
    return {"rows": rows, "skipped": skipped}


def write_report_card(out: Path, report: dict, manifest: dict) -> None:
    """``report.csv``, ``report.json``, ``manifest.json`` (strict JSON) and ``index.html`` in ``out``."""
    from .viz.report_card import report_card_html

    buf = io.StringIO()
    w = csv.DictWriter(buf, ["model", "method", "metric", "mean", "ci95", "n", "direction"], lineterminator="\n")
    w.writeheader()
    w.writerows(report["rows"])
    save_atomic(lambda t: Path(t).write_text(buf.getvalue(), encoding="utf-8"), out / "report.csv")
    write_json(report, out / "report.json", indent=1)  # strict JSON: an undefined CI (n = 1) is null
    write_json(manifest, out / "manifest.json", indent=1)
    text = report_card_html(report, manifest, sorted(p.name for p in (out / "examples").glob("*.png")))
    save_atomic(lambda t: Path(t).write_text(text, encoding="utf-8"), out / "index.html")


def markdown_table(report: dict, model: str) -> str:
    """The method x metric table of one model as Markdown (mean ± 95 % CI). A cell over fewer images
    than the table's largest n (e.g. maps that became constant under randomisation, where the
    correlation is undefined) says its own n; the per-class pointing game says its number of classes."""
    rows = [r for r in report["rows"] if r["model"] == model]
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], r["metric"]): r for r in rows}
    n_max = max((r["n"] for r in rows if r["metric"] != PER_CLASS_METRIC), default=0)

    def shown(v: dict | None) -> str:
        if v is None:
            return ""
        text = f"{v['mean']:.3f}" + (f" ± {v['ci95']:.3f}" if _finite(v["ci95"]) else "")
        if v["metric"] == PER_CLASS_METRIC:
            return f"{text} ({v['n']} classes)"
        return text + (f" (n = {v['n']})" if v["n"] < n_max else "")

    head = "| method | " + " | ".join(f"{m} ({'↑' if M.METRICS[m].higher_is_better else '↓'})" for m in metrics) + " |"
    lines = [head, "|---" * (len(metrics) + 1) + "|"]
    for me in methods:
        lines.append(f"| `{me}` | " + " | ".join(shown(cell.get((me, m))) for m in metrics) + " |")
    return "\n".join(lines)


def iter_records(path: Path) -> Iterator[dict]:
    yield from read_results(Path(path))
