"""Progress bars on stderr through tqdm (the ``cli`` extra), with a rate and the time left that
count only the work done in this run: ``skip`` advances over work found already done (e.g. when a
run resumes) without making the rate look faster. ``update`` takes fractions of an item, so a long
batch can report its parts. There is no bar when it is disabled (``--quiet``), when stdout or the
bar's stream is not a terminal, or when tqdm is not installed."""

from __future__ import annotations

import os
import sys

FALLBACK_SIZE = (100, 24)  # for a terminal that reports no size (0 x 0): tqdm would draw nothing


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def _columns(stream) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def _tqdm_bar(total: int, label: str, unit: str, stream):
    """A tqdm bar, or None when tqdm is not installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    sized = _columns(stream) > 0  # follow the terminal's width when it has one
    return tqdm(total=total, desc=label or None, unit=unit, file=stream, dynamic_ncols=sized,
                ncols=None if sized else FALLBACK_SIZE[0], nrows=None if sized else FALLBACK_SIZE[1], mininterval=0.2,
                bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]")


class Progress:
    """``total`` items of ``unit``; ``update(n)`` after work, ``skip(n)`` over work already done.
    ``done`` and ``skipped`` count items whether or not a bar is shown."""

    def __init__(self, total: int, label: str = "", stream=None, enabled: bool = True, unit: str = "img"):
        self.total, self.label, self.unit = total, label, unit
        self.done, self.skipped = 0, 0
        self.stream = stream or sys.stderr
        show = enabled and total > 0 and _is_terminal(self.stream) and _is_terminal(sys.stdout)
        self._bar = _tqdm_bar(total, label, unit, self.stream) if show else None

    @property
    def enabled(self) -> bool:
        return self._bar is not None

    def update(self, n: float = 1) -> None:
        """``n`` items (or a fraction of one) done by work in this run."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            self._close_when_complete()

    def skip(self, n: int = 1) -> None:
        """Advance over ``n`` items that needed no work (counted neither in the rate nor the time left)."""
        self.done += n
        self.skipped += n
        bar = self._bar
        if bar is not None:
            # tqdm's mean rate is (n - initial) / elapsed and its smoothed rate counts n - last_print_n:
            # moving all three together leaves both rates to the work done
            bar.n += n
            bar.initial += n
            bar.last_print_n += n
            bar.refresh()
            self._close_when_complete()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _close_when_complete(self) -> None:
        if self.done >= self.total - 1e-6:  # fractions of items add up with rounding
            self.close()
