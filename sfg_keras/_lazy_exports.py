"""Module-level `__getattr__` / `__dir__` that import a package's public names from their modules on first use."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """Returns `(__getattr__, __dir__)` for `package`, where `exports` maps a public name to its submodule.

    Example:

    ```python
    __getattr__, __dir__ = lazy_exports(__name__, {"make_or_load_split": "split"})
    ```
    """

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(importlib.import_module(package))) | set(exports))

    return __getattr__, __dir__
