"""One small registry type, used for towers, losses, methods and datasets.

Example:
    >>> LOSSES = Registry("loss")
    >>> @LOSSES.register("clip")
    ... class ClipLoss: ...
    >>> LOSSES.get("clip")
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class Registry:
    """A name -> object mapping with a helpful error for unknown names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Any] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str, doc: str | None = None) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``."""

        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            summary = doc or (getattr(obj, "__doc__", None) or "").strip().splitlines()
            self._docs[name] = (
                summary if isinstance(summary, str) else (summary[0] if summary else "")
            )
            return obj

        return decorator

    def get(self, name: str) -> Any:
        """Return the entry called ``name``; unknown names name the closest valid one."""
        if name not in self._entries:
            raise KeyError(unknown_name_message(self.kind, name, list(self._entries)))
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def describe(self) -> dict[str, str]:
        """Name -> one-line description, for ``mmcontrast list``."""
        return {name: self._docs[name] for name in self.names()}

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    """``unknown loss 'clpi'; did you mean 'clip'? (valid: clip, siglip)``."""
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}{hint} (valid: {', '.join(sorted(valid))})"


TOWERS = Registry("tower source")
LOSSES = Registry("loss")
METHODS = Registry("method")
DATASETS = Registry("dataset")
