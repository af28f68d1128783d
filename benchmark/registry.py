"""Name → class registries for methods, dataset adapters and tables.

Registration happens at import time (``@register_method`` on the class); the ``methods``, ``datasets``
and ``protocols`` packages import their modules in ``__init__``, and the lookup functions import those
packages on first use, so ``get_method("ae")`` works from anywhere.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_REGISTRIES: dict[str, dict[str, Any]] = {"method": {}, "dataset": {}, "table": {}}
_PACKAGES = {"method": "methods", "dataset": "datasets", "table": "protocols.tables"}


def _register(kind: str, name: str, obj: Any) -> None:
    reg = _REGISTRIES[kind]
    if name in reg and reg[name] is not obj:
        raise KeyError(f"{kind} {name!r} registered twice ({reg[name]!r} and {obj!r})")
    reg[name] = obj


def register_method(cls: type[T]) -> type[T]:
    _register("method", cls.name, cls)  # type: ignore[attr-defined]
    return cls


def register_dataset(cls: type[T]) -> type[T]:
    _register("dataset", cls.name, cls)  # type: ignore[attr-defined]
    return cls


def register_table(spec: T) -> T:
    _register("table", spec.table_id, spec)  # type: ignore[attr-defined]
    return spec


def _all(kind: str) -> dict[str, Any]:
    importlib.import_module(_PACKAGES[kind])
    return dict(sorted(_REGISTRIES[kind].items()))


def _get(kind: str, name: str) -> Any:
    reg = _all(kind)
    if name not in reg:
        raise KeyError(f"unknown {kind} {name!r}; known: {', '.join(reg) or 'none'}")
    return reg[name]


def all_methods() -> dict[str, Any]:
    return _all("method")


def get_method(name: str) -> Any:
    return _get("method", name)


def all_datasets() -> dict[str, Any]:
    return _all("dataset")


def get_dataset(name: str) -> Any:
    return _get("dataset", name)


def all_tables() -> dict[str, Any]:
    return _all("table")


def get_table(name: str) -> Any:
    return _get("table", name)


Decorator = Callable[[type[T]], type[T]]
