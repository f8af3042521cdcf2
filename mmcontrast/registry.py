"""One small registry type, used for towers, losses, methods, datasets, eval tasks and model
families, with one registration style: a decorator at the definition site.

A registry names the packages whose modules register into it; the first look-up imports
every module of those packages, so adding an entry is adding a file: no import list to edit.

Example:
    >>> LOSSES = Registry("loss")
    >>> @LOSSES.register("clip", "symmetric InfoNCE")
    ... class ClipLoss: ...
    >>> LOSSES.get("clip")
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


class Registry:
    """A name -> object mapping with aliases, discovery and a helpful error for unknown names.

    Args:
        kind: What the entries are, for messages (``"loss"``).
        packages: Dotted packages whose modules (recursively) are imported on first use.
    """

    def __init__(self, kind: str, packages: Sequence[str] = ()) -> None:
        self.kind = kind
        self.packages = tuple(packages)
        self._entries: dict[str, Any] = {}
        self._docs: dict[str, str] = {}
        self._aliases: dict[str, str] = {}
        self._discovered = not self.packages

    def register(
        self, name: str, doc: str | None = None, aliases: Sequence[str] = ()
    ) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (and ``aliases``, which old configs
        may still use); ``doc`` defaults to the first line of the object's docstring."""

        def decorator(obj: T) -> T:
            for key in (name, *aliases):
                if key in self._entries or key in self._aliases:
                    raise ValueError(f"{self.kind} {key!r} is already registered")
            self._entries[name] = obj
            self._aliases.update({alias: name for alias in aliases})
            lines = (getattr(obj, "__doc__", None) or "").strip().splitlines()
            self._docs[name] = doc or (lines[0] if lines else "")
            return obj

        return decorator

    def discover(self) -> None:
        """Import every module of ``packages`` once, so that their entries are registered."""
        if self._discovered:
            return
        self._discovered = True  # set first: a module may look an entry up while it registers
        try:
            for package in self.packages:
                module = importlib.import_module(package)
                for info in pkgutil.walk_packages(module.__path__, package + "."):
                    importlib.import_module(info.name)
        except Exception:
            self._discovered = False  # a half-filled registry must not pass for a whole one
            raise

    def get(self, name: str) -> Any:
        """Return the entry called ``name`` (or an alias); unknown names name the closest valid one."""
        self.discover()
        name = self._aliases.get(name, name)
        if name not in self._entries:
            raise KeyError(unknown_name_message(self.kind, name, list(self._entries)))
        return self._entries[name]

    def canonical(self, name: str) -> str:
        """The registered name of ``name`` (itself, or what the alias stands for)."""
        self.get(name)
        return self._aliases.get(name, name)

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._entries)

    def describe(self) -> dict[str, str]:
        """Name -> one-line description (aliases noted), for ``mmcontrast list``."""
        names = self.names()
        also = {n: [a for a, target in sorted(self._aliases.items()) if target == n] for n in names}
        return {
            n: self._docs[n] + (f" (also: {', '.join(also[n])})" if also[n] else "") for n in names
        }

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    """``unknown loss 'clpi'; did you mean 'clip'? (valid: clip, siglip)``."""
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}{hint} (valid: {', '.join(sorted(valid))})"


TOWERS = Registry("tower source", packages=["mmcontrast.models"])
LOSSES = Registry("loss", packages=["mmcontrast.losses"])
METHODS = Registry("method", packages=["mmcontrast.methods"])
DATASETS = Registry("dataset", packages=["mmcontrast.demo"])
