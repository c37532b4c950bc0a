"""Ray as the engine of ``visionlens evaluate`` (``--engine ray``): batches spread over actors.

Each actor loads the model once (on its CPU, or on the GPU Ray gives it) and computes whole
batches with the one-process code (:func:`.run._evaluate_batch`), into a scratch file of its own;
it returns the batch's records and example overlays. The batches are the one-process run's (same
start, same size), so the values are the same. The driver alone writes the records into the
folder's locked results file, as each batch completes: a killed driver resumes as a one-process
run does, with nothing lost or duplicated. An actor that dies is restarted and its batch retried.

Ray is imported only here, and only when this engine runs (``pip install 'visionlens[ray]'``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

from ..core.progress import Progress
from ..errors import InputError, VisionlensError
from ..io import save_atomic
from . import store as _store

# a test hook: the first batch computed after this file is made (by the actor that makes it) ends
# its actor process, as a crash would; Ray restarts the actor and retries the batch
CRASH_ONCE_ENV = "VISIONLENS_RAY_TEST_CRASH_ONCE"
RETRIES = 3
IN_FLIGHT_PER_ACTOR = 2
CLOSE_TIMEOUT = 30.0  # seconds to wait for the actors to remove their scratch folders before they are killed


class RayRunError(VisionlensError, RuntimeError):
    """A batch that failed on the cluster after its retries (the batches written are kept)."""


def _ray():
    try:
        import ray
    except ImportError:
        raise InputError("--engine ray needs Ray: pip install 'visionlens[ray]'") from None
    return ray


def _check_reachable(address: str) -> None:
    """A HOST:PORT address refused at once with one line when nothing listens there (Ray itself
    would retry for minutes); ``auto`` and ``ray://`` addresses are left to Ray."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as err:
        raise InputError(f"cannot reach the Ray cluster at --address {address} ({err.strerror or err}); start it "
                         "with `ray start --head`, or leave --address out for a local Ray") from None


