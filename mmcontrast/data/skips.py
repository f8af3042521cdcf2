"""Bad rows, skipped and counted: each named, each counted once however often it is met.

A dataset yields ``{"skip": reason}`` for a row it cannot use (:func:`skip_sample`); the
reason is a :class:`SkipReason`, a string that also knows the row: ``name`` is what a
person looks for (the image file, or ``row 17``), ``key`` identifies the row across
epochs, workers and processes. The collate gathers a batch's skipped samples into a
:class:`Skips` under ``batch["skipped"]``, and a loaded table keeps the rows it dropped
(empty captions, missing labels) in one too. Both stay what code that only counts expects
(a reason string; a ``{reason: count}`` mapping).

:class:`SkippedRows` adds them up over a run: a bad row met in every epoch counts once,
and its end-of-run :meth:`SkippedRows.message` names the first few rows::

    skipped 3 bad training rows (unreadable image: 2, empty caption: 1); first:
    data/train/0001.png (unreadable image), data/train/0007.png (unreadable image), ...

Across processes: :meth:`SkippedRows.to_state` is plain data for accelerate's
``gather_object``, and :meth:`SkippedRows.merge` joins the gathered states.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

SkipRecord = tuple[str, str, str]  # (reason, key, name)


def image_name(value: Any) -> str | None:
    """The file a raw image value names (a path, or a ``datasets`` dict with a path)."""
    if isinstance(value, dict):
        value = value.get("path")
    if isinstance(value, str | os.PathLike) and str(value):
        return str(value)
    return None


class SkipReason(str):
    """Why a row was skipped (the string itself), naming the row (``name``, ``key``)."""

    name: str
    key: str

    def __new__(cls, reason: str, name: str, key: str | None = None) -> SkipReason:
        self = super().__new__(cls, reason)
        self.name, self.key = name, key or name
        return self

    def __reduce__(self) -> tuple[Any, ...]:  # through DataLoader worker pipes
        return SkipReason, (str(self), self.name, self.key)


def skip_sample(reason: str, name: str, key: str | None = None) -> dict[str, Any]:
    """What a dataset yields for a row it cannot use: ``{"skip": SkipReason}`` (``key``
    defaults to ``name``)."""
    return {"skip": SkipReason(reason, name, key)}


def indexed_skip(reason: str, image: Any, index: int) -> dict[str, Any]:
    """:func:`skip_sample` for row ``index`` of a table: named by its image file if it has one."""
    return skip_sample(reason, image_name(image) or f"row {index}", f"row {index}")


class Skips(dict[str, int]):
    """Rows skipped together (one batch, or one table's load): ``{reason: count}`` plus who.

    To anything that only counts it is the plain mapping of reason to count; ``rows``
    holds ``(reason, key, name)`` of the rows it knows by name (a count may exceed its
    named rows: those are counted without a name). It holds no tensors, so moving a batch
    to a device (accelerate's ``send_to_device``, the DataLoader's ``pin_memory``) keeps it
    as it is, names included.
    """

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        super().__init__(counts or {})
        self.rows: list[SkipRecord] = []

    @classmethod
    def of_samples(cls, samples: Iterable[Mapping[str, Any]]) -> Skips:
        """The skipped samples (``"skip"`` in them) of one batch."""
        skips = cls()
        for sample in samples:
            reason = sample.get("skip")
            if isinstance(reason, SkipReason):
                skips.add(str(reason), reason.name, reason.key)
            elif reason is not None:
                skips.count(str(reason))
        return skips

    def add(self, reason: str, name: str, key: str | None = None) -> None:
        """One named row skipped for ``reason``."""
        self.count(reason)
        self.rows.append((reason, key or name, name))

    def count(self, reason: str, rows: int = 1) -> None:
        """``rows`` rows skipped for ``reason``, not named."""
        self[reason] = self.get(reason, 0) + rows

    def to(self, *args: Any, **kwargs: Any) -> Skips:
        """Itself: nothing to move (``send_to_device`` calls ``to``)."""
        return self

    def pin_memory(self, *args: Any) -> Skips:
        """Itself: nothing to pin (the DataLoader's ``pin_memory`` calls this)."""
        return self


class SkippedRows:
    """Distinct bad rows of a run, by reason, with names for the end-of-run warning.

    Example:
        >>> skipped = SkippedRows()
        >>> batch = Skips.of_samples([skip_sample("unreadable image", "a.png", "row 3")])
        >>> skipped.add(batch)
        >>> skipped.add(batch)  # the same row, next epoch
        >>> skipped.add_at_load({"empty caption": 2})
        >>> skipped.total, skipped.by_reason()
        (3, {'empty caption': 2, 'unreadable image': 1})
        >>> skipped.message()
        'skipped 3 bad training rows (empty caption: 2, unreadable image: 1); first: a.png (unreadable image)'
    """

    def __init__(self) -> None:
        self._rows: dict[str, tuple[str, str]] = {}  # key -> (reason, name), as first met
        self._unnamed: Counter[str] = Counter()

    def add(self, skipped: Mapping[str, int] | None) -> None:
        """Count what a collate put in ``batch["skipped"]`` (a :class:`Skips`).

        Named rows count once, however often they are added; counts without names (a plain
        ``{reason: count}``) count every time.
        """
        if not skipped:
            return
        named: Counter[str] = Counter()
        for reason, key, name in getattr(skipped, "rows", ()):
            self.add_row(reason, name, key)
            named[reason] += 1
        for reason, count in skipped.items():
            if count > named[reason]:
                self._unnamed[reason] += count - named[reason]

    def add_at_load(self, skipped: Mapping[str, int] | None) -> None:
        """Count the rows a table dropped when it was loaded (``dataset.skipped_at_load``).

        Call it once, on one process: every process loads the same table.
        """
        self.add(skipped)

    def add_row(self, reason: str, name: str, key: str | None = None) -> None:
        """One bad row; a row already counted (same ``key``) keeps its first reason."""
        self._rows.setdefault(key or name, (reason, name))

    @property
    def total(self) -> int:
        return len(self._rows) + sum(self._unnamed.values())

    def __bool__(self) -> bool:
        return self.total > 0

    def by_reason(self) -> dict[str, int]:
        """Bad rows per reason, the most frequent first."""
        counts = Counter(reason for reason, _ in self._rows.values()) + self._unnamed
        return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))

    def names(self) -> list[tuple[str, str]]:
        """``(name, reason)`` of every named bad row, in the order they were met."""
        return [(name, reason) for reason, name in self._rows.values()]

    def message(self, what: str = "training", shown: int = 5) -> str:
        """``skipped N bad <what> rows (reason: count, ...); first: name (reason), ...``.

        Args:
            what: Which rows, e.g. "training" (empty: just "rows").
            shown: How many rows to name at most.
        """
        total = self.total
        reasons = ", ".join(f"{reason}: {count}" for reason, count in self.by_reason().items())
        noun = f"{what} row" if what else "row"
        text = f"skipped {total} bad {noun}{'s' if total != 1 else ''} ({reasons})"
        named = self.names()
        if named:
            first = ", ".join(f"{name} ({reason})" for name, reason in named[:shown])
            more = f", and {len(named) - shown} more" if len(named) > shown else ""
            text += f"; first: {first}{more}"
        if "image too large" in self.by_reason():
            text += " (images over data.max_image_pixels are skipped; raise it to keep them)"
        return text

    def to_state(self) -> dict[str, Any]:
        """Plain data (lists, dicts, strings) for ``gather_object`` or JSON."""
        return {
            "rows": [[key, reason, name] for key, (reason, name) in self._rows.items()],
            "unnamed": dict(self._unnamed),
        }

    @classmethod
    def merge(cls, states: Iterable[Mapping[str, Any]]) -> SkippedRows:
        """One :class:`SkippedRows` from the states of several processes."""
        merged = cls()
        for state in states:
            for key, reason, name in state.get("rows", ()):
                merged.add_row(reason, name, key)
            merged._unnamed.update(state.get("unnamed", {}))
        return merged
