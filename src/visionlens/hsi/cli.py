"""Placeholder: replaced by the sub-system's command line."""


def register(subparsers) -> None:  # pragma: no cover - replaced
    pass
