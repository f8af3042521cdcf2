"""Reading state dicts safely: safetensors, ``torch.load(weights_only=True)`` or a package."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from mmcontrast.models.packaged import load_packaged_state_dict


def load_state_dict_file(weights: str, target: nn.Module) -> dict[str, Tensor]:
    """A state dict for ``target`` from ``package:NAME``, a ``.safetensors`` or a ``.pth`` file."""
    if weights.startswith("package:"):
        return load_packaged_state_dict(weights, target)
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {weights!r} not found")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_into(module: nn.Module, weights: str) -> None:
    """Load ``weights`` into ``module``; every parameter of the module must be covered."""
    state = load_state_dict_file(weights, module)
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise ValueError(
            f"weights {weights!r} do not cover {len(result.missing_keys)} parameters of the tower, "
            f"e.g. {result.missing_keys[:3]}; check that they belong to this architecture"
        )
