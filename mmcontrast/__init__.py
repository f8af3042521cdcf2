"""mmcontrast: contrastive representation learning on Hugging Face, timm and open_clip towers."""

from __future__ import annotations

from typing import Any

__all__ = ["from_pretrained"]


def from_pretrained(name_or_path: str, revision: str | None = None) -> Any:
    """Load an mmcontrast export (folder or Hub id): a dual encoder, or a vision backbone."""
    from mmcontrast.hub.native import from_pretrained as load

    return load(name_or_path, revision=revision)
