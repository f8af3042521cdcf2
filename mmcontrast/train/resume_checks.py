"""Checks around resuming a checkpoint: is the resume exact, and why did loading fail.

A checkpoint's data position is counted in batches of its own size, in its own order, by its
own number of processes; its optimiser state holds its own hyper-parameters, which
``load_state`` puts back over the config's (the checkpoint's learning rate wins, silently).
:func:`check_resume` compares the run's config with the checkpoint's ``config.yaml`` and
process count before anything is loaded, and refuses, naming each key, a change that would
make the resumed run differ from one that never stopped.

:func:`explained_load_errors` wraps ``Accelerator.load_state``: a damaged file, weights of
another architecture or an optimiser state that does not fit become a
:class:`CheckpointError` that names the folder and the file, says what is wrong and what to
do.
"""

from __future__ import annotations

import logging
import pickle
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mmcontrast.config import Config, ConfigError, format_value, load_recipe
from mmcontrast.methods.trained import WeightsError, check_readable, describe_mismatch

logger = logging.getLogger("mmcontrast")

RNG_FILES = "random_states_*.pkl"  # accelerate writes one per process
TORCH_FILES = ("*.bin", "*.pt", "*.pkl")  # torch.save archives accelerate writes
IGNORED_PREFIX = "custom_checkpoint_"  # pickles never loaded (checkpoint.without_pickled_objects)

_BATCHES = "the checkpoint's data position is counted in its batches, in its order"
_SCHEDULE = "the learning-rate schedule is laid over the run's length"
_OPTIMISER = "the checkpoint's optimiser state holds the old value, which would be used instead"


def check_resume(folder: Path, cfg: Config, num_processes: int) -> None:
    """Refuse to resume ``folder`` where the run would not continue exactly.

    Args:
        folder: The checkpoint folder (its ``config.yaml`` and accelerate's files).
        cfg: The run's config as saved beside checkpoints (the method's, defaults filled in).
        num_processes: The processes of this run.

    Raises:
        ConfigError: A key of :func:`check_resume_config` differs, or the checkpoint was
            written by another number of processes.
    """
    folder = Path(folder)
    saved_path = folder / "config.yaml"
    if saved_path.is_file():
        try:
            saved = load_recipe(saved_path)
        except ConfigError as err:  # e.g. written by another mmcontrast: nothing to compare
            logger.warning("cannot compare the run's config with %s: %s", saved_path, err)
        else:
            check_resume_config(saved, cfg, folder)
    written_by = saved_processes(folder)
    if written_by is not None and written_by != num_processes:
        raise ConfigError(
            f"cannot resume {folder} exactly: it was written by {written_by} processes and this "
            f"run has {num_processes}; the data position and random states are kept per "
            f"process. Launch {written_by} processes, or start a fresh run from its weights "
            f"(model.init_from={folder}, another train.output_dir)"
        )


def check_resume_config(saved: Config, current: Config, folder: Path | None = None) -> None:
    """Refuse ``current`` where a key differs from the checkpoint's ``saved`` config in a
    way that would make the resume inexact or be ignored (:func:`resume_keys`).

    Keys that only change what happens from here on (``stop_at_step``, evaluation,
    logging, checkpoints, the loss) may change.

    Raises:
        ConfigError: Naming every such key, both values and what to do.
    """
    reasons = resume_keys(saved) | resume_keys(current)
    changed = []
    for key, why in reasons.items():
        before, now = _get(saved, key), _get(current, key)
        if _norm(before) != _norm(now):
            changed.append(
                f"  {key}: {format_value(before)} in the checkpoint, {format_value(now)} now ({why}); "
                f"resume it with {key}={format_value(before)}"
            )
    if not changed:
        return
    where = folder if folder is not None else "the checkpoint"
    raise ConfigError(
        f"cannot resume {where} exactly: the run's config differs from the checkpoint's "
        "config.yaml in\n" + "\n".join(changed) + "\nRestore these values, or start a fresh "
        f"run from its weights (model.init_from={where}, another train.output_dir)"
    )


def resume_keys(cfg: Config) -> dict[str, str]:
    """The keys a resume of a run with ``cfg`` must keep, each with the reason."""
    keys = {
        "train.batch_size": _BATCHES,
        "train.gradient_accumulation_steps": _BATCHES + " (and steps of this many batches)",
        "train.seed": "it sets the shuffle order of every epoch",
        "data.path": _BATCHES,
        "data.name": _BATCHES,
        "data.train_split": _BATCHES,
        "data.max_train_samples": "it sets the length and order of every epoch",
        "data.streaming": "streamed and indexed data keep their positions differently",
        "train.max_steps": _SCHEDULE + "; to stop early and go on later use train.stop_at_step",
        "train.warmup_steps": "it shapes the learning-rate schedule",
        "train.min_lr_ratio": "it shapes the learning-rate schedule",
        "train.optimizer": "the checkpoint's optimiser state is this optimiser's",
        "train.lr": _OPTIMISER,
        "train.weight_decay": _OPTIMISER,
        "train.weight_decay_end": "it shapes the weight-decay schedule",
        "model.vision.lr": _OPTIMISER,
        "model.text.lr": _OPTIMISER,
        "model.vision.lr_decay": _OPTIMISER,
        "model.text.lr_decay": _OPTIMISER,
    }
    if cfg.train.max_steps is None:
        keys["train.epochs"] = _SCHEDULE + "; to stop early and go on later use train.stop_at_step"
    if cfg.data.streaming:
        keys["data.shuffle_buffer"] = "it sets the order of the streamed examples"
    if cfg.train.optimizer in ("sgd", "lars"):
        keys["train.momentum"] = _OPTIMISER
    if cfg.train.optimizer == "adamw":
        keys["train.betas"] = _OPTIMISER
        keys["train.eps"] = _OPTIMISER
    if cfg.train.mixed_precision == "fp16":
        keys["train.mixed_precision"] = "only fp16 runs keep a loss scaler's state"
    return keys


