"""A small strict registry: names exist only at the edges (CLI, config files).

    OBJECTIVES = Registry("objective")

    @OBJECTIVES.register("grpo")
    def grpo_loss(...): ...

    OBJECTIVES.get("grpo")            # -> the function
    OBJECTIVES.get("mypkg.mod:fn")    # dotted import path: plug in your own code
    OBJECTIVES.get("grpp")            # CredoError listing the valid names

Inside the library we pass callables, never strings.
"""

from __future__ import annotations

import importlib
from typing import Callable, Generic, TypeVar

from credo.errors import CredoError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        if ":" in name:  # "package.module:attribute" -> user code
            module_name, _, attr = name.partition(":")
            try:
                return getattr(importlib.import_module(module_name), attr)
            except (ImportError, AttributeError) as exc:
                raise CredoError(f"cannot import {self.kind} {name!r}: {exc}") from exc
        raise CredoError(
            f"unknown {self.kind} {name!r}; valid names: {', '.join(self.names())} "
            f"(or a 'package.module:function' import path)"
        )
