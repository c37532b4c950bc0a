"""Exceptions with one-line, actionable messages.

Every error visionlens raises on bad input derives from :class:`VisionlensError`, so a caller (and
the CLI) can tell "the user asked for something impossible" from a bug.
"""

import sys
import warnings


class VisionlensError(Exception):
    """Base class: the message is one line that says what is wrong and what to do."""


class InputError(VisionlensError, ValueError):
    """A bad tensor, image, target or argument."""


class LayerError(VisionlensError, ValueError):
    """A layer that does not exist or cannot be explained by the chosen method."""


class ImageLoadError(InputError):
    """A file that cannot be read as an image."""


class AssetError(VisionlensError, RuntimeError):
    """Pretrained weights or sample files that are missing or fail their checksum."""


class LRPError(VisionlensError, ValueError):
    """A module or operation that the LRP engine has no rule for (the message says how to add one)."""


class VisionlensWarning(UserWarning):
    """A result that is computed but needs the user's attention (the CLI shows it as one line)."""


class FlatMapWarning(VisionlensWarning):
    """A map that is all zero or constant: it explains nothing (the message names the layer and
    what to try, e.g. the usual layer)."""


class NotConvergedWarning(VisionlensWarning):
    """An iterative solve (NAFlow's layer inverses) stopped at its iteration cap: the maps are
    approximate (the message says how far off and which option to raise)."""


def one_line(err: BaseException) -> str:
    """An exception's message on one line (its whitespace, newlines included, collapsed), or its
    type's name when it has no message."""
    return " ".join(str(err).split()) or type(err).__name__


def display(path) -> str:
    """A path as one printable line: as it is, or quoted with escapes when it holds control
    characters (a newline in a file name must not split a one-line message)."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def warn_at_caller(warning: Warning) -> None:
    """Issue ``warning`` from the first frame outside visionlens (the user's call), so that the
    warning's file and line, and any filter on them, are the user's."""
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("visionlens."):
        frame, level = frame.f_back, level + 1
    warnings.warn(warning, stacklevel=level)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (``timeout``, ``kill``, a batch scheduler, a closed terminal) during a
    command: it stops as after Ctrl-C, its partial outputs removed (exit ``128 + signum``)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
