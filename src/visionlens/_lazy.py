"""Package attributes imported on first use, so that importing a package (and ``visionlens
--help``) does not import torch."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str], submodules: tuple[str, ...] = ()):
    """``(__getattr__, __dir__)`` for ``package``: each name in ``exports`` comes from the module
    given (relative to the package) when first used, then stays in the package's namespace; each
    of ``submodules`` is imported on first use (``import visionlens; visionlens.data.load_image``)."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str):
        if name in submodules:
            return importlib.import_module(f".{name}", package)  # the import binds it in the namespace
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{exports[name]}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports) | set(submodules))

    return __getattr__, __dir__
