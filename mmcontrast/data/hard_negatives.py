"""Hard negative captions for each training pair (NegCLIP, Yuksekgonul et al. 2023).

Each pair gets up to ``count`` captions that look like its own but do not describe its
image: first those of a data column (``data.hard_negatives_column``: a caption or a list of
captions per row, e.g. mined or written by hand), then rule-based swaps of the drawn
caption (``data.hard_negative_swaps``: two nouns, attributes or relations exchanged,
:mod:`mmcontrast.data.caption_swaps`). A caption with no applicable swap and nothing in the
column simply has fewer; the collate pads to the batch's largest count with a mask
(``negative_mask``), and the loss (``negclip``) uses only the real ones, in their own
image's row.

The draws come from the global generator: call :meth:`HardNegatives.draw` inside the
sample's seeded context, so a resumed run draws the same negatives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import datasets
import torch

from mmcontrast.data.caption_swaps import check_kinds, swaps
from mmcontrast.data.pairs import PairTable, clean_captions
from mmcontrast.data.webdataset import column_value

CHECKED_ROWS = 1000


@dataclass(frozen=True)
class HardNegatives:
    """How many hard negatives each pair gets and where they come from."""

    count: int
    column: str | None = None
    swap_kinds: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.swap_kinds:
            check_kinds(self.swap_kinds)
        if self.count < 1 or not (self.column or self.swap_kinds):
            raise ValueError(
                "hard negatives need data.hard_negatives >= 1 and a source: "
                "data.hard_negatives_column and/or data.hard_negative_swaps"
            )

    def row_captions(self, row: dict[str, Any]) -> list[str]:
        """The column's negatives of a row (none without a column or an empty cell)."""
        return clean_captions(column_value(row, self.column)) if self.column else []

    def draw(self, caption: str, from_column: list[str]) -> list[str]:
        """Up to ``count`` distinct negatives of ``caption``: the column's first (drawn
        without replacement), then swaps (a kind drawn uniformly among those that apply,
        then one of its swaps). Uses the global generator."""
        pool = [c for c in dict.fromkeys(from_column) if c.lower() != caption.lower()]
        order = torch.randperm(len(pool)).tolist() if pool else []
        chosen = [pool[i] for i in order[: self.count]]
        if len(chosen) < self.count and self.swap_kinds:
            found = swaps(caption)
            while len(chosen) < self.count:
                left = {k: [s for s in found[k] if s not in chosen] for k in self.swap_kinds}
                kinds = [k for k in self.swap_kinds if left[k]]
                if not kinds:
                    break
                kind = kinds[int(torch.randint(len(kinds), ()))]
                chosen.append(left[kind][int(torch.randint(len(left[kind]), ()))])
        return chosen


def check_negatives_column(table: PairTable, column: str) -> None:
    """Raise a clear error unless ``column`` exists and holds captions: a string or a list
    of strings per row (checked on the column's type; for mixed JSON values, on the first
    ``CHECKED_ROWS`` rows, and a later row that holds no text gives no negatives).

    Raises:
        ValueError: The column is missing or holds something other than text.
    """
    table.require_column("data.hard_negatives_column", column)
    feature = (table.dataset.features or {}).get(column)
    typed = isinstance(feature, datasets.Value) or getattr(feature, "feature", None) is not None
    if typed and not _is_text(feature):
        raise ValueError(
            f"data.hard_negatives_column {column!r} of {table.source} holds {feature}; it must "
            "hold a negative caption or a list of negative captions per row"
        )
    if typed:
        return
    for number, row in zip(range(CHECKED_ROWS), table.dataset, strict=False):  # JSON: look
        value = column_value(row, column)
        values = value if isinstance(value, list | tuple) else [value]
        if any(v is not None and not isinstance(v, str) for v in values):
            raise ValueError(
                f"data.hard_negatives_column {column!r} of {table.source} holds "
                f"{type(value).__name__} values (row {number}: {value!r}); it must hold a "
                "negative caption or a list of negative captions per row"
            )


def _is_text(feature: Any) -> bool:
    if isinstance(feature, datasets.Value):
        return feature.dtype in ("string", "large_string", "null")
    inner = getattr(feature, "feature", None)  # Sequence / List / LargeList
    return inner is not None and _is_text(inner)