class BatchWorker:
    """One model's batches on one actor: the model and its explainers made once, in ``__init__``
    (run again when Ray restarts the actor)."""

    def __init__(self, setup: dict, source, methods: list[str]):
        import torch

        from . import run as R
        from ..models.zoo import resolve_device

        self.crash_once = setup.pop("crash_once")
        self.scratch = Path(tempfile.mkdtemp(prefix="visionlens-ray-"))
        (self.scratch / "examples").mkdir()
        self.f = open(self.scratch / "records.jsonl", "w+", encoding="utf-8")
        if source.loaded is not None:  # a module given to evaluate(): onto this actor's device
            source.loaded.module.to(resolve_device(setup["device"]))
        torch.manual_seed(setup["seed"])
        self.run = R._Run(self.scratch, self.f, **setup)
        self.model = R._start_model(self.run, source, methods)
        self.skipped = self._taken()["records"]

    def describe(self) -> dict:
        """The batch size, the methods that could be made and the records of those that could not."""
        return {"batch": self.model.batch, "live": list(self.model.live), "skipped": self.skipped,
                "batches": self.run.batches}

    def batch(self, start: int, done: list) -> dict:
        """The records of the batch from ``start`` that are not in ``done``, its overlays and timings."""
        from . import run as R

        self._maybe_crash()
        self.run.done = {tuple(k) for k in done}
        self.run.timings, self.run.unreadable = {}, {}
        R._evaluate_batch(self.run, self.model, start)
        return {**self._taken(), "timings": self.run.timings, "scoring": self.run.scoring,
                "unreadable": self.run.unreadable}

    def _taken(self) -> dict:
        """What the batch wrote into the scratch folder (records, PNG overlays), removed from it."""
        self.f.seek(0)
        records = [json.loads(line) for line in self.f.read().splitlines() if line.strip()]
        self.f.seek(0)
        self.f.truncate()
        examples = {}
        for png in (self.scratch / "examples").glob("*.png"):
            examples[png.name] = png.read_bytes()
            png.unlink()
        return {"records": records, "examples": examples}

    def _maybe_crash(self) -> None:
        if not self.crash_once:
            return
        try:
            os.close(os.open(self.crash_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os._exit(1)

    def close(self) -> None:
        """Remove the scratch folder: ``ray.kill`` ends the actor's process without running ``__del__``."""
        self.f.close()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def __del__(self):
        shutil.rmtree(getattr(self, "scratch", ""), ignore_errors=True)


def _batches_to_do(run, model: str, live: list[str], batch: int, bar) -> list[int]:
    """The starts of the batches with an image not done by a live method (the others skipped on ``bar``)."""
    todo = []
    for start in range(0, len(run.mine), batch):
        ids = [i for i, _, _ in run.mine[start:start + batch]]
        if any((model, mm, i) not in run.done for mm in live for i in ids):
            todo.append(start)
        else:
            bar.skip(len(ids) * len(live))
    return todo


class RayEngine:
    """``evaluate(..., engine=RayEngine(...))``: a model's batches over ``workers`` actors of a Ray
    cluster at ``address`` (a local Ray when None), ``gpus_per_worker`` GPUs each (0: on CPU)."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, gpus_per_worker: float = 0):
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise InputError(f"--workers must be a whole number of actors, at least 1 (got {workers})")
        if not isinstance(gpus_per_worker, (int, float)) or gpus_per_worker < 0:
            raise InputError(f"--gpus-per-worker must be 0 or more, e.g. 1 or 0.5 (got {gpus_per_worker})")
        self.address, self.workers, self.gpus = address, workers, float(gpus_per_worker)
        self.crash_once = os.environ.get(CRASH_ONCE_ENV)
        _ray()

    def describe(self) -> dict:
        return {"engine": "ray", "address": self.address, "workers": self.workers, "gpus_per_worker": self.gpus}

    def __call__(self, run, models, methods: list[str]) -> None:
        """Every model of the run, one after the other, each over its own actors."""
        ray = _ray()
        if self.gpus and run.device == "cpu":
            raise InputError("--gpus-per-worker puts the model on a GPU; leave out --device cpu (or use auto/cuda)")
        started = self._connect(ray)
        try:
            gpus = ray.cluster_resources().get("GPU", 0)
            if self.gpus > gpus:
                raise InputError(f"--gpus-per-worker {self.gpus:g}, and the Ray cluster has {gpus:g} GPUs; leave it "
                                 "out to run on CPUs")
            for source in models:
                self._evaluate_model(ray, run, source, methods)
        finally:
            if started:
                ray.shutdown()

    def _connect(self, ray) -> bool:
        """Connect to the cluster (or start a local Ray); True if this call did."""
        if ray.is_initialized():
            return False
        options = {"log_to_driver": False, "logging_level": "ERROR", "include_dashboard": False}
        if self.address is None:
            options["num_cpus"] = self.workers or os.cpu_count()
        else:
            _check_reachable(self.address)
        try:
            ray.init(address=self.address, **options)
        except (ConnectionError, RuntimeError, ValueError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise InputError(f"cannot reach the Ray cluster at --address {self.address}: {first}") from None
        return True

    def _worker_count(self, ray, batches: int) -> int:
        if self.workers is not None:
            return max(1, min(self.workers, batches))
        free = ray.cluster_resources()
        fit = int(free.get("GPU", 0) // self.gpus) if self.gpus else int(free.get("CPU", 1))
        return max(1, min(fit, batches))

    def _actors(self, ray, run, source, methods: list[str], count: int) -> list:
        setup = {"spec": run.spec, "mine": run.mine, "offset": run.offset, "metrics": run.metrics,
                 "done": {k for k in run.done if k[0] == source.name and k[2] == "*"}, "step": run.step,
                 "batch_size": run.batch_size, "examples": run.examples, "device": run.device, "progress": False,
                 "gallery_size": run.gallery_size, "fast_scoring": run.fast_scoring, "compile": run.compile,
                 "label_maps": run.label_maps, "seed": run.seed, "crash_once": self.crash_once}
        actor = ray.remote(BatchWorker).options(num_cpus=1, num_gpus=self.gpus, max_restarts=RETRIES,
                                                max_task_retries=RETRIES)
        return [actor.remote(setup, source, methods) for _ in range(count)]

    def _evaluate_model(self, ray, run, source, methods: list[str]) -> None:
        """The model's batches that have images not done, over actors, written as they complete."""
        actors = self._actors(ray, run, source, methods, 1)
        try:
            info = self._get(ray, actors[0].describe.remote())
            self._write(run, info["skipped"])
            run.batches.update(info["batches"])
            batch, live = info["batch"], info["live"]
            bar = Progress(len(run.mine) * max(len(live), 1), source.name, enabled=run.progress)
            todo = _batches_to_do(run, source.name, live, batch, bar)
            if todo:
                actors += self._actors(ray, run, source, methods, self._worker_count(ray, len(todo)) - 1)
                self._spread(ray, run, source.name, actors, todo, batch, bar, live)
            bar.close()
        finally:
            ray.wait([a.close.remote() for a in actors], num_returns=len(actors), timeout=CLOSE_TIMEOUT)
            for a in actors:
                ray.kill(a)

    def _spread(self, ray, run, model: str, actors: list, todo: list[int], batch: int, bar, names: list[str]) -> None:
        """The batches ``todo`` of the methods ``names`` over the actors, a few in flight per actor; each
        result written on arrival."""
        queue = list(reversed(todo))
        pending = {}

        def submit(actor) -> None:
            start = queue.pop()
            ids = [i for i, _, _ in run.mine[start:start + batch]]
            done = [(model, mm, i) for mm in names for i in ids if (model, mm, i) in run.done]
            pending[actor.batch.remote(start, done)] = (actor, len(ids))

        for _ in range(IN_FLIGHT_PER_ACTOR):
            for a in actors:
                if queue:
                    submit(a)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            actor, size = pending.pop(ready[0])
            self._take(run, self._get(ray, ready[0]))
            bar.update(size * len(names))
            if queue:
                submit(actor)

    def _get(self, ray, ref):
        """A task's result; a :class:`VisionlensError` raised in the task is raised as itself, any
        other failure (after Ray's retries) as one :class:`RayRunError` line."""
        try:
            return ray.get(ref)
        except ray.exceptions.RayError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, VisionlensError):
                raise cause from None
            text = str(cause if cause is not None else err).strip()
            first = next((line for line in reversed(text.splitlines()) if line.strip()), type(err).__name__)
            raise RayRunError(f"a batch failed on the Ray cluster after {RETRIES} retries ({first.strip()}); "
                              "re-run the same command to resume from the batches written") from err

    def _take(self, run, result: dict) -> None:
        """A batch's records (those not in the folder yet), overlays and timings, into the run."""
        self._write(run, result["records"])
        for name, png in result["examples"].items():
            save_atomic(lambda tmp, data=png: Path(tmp).write_bytes(data), run.out / "examples" / name)
        for key, seconds in result["timings"].items():
            run.timings[key] = run.timings.get(key, 0.0) + seconds
        run.scoring.update(result["scoring"])
        run.unreadable.update(result["unreadable"])

    @staticmethod
    def _write(run, records: list[dict]) -> None:
        new = [r for r in records if (r["model"], r["method"], r["image"]) not in run.done]
        if new:
            _store.write_records(run.f, new)
            run.done.update((r["model"], r["method"], r["image"]) for r in new)


def engine_for(engine: str, address: str | None, workers: int | None, gpus_per_worker: float | None):
    """The engine of ``visionlens evaluate --engine``: None (this process) or a :class:`RayEngine`;
    the Ray flags without ``--engine ray`` are refused (one line)."""
    if engine != "ray":
        given = [flag for flag, value in (("--address", address), ("--workers", workers),
                                          ("--gpus-per-worker", gpus_per_worker)) if value is not None]
        if given:
            raise InputError(f"{given[0]} is for --engine ray; add --engine ray or leave {given[0]} out")
        return None
    return RayEngine(address=address, workers=workers, gpus_per_worker=gpus_per_worker or 0)


__all__ = ["RayEngine", "RayRunError", "BatchWorker", "CRASH_ONCE_ENV", "engine_for"]
