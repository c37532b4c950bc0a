"""A minimal progress bar on stderr (no dependency): redrawn in place on a terminal, a line
every 10 % otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str = "", stream=None, enabled: bool = True, unit: str = "img"):
        self.total, self.label, self.done, self.unit = total, label, 0, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._last_decile = -1

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        frac = self.done / self.total
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
        line = f"{self.label} [{bar}] {self.done}/{self.total} {rate:.1f} {self.unit}/s"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if self.done >= self.total else ""))
            self.stream.flush()
        elif int(frac * 10) != self._last_decile or self.done >= self.total:
            self._last_decile = int(frac * 10)
            self.stream.write(line + "\n")
            self.stream.flush()
