"""A tiny name → object registry, so plug-ins are chosen by the same short name as their Hydra option."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from datamil.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps short names to classes or functions; unknown names fail with the list of valid ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise UnknownNameError(self.kind, name, list(self._entries))
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
