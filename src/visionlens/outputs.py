"""Output files of a run: names that cannot collide, and a folder that is safe to write into.

Each input gets one stem, stable for the same command line: its file name without the image
suffix; where inputs share that, the file name with its suffix; where they still do, as many of
its parent folders as tell them apart (joined by ``__``). Any character outside ASCII letters,
digits and ``. - _ @ +`` becomes ``_``; a stem over 100 characters is cut and gets a hash of the
whole. Names are told apart without regard to letter case (one file on macOS and Windows disks).
Where two inputs would still share an output name, or an output would land on an input file, the
stems involved get a short hash of the input's full path. A run never replaces a file it did not write: into a folder that
already holds files, it replaces only the outputs listed in that folder's own ``summary.json``
(an earlier run's) and refuses any other existing file. A one-file output that exists is
refused unless the user asks for it to be replaced (``--force``). A run writes into a hidden
folder inside its output folder (:func:`staged_out_dir`) and moves its files out of it only when
it completes, so an interrupted or failed run leaves the folder as it found it; that move is not
interrupted by Ctrl-C (which then takes effect after it), and two runs cannot write into one
folder at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from .errors import InputError, display

STAGE_PREFIX = ".visionlens-partial-"  # the hidden folder of a run in progress (never an input)
LAST = ("summary.json", "index.html")    # moved into place after every file they list
MAX_STEM = 100                           # longer stems are cut and get a hash of the whole
_UNSAFE = re.compile(r"[^\w.\-@+]", re.ASCII)


def safe_name(text: str) -> str:
    """``text`` with every character outside ASCII letters, digits and ``. - _ @ +`` as ``_``."""
    name = _UNSAFE.sub("_", text).strip(".")
    return name or "image"


def _shortened(stem: str) -> str:
    """``stem`` itself up to ``MAX_STEM`` characters, else its start and a hash of all of it (a file
    name has at most 255 bytes, and outputs add a method and a suffix to the stem)."""
    if len(stem) <= MAX_STEM:
        return stem
    return f"{stem[:MAX_STEM - 9]}-{hashlib.sha1(stem.encode()).hexdigest()[:8]}"


def _label(parts: tuple[str, ...], level: int) -> str:
    """Level 0: the file name without suffix; 1: with it; 2 and up: with ``level - 1`` parent folders."""
    name = parts[-1]
    if level == 0:
        return _shortened(safe_name(Path(name).stem))
    return _shortened("__".join(safe_name(x) for x in (*parts[max(0, len(parts) - level):-1], name)))


def _shortest_labels(paths: Sequence[Path]) -> list[str]:
    """Each path's shortest label (see the module docstring) that no other path shares, letter case
    aside (one file on case-insensitive disks)."""
    parts = [Path(os.path.abspath(p)).parts for p in paths]
    levels = [0] * len(paths)
    while True:
        labels = [_label(p, lv) for p, lv in zip(parts, levels)]
        counts = Counter(lab.casefold() for lab in labels)
        shared = [i for i, lab in enumerate(labels) if counts[lab.casefold()] > 1 and levels[i] < len(parts[i])]
        if not shared:
            return labels
        for i in shared:
            levels[i] += 1


def _hashed(stem: str, path: Path) -> str:
    digest = hashlib.sha1(os.path.abspath(path).encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{stem}-{digest}"


def unique_stems(paths: Sequence[str | Path], files_of: Callable[[str], Iterable[str]] = lambda s: [s],
                 taken: Iterable[Path] = (), out: Path | None = None) -> list[str]:
    """One stem per input path (see the module docstring). ``files_of(stem)`` gives the file names
    a stem produces; ``taken`` are paths (inputs) that no output in ``out`` may land on."""
    paths = [Path(p) for p in paths]
    stems = _shortest_labels(paths)
    blocked = {os.path.abspath(t) for t in taken}
    for _ in range(3):  # a hash separates any remaining clash (a second round only for hash-on-hash)
        owners: dict[str, list[int]] = {}  # by case-folded name: one file on case-insensitive disks
        for i, stem in enumerate(stems):
            for name in files_of(stem):
                owners.setdefault(name.casefold(), []).append(i)
        clash = {i for idx in owners.values() if len(set(idx)) > 1 for i in idx}
        if out is not None:
            clash |= {i for i, stem in enumerate(stems) for name in files_of(stem)
                      if os.path.abspath(out / name) in blocked}
        if not clash:
            return stems
        stems = [_hashed(s, paths[i]) if i in clash else s for i, s in enumerate(stems)]
    raise InputError("could not give every input its own output names; are some inputs given twice?")


OUTPUT_KEYS = {"view", "overlays", "maps", "flows", "gifs", "files", "raw", "region",
               "query_view", "match_view", "query_overlays", "match_overlays"}


def file_names(files: dict) -> list[str]:
    """The file names of one item's outputs, ``{kind: name or {method: name}}``, as one list."""
    return [v for value in files.values() for v in (value.values() if isinstance(value, dict) else [value])]


