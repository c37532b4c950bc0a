"""Command-line pieces shared by the benchmark scripts: usage errors and bad input as one line on
stderr (``error: ...``, exit status 2, no traceback), and argparse types for counts and lists.

The scripts run as ``python benchmarks/NAME.py``, so Python puts this folder first on the path and
``import _cli`` finds this file from any working directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, NoReturn


def fail(message: object) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit with status 2."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(2)


class Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (``error: PROG: message``) with exit status 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: {message} (see {self.prog} --help)")


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def positive_ints(text: str) -> list[int]:
    """An argparse type: a comma-separated list of integers of at least 1 (``1,8``)."""
    return [positive_int(part) for part in text.split(",")]


def names(choices) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of names, each one of ``choices``."""
    choices = list(choices)

    def parse(text: str) -> list[str]:
        bad = [name for name in text.split(",") if name not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(repr(b) for b in bad)}; choose from {','.join(choices)}")
        return text.split(",")

    return parse


def folder(text: str) -> Path:
    """An argparse type: an existing directory."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: {'not a folder' if path.exists() else 'no such folder'}")
    return path


def evaluate_folder(text: str) -> Path:
    """An argparse type: a folder that holds `visionlens evaluate` results."""
    from visionlens.evaluation.store import result_files

    path = folder(text)
    if not result_files(path):
        raise argparse.ArgumentTypeError(f"{text} holds no results of `visionlens evaluate` (results*.jsonl)")
    return path


def run(main: Callable[[], object]) -> NoReturn:
    """Call ``main()`` and exit with its return value; visionlens's own errors (bad input) and a
    missing file or folder become one ``error:`` line and exit status 2."""
    from visionlens.errors import VisionlensError

    try:
        result = main()
    except VisionlensError as err:
        fail(err)
    except (FileNotFoundError, NotADirectoryError) as err:
        fail(f"{err.filename}: {err.strerror}" if err.filename else err)
    raise SystemExit(result)
