"""Checks of user-given values, each failing with one actionable :class:`InputError` line.

``check_number`` serves the Python API; ``number`` and ``count`` build ``argparse`` types from the
same rule, so a command refuses ``--lr nan`` or ``--epochs 0`` before any work."""

from __future__ import annotations

import argparse
import math

from .errors import InputError


def check_number(name: str, value, minimum: float | None = None, maximum: float | None = None,
                 above: float | None = None, integer: bool = False):
    """``value`` if it is a finite number within the bounds (``minimum``/``maximum`` inclusive,
    ``above`` exclusive), else an :class:`InputError` naming ``name``."""
    kind = "an integer" if integer else "a finite number"
    try:
        number = _integer(value) if integer else float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{name} must be {kind}, got {value!r}") from None
    if not integer and not math.isfinite(number):
        raise InputError(f"{name} must be {kind}, got {value!r}")
    if above is not None and not number > above:
        raise InputError(f"{name} must be greater than {_bound(above)}, got {value!r}")
    if minimum is not None and number < minimum:
        raise InputError(f"{name} must be at least {_bound(minimum)}, got {value!r}")
    if maximum is not None and number > maximum:
        raise InputError(f"{name} must be at most {_bound(maximum)}, got {value!r}")
    return number


def _bound(bound: float) -> str:
    """A bound as written: a whole number in full (4294967295, not 4.29497e+09), else ``%g``."""
    return str(int(bound)) if float(bound).is_integer() else f"{bound:g}"


def _integer(value) -> int:
    """``value`` as an int: an int, an integral float, or a string of digits (any size)."""
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError
        return int(value)
    return int(str(value).strip())


def _argparse_type(integer: bool, **bounds):
    def parse(text: str):
        try:
            return check_number("the value", text, integer=integer, **bounds)
        except InputError as err:
            raise argparse.ArgumentTypeError(str(err).replace("the value ", "")) from None

    parse.__name__ = "integer" if integer else "number"
    return parse


def number(minimum: float | None = None, maximum: float | None = None, above: float | None = None):
    """An ``argparse`` type: a finite float within the bounds."""
    return _argparse_type(False, minimum=minimum, maximum=maximum, above=above)


def count(minimum: int = 1, maximum: int | None = None):
    """An ``argparse`` type: an integer within the bounds (at least 1 by default)."""
    return _argparse_type(True, minimum=minimum, maximum=maximum)


SEED_MAX = 2**32 - 1  # the largest seed every generator takes (torch.manual_seed, NumPy)
SEED = count(minimum=0, maximum=SEED_MAX)  # the ``argparse`` type of every ``--seed``


def check_finite(name: str, tensor) -> None:
    """An :class:`InputError` naming ``name`` when a tensor holds NaN or infinite values."""
    import torch

    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise InputError(f"{name} contains NaN or infinite values")


def comma_list(item):
    """An ``argparse`` type: one value or a comma-separated list (``0,1,2``), each read by the
    ``argparse`` type ``item``; returns a list. Use it with ``nargs="+"`` and
    ``action=FlatList`` so that ``--seeds 0 1 2``, ``--seeds 0,1,2`` and ``--seeds 0,1 2`` agree."""

    def parse(text: str) -> list:
        parts = [part.strip() for part in str(text).split(",")]
        if not any(parts):
            raise argparse.ArgumentTypeError(f"empty list {text!r}; give values such as 0,1,2")
        if not all(parts):
            raise argparse.ArgumentTypeError(f"empty item in {text!r}; give values such as 0,1,2")
        return [item(part) for part in parts]

    parse.__name__ = f"list of {getattr(item, '__name__', 'value')}"
    return parse


class FlatList(argparse.Action):
    """An ``argparse`` action for ``nargs="+"`` with a :func:`comma_list` type: stores the values of
    all the space- and comma-separated words as one flat list."""

    def __call__(self, parser, namespace, values, option_string=None):
        flat = []
        for value in values if isinstance(values, list) else [values]:
            flat.extend(value if isinstance(value, list) else [value])
        setattr(namespace, self.dest, flat)


class DistinctSeeds(FlatList):
    """:class:`FlatList` for seeds: a seed listed twice (``0,0``, ``0 0``) would count one run
    twice in a mean and its spread, so it is refused on one line."""

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, values, option_string)
        seeds = getattr(namespace, self.dest)
        twice = next((s for i, s in enumerate(seeds) if s in seeds[:i]), None)
        if twice is not None:
            raise argparse.ArgumentError(self, f"lists a seed twice: {twice} (in {','.join(map(str, seeds))})")