def own_files(out: Path) -> set[str]:
    """Names an earlier run listed in ``out/summary.json`` (with the summary and page themselves).
    A ``summary.json`` is a run's only when it records visionlens's version (every run's summary
    has, since 0.1.0): any other JSON of that name is the user's, whatever it lists, and so is the
    page beside it."""
    try:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(summary, dict):
        return set()
    names: set[str] = set()

    def collect(value, inside: bool):
        if isinstance(value, str) and inside:
            names.add(value)
        elif isinstance(value, dict):
            for k, v in value.items():
                collect(v, inside or k in OUTPUT_KEYS)
        elif isinstance(value, list):
            for v in value:
                collect(v, inside)

    versions = summary.get("versions")
    if not (isinstance(versions, dict) and "visionlens" in versions):
        return set()
    collect(summary, False)
    return names | {"summary.json", "index.html"}


def recorded_run(out: Path, record: str, planned: Iterable[str], keys: Iterable[str] = (),
                 marks: dict | None = None) -> set[str]:
    """All of ``planned`` when ``out/record`` (the record an earlier run of the command wrote, e.g.
    its settings) is a JSON object with all of ``keys`` and the values of ``marks`` (``{"info":
    {"description": ...}}``: those entries of the nested objects), else nothing: the ``own`` of
    :func:`check_out_dir` for commands that rewrite a whole folder of their own."""
    try:
        recorded = json.loads((Path(out) / record).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    ok = isinstance(recorded, dict) and all(k in recorded for k in keys) and _has_marks(recorded, marks or {})
    return set(planned) if ok else set()


def _has_marks(recorded, marks: dict) -> bool:
    """Whether ``recorded`` holds every entry of ``marks`` (nested dicts compared entry by entry)."""
    for key, want in marks.items():
        got = recorded.get(key) if isinstance(recorded, dict) else None
        if not (_has_marks(got, want) if isinstance(want, dict) else got == want):
            return False
    return True


def _check_writable(out: Path, folders: Iterable[Path], flag: str) -> None:
    """The first of ``folders`` that exists must be a writable folder (it will hold ``out``)."""
    for folder in folders:
        if folder.exists():
            if not folder.is_dir():
                raise InputError(f"{flag} {display(out)}: {display(folder)} is a file, not a folder; "
                                 f"choose another {flag}")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise InputError(f"{flag} {display(out)}: {display(folder)} is not writable; choose another {flag}")
            err = _write_error(folder)  # the permission bits say yes to root, where a write still fails (/proc)
            if err is not None:
                raise InputError(f"{flag} {display(out)}: cannot write in {display(folder)} "
                                 f"({err.strerror or type(err).__name__}); choose another {flag}")
            return


def _write_error(folder: Path) -> OSError | None:
    """Why a file cannot be written in ``folder`` (a probe file is made and removed), or None."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".visionlens-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return err
    return None


def check_out_file(dest: str | Path, force: bool = False, flag: str = "--out") -> None:
    """Refuse, in one line and before any work, a one-file output ``dest`` that is a folder, whose
    folder cannot be written, or that already exists (unless ``force``: the user asked to replace
    it)."""
    dest = Path(dest)
    if dest.is_dir():
        raise InputError(f"{flag} {display(dest)} is a folder; give a file name")
    _check_writable(dest, dest.parents, flag)
    if dest.exists() and not force:
        raise InputError(f"{display(dest)} already exists; choose another {flag}, or add --force to replace it")


def same_file(a, b) -> bool:
    """Whether paths ``a`` and ``b`` name one file: ``os.path.samefile`` when both exist, else equal
    resolved paths."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError, ValueError):
        return False


def check_not_input(outputs: Iterable[tuple[str, object]], inputs: Iterable[tuple[str, object]]) -> None:
    """Refuse, before any work and whatever ``--force`` says, an output (``(flag, path)``) that is
    the same file as an input (``(flag, path)``; a ``None`` path is left out)."""
    inputs = [(flag, path) for flag, path in inputs if path]
    for out_flag, dest in outputs:
        for in_flag, source in inputs if dest else ():
            if same_file(dest, source):
                raise InputError(f"{out_flag} {display(dest)} is the {in_flag} input too: writing it would destroy "
                                 "the input; give the output another name")


def check_out_dir(out: Path, planned: Iterable[str], own: set[str] | None = None) -> None:
    """Refuse, in one line and before any work, an ``out`` that cannot be written or that holds a
    file of a planned name that no earlier run of this kind wrote (``own``: the names an earlier run
    wrote; by default those that ``out/summary.json`` lists)."""
    out = Path(out)
    _check_writable(out, (out, *out.parents), "--out")
    if not out.is_dir():
        return
    own = own_files(out) if own is None else own
    for name in planned:
        if (out / name).exists() and name not in own:
            raise InputError(f"{display(out / name)} exists and was not written by visionlens; "
                             "choose an empty --out folder or move that file")


def make_out_dir(out: Path) -> bool:
    """Create ``out`` (and its parents); check that a file can be written in it. Return whether
    it was created here (so that a failed run can remove it again)."""
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    err = _write_error(out)
    if err is not None:
        remove_if_empty(out, created)
        raise InputError(f"--out {display(out)}: cannot write there ({err.strerror}); choose another --out")
    return created


def remove_if_empty(out: Path, created: bool) -> None:
    """Remove ``out`` again when this run created it and left nothing in it."""
    if created:
        try:
            out.rmdir()
        except OSError:
            pass


def earlier_outputs(out: Path, inputs: Iterable[str | Path] = ()) -> set[str]:
    """The files an earlier run listed in ``out/summary.json`` (:func:`own_files`), less any that
    this run reads as an input: the ``earlier`` of :func:`staged_out_dir`."""
    taken = {os.path.realpath(p) for p in inputs}
    return {name for name in own_files(out) if os.path.realpath(Path(out) / name) not in taken}


@contextmanager
def staged_out_dir(out: Path, earlier: Iterable[str] = ()) -> Iterator[Path]:
    """Create ``out`` (see :func:`make_out_dir`) and give a hidden folder inside it for the run's
    files. When the block completes, its files move into ``out`` (``summary.json`` and
    ``index.html`` last), replacing files of the same names, and the files of ``earlier`` (names,
    relative to ``out``, that an earlier run of the command wrote there) that this run did not write
    again are removed, so that the folder holds one run. When the block raises (an error, Ctrl-C),
    the hidden folder is removed and ``out`` is as it was (removed too if this run created it)."""
    out = Path(out)
    created = make_out_dir(out)
    with _folder_lock(out, created):
        stage = Path(tempfile.mkdtemp(dir=out, prefix=STAGE_PREFIX))
        try:
            yield stage
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            remove_if_empty(out, created)
            raise
        with signals_deferred():  # the move is short: a Ctrl-C during it would leave two runs mixed
            written = _publish(stage, out)
            shutil.rmtree(stage)
            for name in set(earlier) - written:
                stale = out / name
                if stale.resolve().is_relative_to(out.resolve()) and stale.is_file():
                    stale.unlink()


@contextmanager
def _folder_lock(out: Path, created: bool) -> Iterator[None]:
    """An exclusive lock on the folder ``out`` (``flock`` on the folder itself: no lock file is
    left behind) while a run writes into it; a second run into the same folder is refused in one
    line. Where ``flock`` is missing (Windows), no lock."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            remove_if_empty(out, created)
            raise InputError(f"another visionlens run is writing into {display(out)}; wait for it to finish "
                             "or choose another --out") from None
        yield
    finally:
        os.close(fd)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP that arrive during the block take effect when it ends (in the
    main thread; elsewhere the block runs as it is)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    names = [s for s in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, s)]
    previous = {}
    for name in names:
        sig = getattr(signal, name)
        previous[sig] = signal.signal(sig, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for sig in dict.fromkeys(caught):
            signal.raise_signal(sig)


def _publish(stage: Path, out: Path) -> set[str]:
    """Move the files under ``stage`` to the same places under ``out``, its summary and page last;
    return their names relative to ``out``."""
    files = sorted(p for p in stage.rglob("*") if p.is_file())
    files.sort(key=lambda p: LAST.index(p.name) + 1 if p.parent == stage and p.name in LAST else 0)
    for path in files:
        dest = out / path.relative_to(stage)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
    return {path.relative_to(stage).as_posix() for path in files}
