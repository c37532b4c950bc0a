"""The results of an evaluation folder: ``results.jsonl`` (one per shard), its lock, resuming, and
``settings.json`` (what the values were computed with).

Per-image results are appended to ``results.jsonl`` (one strict-JSON object per (model, method,
image), flushed and fsynced per batch; a folder's image is known by its path relative to the
folder). A re-run with the same ``--out`` skips the keys already there, so a crashed or killed run
resumes without losing or duplicating results; a partially written last line is cut off before
appending, and a line that is not a record (or a record that contradicts an earlier one) is
ignored with a one-line warning. One run at a time writes a results file (``flock``); a run that
stops before its first result removes what it made, while it still holds the lock.
``settings.json`` records what the values depend on (data, step, seed, metrics); a re-run with
other values is refused rather than mixing incomparable results.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # Windows: results files are not locked
    fcntl = None

from ..errors import InputError
from ..outputs import check_out_dir, recorded_run
from ..io import strict, write_json
from ..metrics.faithfulness import INSERTION_START
from .data import parse_data

RESULTS = "results.jsonl"
SETTINGS = "settings.json"


# --- reading --------------------------------------------------------------------------------

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


def iter_records(path: Path) -> Iterator[dict]:
    yield from read_results(Path(path))


def results_file(shard: tuple[int, int] | None) -> str:
    """A run's own results file in its folder: one per shard, so that shards run side by side."""
    return RESULTS if shard is None else f"results.shard-{shard[0]}-of-{shard[1]}.jsonl"


def result_files(folder: Path) -> list[Path]:
    """The results files of a folder: the unsharded one first, then the shards' in name order."""
    folder = Path(folder)
    return [p for p in [folder / RESULTS, *sorted(folder.glob("results.shard-*-of-*.jsonl"))] if p.exists()]


def check_folder(out: Path, shard: tuple[int, int] | None) -> None:
    """Refuse, before any work, an ``out`` that cannot be written, or one that is not an evaluation
    folder (no settings, manifest or results of an earlier run) and holds a file of a name the run
    writes."""
    planned = [results_file(shard), SETTINGS, "manifest.json", "report.csv", "report.json", "index.html", "examples"]
    own = (recorded_run(out, SETTINGS, planned, keys=("data", "metrics"))
           | recorded_run(out, "manifest.json", planned, keys=("command",)))
    records = [p for p in result_files(out) if _holds_records(p)]  # shard files copied in without their settings
    check_out_dir(out, planned, own=own or (set(planned) if records else set()))


