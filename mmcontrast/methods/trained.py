"""A trained method back from its folder: the final weights of a run, a checkpoint or an
mmcontrast export (``config.yaml`` + ``model.safetensors``), for evaluation and export.

Weights are read from safetensors only, so loading a folder runs no code from it. A file
that is not safetensors (or was cut short), or whose tensors do not fit the model its
``config.yaml`` builds, raises :class:`WeightsError` naming the file, a few of the keys at
fault, and what to do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model
from torch import Tensor, nn

from mmcontrast.config import load_recipe
from mmcontrast.methods.base import Method, build_method
from mmcontrast.models.lora import merge_adapters
from mmcontrast.models.tower import Tower

WEIGHTS_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"  # a checkpoint's moving average of the weights (train.ema_decay)
SHOWN_KEYS = 3  # keys named per kind of mismatch


class WeightsError(ValueError):
    """A weights file that cannot be read, or whose tensors do not fit the model built from
    its folder's config."""


def load_weights(model: nn.Module, folder: str | Path) -> None:
    """Load ``folder/model.safetensors`` into ``model``, every key and shape matching.

    Raises:
        FileNotFoundError: There is no such file.
        WeightsError: The file is not readable safetensors, or does not fit ``model``.
    """
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {WEIGHTS_FILE} in {folder}")
    weights = read_weights(path)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise WeightsError(misfit_message(path, model, weights, err)) from None


def load_ema(module: nn.Module, path: Path) -> None:
    """Load a checkpoint's moving average (``ema.safetensors``, written by ``save_model``,
    which stores a tied tensor once) into ``module``.

    Raises:
        WeightsError: The file is not readable safetensors, or does not fit ``module``.
    """
    try:
        load_model(module, str(path), strict=True)
    except (SafetensorError, OSError) as err:
        raise WeightsError(unreadable_message(path, err)) from None
    except RuntimeError as err:
        raise WeightsError(misfit_message(path, module, read_weights(path), err)) from None


def read_weights(path: Path) -> dict[str, Tensor]:
    """Every tensor of the safetensors file ``path``.

    Raises:
        WeightsError: ``path`` is not a safetensors file, or is truncated.
    """
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise WeightsError(unreadable_message(path, err)) from None


def unreadable_message(path: Path, err: Exception) -> str:
    """Why ``path`` could not be read as safetensors, and what to do."""
    return (
        f"{path} is not a readable safetensors file ({err}): it was cut short (a copy, "
        "download or write that did not finish) or is another format. Copy it again from "
        "where the run wrote it, or use another run or checkpoint folder"
    )


def misfit_message(
    path: Path, model: nn.Module, weights: Mapping[str, Tensor], err: Exception
) -> str:
    """Why the tensors of ``path`` do not fit ``model``: a few missing, unexpected and
    differently shaped keys, and what to do."""
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in weights.items()}
    shapes = [f"{k} is {list(theirs[k])} in the file, {list(ours[k])} in the model"
              for k in ours if k in theirs and theirs[k] != ours[k]]  # fmt: skip
    found = describe_mismatch(
        [k for k in ours if k not in theirs], [k for k in theirs if k not in ours], shapes
    )
    return (
        f"{path} does not fit the model its config builds: {found or err}. The weights come "
        "from another architecture: check that the folder's config.yaml is the one the "
        "weights were trained with (method, method_args, model.*), or use that run's own folder"
    )


def describe_mismatch(
    missing: Sequence[str], unexpected: Sequence[str], shapes: Sequence[str]
) -> str:
    """What differs between a model's keys and a file's, naming the first
    :data:`SHOWN_KEYS` of each kind, e.g. ``the file lacks 2 keys of the model (a, b);
    1 tensor has another shape (c is [4] in the file, [8] in the model)``; empty when
    nothing does."""

    def some(items: Sequence[str]) -> str:
        more = f", and {len(items) - SHOWN_KEYS} more" if len(items) > SHOWN_KEYS else ""
        return ", ".join(items[:SHOWN_KEYS]) + more

    def count(items: Sequence[str], noun: str) -> str:
        return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"

    parts = []
    if missing:
        parts.append(f"the file lacks {count(missing, 'key')} of the model ({some(missing)})")
    if unexpected:
        parts.append(f"it holds {count(unexpected, 'key')} the model has not ({some(unexpected)})")
    if shapes:
        verb = "has" if len(shapes) == 1 else "have"
        parts.append(f"{count(shapes, 'tensor')} {verb} another shape ({some(shapes)})")
    return "; ".join(parts)


def check_readable(path: Path) -> None:
    """Read the header of the safetensors file ``path`` (not its tensors).

    Raises:
        WeightsError: ``path`` is not a safetensors file, or is truncated.
    """
    try:
        with safe_open(str(path), "pt"):
            pass
    except (SafetensorError, OSError) as err:
        raise WeightsError(unreadable_message(path, err)) from None


def load_trained(folder: str | Path) -> Method:
    """Rebuild the method of a run, checkpoint or mmcontrast export folder, with its weights.

    Towers are built from their configs only (no pretrained download); the folder's
    ``model.safetensors`` replaces every weight, and a checkpoint's ``ema.safetensors`` (a run
    with ``train.ema_decay``) then replaces the trained model's, as the final weights do. Tower names that are sub-folders of
    ``folder`` (as in ``mmcontrast export`` folders) resolve against it.
    """
    folder = Path(folder)
    if not (folder / "config.yaml").is_file():
        other = (
            " (it is a transformers or open_clip folder: load it with its own library, or with "
            "mmcontrast.load_model to embed images and texts)"
            if (folder / "config.json").is_file() or (folder / "open_clip_config.json").is_file()
            else ""
        )
        raise FileNotFoundError(
            f"{folder} holds no config.yaml{other}: pass an mmcontrast run, checkpoint or "
            "export folder in mmcontrast's format"
        )
    fixed = [  # towers are built from config only; the folder's weights replace them
        "model.vision.pretrained=false",
        "model.text.pretrained=false",
        "model.vision.weights=null",
        "model.text.weights=null",
    ]
    cfg = load_recipe(folder / "config.yaml", fixed)
    for tower in (cfg.model.vision, cfg.model.text):
        for attr in ("name", "tokenizer"):
            value = getattr(tower, attr)
            if value and (folder / value).exists():
                setattr(tower, attr, str(folder / value))
    try:
        method = build_method(cfg)
    except ValueError as err:
        if not (cfg.model.init_from and str(err).startswith("model.init_from")):
            raise
        raise ValueError(
            f"{folder} was fine-tuned from {cfg.model.init_from} (model.init_from in its "
            "config.yaml), which it needs for its architecture, tokenizer and preprocessing "
            f"(its weights are in {WEIGHTS_FILE}); that source cannot be read now: put it "
            "back, or set model.init_from in config.yaml to where it is now. "
            f"The error was: {err}"
        ) from None
    load_weights(method, folder)
    if (folder / EMA_FILE).is_file():  # a checkpoint of a run with an EMA: the average is the model
        load_ema(method.trained_model(), folder / EMA_FILE)
    return method.eval()


def merge_lora(method: Method) -> Method:
    """``method`` with its LoRA/DoRA adapters folded into the base weights (in place) and
    ``lora`` dropped from its config: plain weights, keys of a model without adapters,
    loadable without peft (export, WiSE-FT)."""
    if merge_adapters(method):
        for modality in ("vision", "text"):
            getattr(method.cfg.model, modality).lora = None
        for module in method.modules():
            if isinstance(module, Tower):
                module.cfg = dataclasses.replace(module.cfg, lora=None)
    return method
