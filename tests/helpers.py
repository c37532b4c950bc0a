"""Helpers shared by test modules (import them from here, not from conftest)."""

from __future__ import annotations

import json


def one_error_line(err: str) -> str:
    """The single ``error:`` line a command printed on stderr (asserting that there is one, and
    no traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def strict_json(text: str):
    """Parse ``text`` as strict JSON: a bare NaN or Infinity fails the test."""
    def refuse(token):
        raise AssertionError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)
