"""Names of a package imported on first use (PEP 562), for ``nastrain`` and
``nastrain.experiments``: importing the package itself stays cheap (no torch)."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from typing import Any


def lazy_names(
    package: str, exports: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module ``__getattr__`` and ``__dir__`` of ``package``: a name of ``exports`` (name
    -> defining module) is imported when first asked for and kept in ``namespace`` (the
    package's globals), and a submodule is an attribute as with eager imports."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            if name.isidentifier() and importlib.util.find_spec(f"{package}.{name}") is not None:
                return importlib.import_module(f"{package}.{name}")
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
