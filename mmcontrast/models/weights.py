"""Reading and writing state dicts safely: safetensors, ``torch.load(weights_only=True)`` or a
package; written files get the usual permissions."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
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


def save_state_file(
    state: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``state`` as safetensors at ``path``, whole or not at all, readable as the
    process's umask allows.

    The file is written beside ``path`` and renamed over it once complete, so a kill or a
    full disk never leaves half a weights file (nor destroys the one it would replace).
    safetensors creates files private to the owner (0600); weights are shared like the
    config and pictures beside them, so the mode is set as ``open`` would have set it.
    """
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        try:
            save_file(state, str(partial), metadata=metadata)
        except SafetensorError as err:  # its I/O errors (a full disk) are not OSErrors
            found = re.search(r"os error (\d+)", str(err))
            raise OSError(int(found.group(1)) if found else errno.EIO, f"{path}: {err}") from err
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(partial, 0o666 & ~umask)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path
