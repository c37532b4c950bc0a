"""A resumable record store: one JSON line per evaluated batch, appended under an exclusive lock
with one write and an fsync, so a killed run loses at most the batch it was on.

The first line holds the run's settings; a re-run with the same settings skips the batches
already recorded, and one with other settings is refused (the file is never overwritten)."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from visionlens.errors import InputError, display


def record_key(record: dict) -> tuple:
    """What identifies a batch: its set, protocol, seed and batch number."""
    return record["set"], record["protocol"], record["seed"], record["batch"]


class RecordStore:
    """JSONL records of one run (``settings`` on the first line); ``done`` holds the recorded keys."""

    def __init__(self, path: str | Path, settings: dict):
        self.path, self.settings = Path(path), json.loads(json.dumps(settings))  # as read back: lists, not tuples
        self.records: list[dict] = []
        if self.path.exists():
            self._resume()
        else:
            self._append({"settings": settings})
        self.done = {record_key(r) for r in self.records}

    def _resume(self) -> None:
        """Read the records (a line cut short by a kill is dropped) and check the settings."""
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):  # the last append was cut short: drop it
            data = data[: data.rfind(b"\n") + 1]
            with open(self.path, "r+b") as fh:
                fh.truncate(len(data))
        try:
            lines = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        except ValueError:
            raise InputError(f"{display(self.path)} is not a sata record file; give another --out or move it away") from None
        if not lines:  # killed before its first line
            self._append({"settings": self.settings})
            return
        if "settings" not in lines[0]:
            raise InputError(f"{display(self.path)} is not a sata record file; give another --out or move it away")
        old = lines[0]["settings"]
        changed = sorted(k for k in set(old) | set(self.settings) if old.get(k) != self.settings.get(k))
        if changed:
            raise InputError(f"{display(self.path)} holds records of other settings (differing: {', '.join(changed)}); "
                             "give another --out or move that file away")
        self.records = lines[1:]

    def _append(self, value: dict) -> None:
        line = (json.dumps(value, allow_nan=False) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)  # closing releases the lock

    def append(self, record: dict) -> None:
        """Record one batch (an already recorded batch is not written twice)."""
        key = record_key(record)
        if key in self.done:
            return
        self._append(record)
        self.records.append(record)
        self.done.add(key)
