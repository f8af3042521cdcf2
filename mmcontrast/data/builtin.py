"""Built-in datasets that need no network, written as ordinary imagefolder folders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmcontrast.registry import DATASETS


@DATASETS.register(
    "emoji", "Twemoji + OpenMoji images captioned with Unicode names; held-out concepts (offline)"
)
def emoji(output_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    from mmcontrast.data.emoji import build_emoji_dataset

    return build_emoji_dataset(output_dir, **kwargs)
