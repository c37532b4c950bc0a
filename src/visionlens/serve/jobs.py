"""Long requests as jobs: a few worker threads run them, each waits for its device's lock ("queued"),
reports its progress and can be cancelled. At most :data:`MAX_ACTIVE` jobs are queued or running
(:class:`~.safety.TooMany` beyond: HTTP 429); finished jobs are kept for their results, the
:data:`KEEP` newest, while a queued or running job is never dropped.

The methods have no progress or cancellation hooks of their own, so a job counts its steps (one per
method) and the model's forward passes in its thread (global module hooks that look only at that
thread; for Score-CAM and Ablation-CAM, one pass per batch of channels, so the page can say "pass
12 of about 22"), and checks for a cancel at every torch operation it runs: a
:class:`TorchFunctionMode` active only in the job's thread raises :class:`Cancelled` once the
Cancel button was pressed. The method's own ``preserved_model_state`` then restores the model
(modes, flags, hooks) on the way out, as after any error, and the lock is released.

When the server stops, :meth:`Jobs.stop` (and, before ``serve`` exits, :meth:`Jobs.close`, which
also refuses new jobs) cancels every job and waits for it to end, so that no torch work is still
running while the interpreter shuts down (which aborts the process)."""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from typing import Callable

from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.overrides import TorchFunctionMode

from ..errors import VisionlensError
from .safety import NotServed, ShuttingDown, TooMany

KEEP = 32  # finished jobs kept for their results (oldest dropped first)
MAX_ACTIVE = 16  # jobs queued or running at once (more are refused)
WORKERS = 2  # threads that run the jobs (each job still waits for its device's lock)
WAIT_S = 0.05  # how often a queued job looks for a cancel while it waits for the lock
STOP_WAIT_S = 30.0  # how long closing waits for cancelled jobs to stop (a cancel acts at the next torch operation)


class Cancelled(BaseException):
    """Raised inside a cancelled job's computation (a BaseException: ``except Exception`` in a
    method does not swallow it)."""


