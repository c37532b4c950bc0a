"""A minimal progress bar on stderr (no dependency): redrawn in place on a terminal, a line
every 10 % otherwise; the rate and the time left count only work done in this run (``skip``
advances over work found already done, e.g. when a run resumes)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str = "", stream=None, enabled: bool = True, unit: str = "img"):
        self.total, self.label, self.done, self.skipped, self.unit = total, label, 0, 0, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._last_decile = -1

    def skip(self, n: int = 1) -> None:
        """Advance over ``n`` items that needed no work (not counted in the rate)."""
        self.skipped += n
        self.update(n)

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        frac = self.done / self.total
        elapsed = time.perf_counter() - self.start
        worked = self.done - self.skipped
        rate = worked / elapsed if elapsed > 0 else 0.0
        bar = "#" * int(24 * frac) + "-" * (24 - int(24 * frac))
        line = f"{self.label} [{bar}] {self.done}/{self.total} {rate:.1f} {self.unit}/s"
        if worked and self.done < self.total:
            left = int((self.total - self.done) / rate) if rate > 0 else 0
            line += f", {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d} left"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if self.done >= self.total else ""))
            self.stream.flush()
        elif int(frac * 10) != self._last_decile or self.done >= self.total:
            self._last_decile = int(frac * 10)
            self.stream.write(line + "\n")
            self.stream.flush()