def saved_processes(folder: Path) -> int | None:
    """How many processes wrote the checkpoint ``folder`` (one random-state file each), or
    None when it holds none."""
    ranks = [re.search(r"_(\d+)\.pkl$", p.name) for p in Path(folder).glob(RNG_FILES)]
    found = [int(m.group(1)) for m in ranks if m]
    return max(found) + 1 if found else None


# --------------------------------------------------------------------------- load failures


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into this run; the message names the folder and
    the file, what is wrong and what to do."""


@contextmanager
def explained_load_errors(folder: Path) -> Iterator[None]:
    """Turn an error loading the checkpoint ``folder`` (``Accelerator.load_state``, whose
    paths may be a temporary folder of links) into a :class:`CheckpointError`.

    Example:
        >>> with explained_load_errors(folder):  # doctest: +SKIP
        ...     accelerator.load_state(str(readable))
    """
    try:
        yield
    except (ConfigError, CheckpointError):
        raise
    except Exception as err:
        raise CheckpointError(explain_load_failure(folder, err)) from err


def explain_load_failure(folder: Path, err: Exception) -> str:
    """What went wrong loading the checkpoint ``folder``, naming the file, and what to do.

    A damaged file (safetensors that is cut short, a torch archive that is not one) is
    named first, whatever ``err`` says; then ``err`` is read: weights of another
    architecture, an optimiser state whose parameter groups differ, a missing file.
    """
    folder = Path(folder)
    fix = (
        f"Resume from another checkpoint of {folder.parent}, or start a fresh run "
        "(another train.output_dir)"
    )
    damaged = damaged_files(folder)
    if damaged:
        return f"cannot resume from {folder}: {'; '.join(damaged)}. {fix}"
    text = str(err)
    if isinstance(err, RuntimeError) and re.search(r"(Missing|Unexpected) key|size mismatch", text):
        return (
            f"cannot resume from {folder}: its model.safetensors does not fit the model this "
            f"config builds: {_state_dict_mismatch(text)}. The checkpoint comes from another "
            "architecture: resume with the config it was trained with (its config.yaml: "
            "method, method_args, model.*), or start a fresh run"
        )
    if isinstance(err, ValueError | KeyError) and "group" in text:
        return (
            f"cannot resume from {folder}: its optimizer.bin does not fit this run's "
            f"optimiser ({text}): the trained parameters or their grouping changed (model.*."
            "lock, unlocked_layers, lora, lr, lr_decay; train.optimizer, weight_decay). "
            "Resume with the checkpoint's config.yaml values, or start a fresh run from its "
            f"weights (model.init_from={folder})"
        )
    if isinstance(err, FileNotFoundError):
        name = Path(err.filename).name if err.filename else text
        hint = (
            " (only fp16 runs write it: resume with the checkpoint's train.mixed_precision)"
            if name == "scaler.pt"
            else ""
        )
        return f"cannot resume from {folder}: it holds no {name}{hint}. {fix}"
    if isinstance(err, pickle.UnpicklingError):
        return (
            f"cannot resume from {folder}: a file in it holds pickled objects that are not "
            f"tensors, which are never loaded (they could run code): {text.splitlines()[0]}. "
            f"{fix}"
        )
    return f"cannot resume from {folder}: {type(err).__name__}: {text}. {fix}"


def damaged_files(folder: Path) -> list[str]:
    """Each file of ``folder`` that cannot be what its name says, with why: safetensors
    whose header does not read or does not cover the file, torch archives that are not
    zip archives (cut short, or something else)."""
    problems = []
    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            check_readable(path)
        except WeightsError:
            problems.append(f"{path.name} is not a readable safetensors file (cut short?)")
    for pattern in TORCH_FILES:
        for path in sorted(Path(folder).glob(pattern)):
            if path.name.startswith(IGNORED_PREFIX):
                continue
            if not zipfile.is_zipfile(path):
                problems.append(f"{path.name} is not a torch archive (cut short, or another file)")
    return problems


def _state_dict_mismatch(text: str) -> str:
    """A few keys of torch's or safetensors' ``load_state_dict`` error message."""

    def keys(label: str) -> list[str]:
        found = re.search(label + r" key\(s\) in state_dict: ([^\n]*)", text)
        return re.findall(r'"([^"]+)"', found.group(1)) if found else []

    shapes = [
        f"{key} is {theirs} in the file, {ours} in the model"
        for key, theirs, ours in re.findall(
            r"size mismatch for ([^:]+): copying a param with shape torch\.Size\((\[[^\]]*\])\) "
            r"from checkpoint, the shape in current model is torch\.Size\((\[[^\]]*\])\)",
            text,
        )
    ]
    return describe_mismatch(keys("Missing"), keys("Unexpected"), shapes) or text


def _get(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