class _CancelCheck(TorchFunctionMode):
    """Every torch operation in this thread first checks the job's cancel flag (raises once)."""

    def __init__(self, job: "Job"):
        super().__init__()
        self.job = job

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.job.checkpoint()
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _counting_passes(job: "Job"):
    """Count the forward passes of whole models (outermost module calls) in this thread as ``job.passes``."""
    thread, depth = threading.get_ident(), [0]

    def enter(module, args):
        if threading.get_ident() == thread:
            depth[0] += 1
            job.passes += depth[0] == 1

    def leave(module, args, output):
        if threading.get_ident() == thread:
            depth[0] = max(depth[0] - 1, 0)

    # always_call: a forward that raises (a stand-in input that does not fit, a stop at a layer) still leaves
    handles = [register_module_forward_pre_hook(enter), register_module_forward_hook(leave, always_call=True)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class Job:
    """One request: ``state`` is queued, running, done, failed or cancelled; ``progress`` counts
    its steps; ``result`` (done) or ``error`` (failed: one line) when it ends."""

    def __init__(self, label: str, total: int):
        self.id = secrets.token_hex(8)
        self.label, self.state, self.result, self.error = label, "queued", None, None
        self.done, self.total, self.step = 0, total, ""
        self.passes, self.passes_expected = 0, None
        self.created, self.started, self.ended = time.monotonic(), None, None
        self._cancel, self._raised = threading.Event(), False

    def advance(self, done: int, step: str, passes_expected: int | None = None) -> None:
        """Progress: ``done`` of ``total`` steps finished, ``step`` running now (about
        ``passes_expected`` forward passes, where that is known)."""
        self.done, self.step, self.passes, self.passes_expected = done, step, 0, passes_expected

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelling(self) -> bool:
        return self._cancel.is_set()

    def checkpoint(self) -> None:
        """Raise :class:`Cancelled` the first time it is called after a cancel."""
        if self._cancel.is_set() and not self._raised:
            self._raised = True
            raise Cancelled()

    def describe(self) -> dict:
        elapsed = 0.0 if self.started is None else (self.ended or time.monotonic()) - self.started
        return {"id": self.id, "label": self.label, "state": self.state, "done": self.done, "total": self.total,
                "step": self.step, "passes": self.passes, "passes_expected": self.passes_expected,
                "cancelling": self.cancelling and self.state in ("queued", "running"),
                "elapsed_s": round(elapsed, 2),
                "result": self.result, "error": self.error}


class Jobs:
    """The explorer's jobs, by id: the queued and running ones (at most ``active``) and the ``keep``
    newest finished ones; ``workers`` threads run them."""

    def __init__(self, keep: int = KEEP, active: int = MAX_ACTIVE, workers: int = WORKERS):
        self.keep, self.active, self._jobs, self._guard = keep, active, OrderedDict(), threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="visionlens-job")
        self._running: dict[str, tuple[Job, Future]] = {}  # queued or running, kept until they end
        self._closed = False

    def start(self, lock: threading.Lock, work: Callable[[Job], dict], label: str, total: int) -> Job:
        """Run ``work(job)`` on a worker once ``lock`` is free; its return value is the result.
        Refused (:class:`ShuttingDown`) once :meth:`close` was called, and (:class:`TooMany`) while
        ``active`` jobs are queued or running."""
        job = Job(label, total)
        with self._guard:  # close() sees every job started before it
            if self._closed:
                raise ShuttingDown("the explorer is shutting down; no new jobs are started")
            if len(self._running) >= self.active:
                raise TooMany(f"{len(self._running)} jobs are queued or running, the most the explorer takes; "
                              "wait for one to finish or cancel one")
            future = self._pool.submit(self._work, job, lock, work)
            self._jobs[job.id], self._running[job.id] = job, (job, future)
            self._drop_finished()
        future.add_done_callback(lambda _: self._ended(job))
        return job

    def _drop_finished(self) -> None:
        """Drop the oldest finished jobs beyond ``keep`` (the caller holds the guard)."""
        finished = [i for i in self._jobs if i not in self._running]
        for job_id in finished[:max(len(finished) - self.keep, 0)]:
            del self._jobs[job_id]

    def _ended(self, job: Job) -> None:
        if job.state == "queued":  # cancelled before a worker took it
            job.state, job.ended = "cancelled", time.monotonic()
        with self._guard:
            self._running.pop(job.id, None)
            self._drop_finished()

    def get(self, job_id: str) -> Job:
        with self._guard:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotServed(f"no job '{job_id}' (finished jobs are kept for a while only)")
        return job

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        job.cancel()
        with self._guard:
            entry = self._running.get(job_id)
        if entry is not None:
            entry[1].cancel()  # not yet taken by a worker: it never runs
        return job

    def stop(self, timeout: float | None = STOP_WAIT_S) -> bool:
        """Cancel the running and queued jobs and wait (at most ``timeout`` seconds in all) for
        them to end. True when none is left running."""
        with self._guard:
            running = list(self._running.values())
        for job, future in running:
            job.cancel()
            future.cancel()
        _, pending = wait_for([future for _, future in running], timeout)
        return not pending

    def close(self, timeout: float | None = STOP_WAIT_S) -> bool:
        """:meth:`stop`, and refuse new jobs from now on (:class:`ShuttingDown`); the workers end
        once their jobs have. Safe to call again."""
        with self._guard:
            self._closed = True
        stopped = self.stop(timeout)
        self._pool.shutdown(wait=stopped, cancel_futures=True)
        return stopped

    @property
    def closed(self) -> bool:
        return self._closed

    @staticmethod
    def _work(job: Job, lock: threading.Lock, work: Callable[[Job], dict]) -> None:
        while not lock.acquire(timeout=WAIT_S):
            if job.cancelling:
                job.state, job.ended = "cancelled", time.monotonic()
                return
        try:
            job.state, job.started = "running", time.monotonic()
            if job.cancelling:
                raise Cancelled()
            with _counting_passes(job), _CancelCheck(job):
                result = work(job)
            job.result, job.done, job.state = result, job.total, "done"
        except Cancelled:
            job.state = "cancelled"
        except VisionlensError as err:
            job.error, job.state = _one_line(err), "failed"
        except Exception as err:  # noqa: BLE001 - one line on the page, as the app's 500s
            job.error = _one_line(err) if job.cancelling else f"internal error ({type(err).__name__}: {_one_line(err)})"
            job.state = "cancelled" if job.cancelling else "failed"
        finally:
            job.ended = time.monotonic()
            lock.release()


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