def _holds_records(path: Path) -> bool:
    """Whether a results file is one an evaluation wrote: empty, its first line a record of one
    (model, method and image), or only a torn record (a run stopped while writing it); a user's file
    of that name is not appended to."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
    except (OSError, ValueError):
        return False
    if not first.strip():
        return True
    try:
        record = json.loads(first)
    except ValueError:
        return first.startswith("{") and not first.endswith("\n")
    return isinstance(record, dict) and {"model", "method"} <= record.keys()


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


# --- writing --------------------------------------------------------------------------------

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


def open_for_append(path: Path):
    """Open for appending, locked against a second ``evaluate`` on the same file, then cut a torn
    last line (a kill mid-write)."""
    f = _lock(path)
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        os.ftruncate(f.fileno(), end)
    return f


def remove_new_files(out: Path, own: Path, created: list[Path]) -> None:
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


def write_records(f, records: list[dict]) -> None:
    """Append ``records`` (strict JSON, one a line), flushed and fsynced."""
    f.write("".join(json.dumps(strict(r), sort_keys=True, allow_nan=False) + "\n" for r in records))
    f.flush()
    os.fsync(f.fileno())


def skipped_record(model: str, method: str, err: Exception) -> dict:
    """The record of a method that cannot run on ``model`` (image ``*``), with the reason."""
    return {"model": model, "method": method, "image": "*", "skipped": f"{type(err).__name__}: {err}"}


def image_records(model: str, method: str, ids: list[str], labels, predicted, extra: dict, values: dict,
                  done: set, curves: dict | None = None) -> list[dict]:
    """The records of the images ``ids`` not ``done`` yet: label, prediction, ``extra`` per-image
    integers (e.g. the reference's index), metric ``values`` (lists by metric) and the
    deletion/insertion ``curves`` (``{mode: (B, n + 1) tensor}``, rounded to 4 decimals)."""
    recs = []
    for j, image in enumerate(ids):
        if (model, method, image) in done:
            continue
        rec = {"model": model, "method": method, "image": image, "label": int(labels[j]),
               "predicted": int(predicted[j]), **{k: int(v[j]) for k, v in extra.items()},
               "metrics": {k: v[j] for k, v in values.items()}}
        if curves:
            rec["curves"] = {mode: [round(float(v), 4) for v in c[j]] for mode, c in curves.items()}
        recs.append(rec)
    return recs


# --- what a folder's results were computed with ------------------------------------------------

def data_source(data: dict) -> dict:
    """What results depend on in the data: its kind and content (a folder's labels.csv, an
    ImageFolder's listing, a Hugging Face dataset's fingerprint and columns); ``path`` only says where."""
    if data["kind"] == "folder":
        return {"kind": "folder", "labels_sha256": data["labels_sha256"], "path": str(Path(data["name"]).resolve())}
    if "identity" in data:
        where = {"path": str(Path(data["path"]).resolve())} if "path" in data else {}
        return {"kind": data["kind"], **data["identity"], **where}
    return {"kind": data["kind"], "name": data["name"]}


def run_settings(data: dict, metrics: list[str], step: int | None, seed: int, gallery_size: int,
                 models: dict | None = None, insertion_start: str | None = INSERTION_START) -> dict:
    """The arguments that per-image values depend on, besides the model and method of each record.
    Batch size, device and the scoring copy change values only by float rounding, so they may
    differ between the runs that fill one folder; these may not. ``models``: per model name, what
    it was loaded from (spec, weights, preprocessing). ``insertion_start``: the blurred image that
    insertion starts from (``None``: a folder of an earlier visionlens, a sampled Gaussian)."""
    settings = {"data": data_source(data), "metrics": list(metrics), "step": step, "seed": seed,
                "gallery_size": gallery_size, "insertion_start": insertion_start}
    return settings if models is None else {**settings, "models": models}


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
                            cmd.get("gallery_size", 1000), insertion_start=None)
    except (OSError, ValueError, KeyError, TypeError, InputError):
        return None


def _compared(values: dict, key: str):
    """A setting as compared: a folder is known by its content, wherever it is now."""
    value = values.get(key)
    return {k: v for k, v in value.items() if k != "path"} if key == "data" else value


def _shown(key: str, value) -> str:
    if key == "data":
        if value.get("kind") == "folder":
            return value.get("name") or f"{value.get('path')} (labels.csv {value.get('labels_sha256', '?')[:12]})"
        split = f", split {value['split']}" if value.get("split") else ""
        return value.get("name") or f"{value.get('path')} ({value.get('kind')}{split})"
    return "the image width (RISE)" if key == "step" and value is None else str(value)


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _model_differences(recorded: dict, settings: dict) -> list[str]:
    """The models of this command that have results in the folder from another source (spec, weights
    or preprocessing): the first field that differs, per model."""
    before, now = recorded.get("models") or {}, settings.get("models") or {}
    differ = []
    for name in now:
        if name in before and before[name] != now[name]:
            key = next(k for k in {**before[name], **now[name]} if before[name].get(k) != now[name].get(k))
            differ.append(f"--models {name} with {key} {_short(before[name].get(key))} "
                          f"(this command: {_short(now[name].get(key))})")
    return differ


def _differences(recorded: dict, settings: dict) -> list[str]:
    """The flags of this command whose values differ from the folder's (or add metrics to it)."""
    differ = [f"--{k.replace('_', '-')} {_shown(k, recorded.get(k))} (this command: {_shown(k, settings[k])})"
              for k in ("data", "step", "seed", "gallery_size") if _compared(recorded, k) != _compared(settings, k)]
    extra = [m for m in settings["metrics"] if m not in recorded["metrics"]]
    if extra:
        differ.append(f"--metrics {','.join(recorded['metrics'])} (this command adds {','.join(extra)})")
    return differ + _model_differences(recorded, settings)


def settle_settings(out: Path, settings: dict, has_results: bool) -> list[str]:
    """Check this command's settings against the results already in ``out`` and record them;
    returns the metrics to compute for new images: the folder's own list, so that every record of
    a folder has the same metrics (a command may report a subset of them)."""
    recorded = _recorded_settings(out) if has_results else None
    if recorded is not None:
        if "insertion" in recorded["metrics"] and recorded.get("insertion_start") != settings.get("insertion_start"):
            raise InputError(f"{out} holds insertion values of an earlier visionlens, which started from a sampled "
                             "Gaussian blur, not RISE's kernel: use another --out to compute them again")
        differ = _differences(recorded, settings)
        if differ:
            raise InputError(f"{out} holds results computed with {'; '.join(differ)}: re-run with the folder's "
                             "settings, or use another --out")
        settings = {**settings, "metrics": recorded["metrics"]}
        if "models" in settings or "models" in recorded:  # models of earlier commands stay recorded
            settings["models"] = {**(recorded.get("models") or {}), **(settings.get("models") or {})}
    if recorded != settings or not (out / SETTINGS).exists():
        write_json(settings, out / SETTINGS, indent=1)
    return settings["metrics"]
