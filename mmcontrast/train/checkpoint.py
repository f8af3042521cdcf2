"""Checkpoints: accelerate's full state plus where training stood, and the final weights.

A checkpoint folder holds what ``Accelerator.save_state`` writes (model, optimiser, grad
scaler, every RNG: tensors and plain values that accelerate reloads with ``weights_only``),
the learning-rate schedule's position as JSON (``scheduler.json``; never a pickle, which
would run code when read), ``trainer_state.json`` (step, epoch, batches consumed
in that epoch), the resolved ``config.yaml``, with ``train.ema_decay`` the moving average of
the weights (``ema.safetensors``, :mod:`mmcontrast.train.ema`) and, for streamed data, each
process's stream positions (``data_state_rank*.json``). The newest checkpoint is found by the
step recorded inside, not by parsing folder names.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
from accelerate import Accelerator
from safetensors import SafetensorError
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.tensor import DTensor
from torch.optim.lr_scheduler import LRScheduler

from mmcontrast.config import Config, save_config
from mmcontrast.distributed import all_reduce_max
from mmcontrast.methods.trained import WEIGHTS_FILE
from mmcontrast.models.weights import save_state_file

if TYPE_CHECKING:
    from mmcontrast.data.streaming import StreamLoader
    from mmcontrast.train.ema import WeightsEma

logger = logging.getLogger("mmcontrast")

STATE_FILE = "trainer_state.json"
SCHEDULE_FILE = "scheduler.json"
PARTIAL_PREFIX = ".partial-"  # a checkpoint being written


@dataclass
class TrainerState:
    step: int = 0  # optimiser steps taken
    epoch: int = 0  # current epoch
    batches_in_epoch: int = 0  # batches of ``epoch`` already consumed


def save_checkpoint(
    accelerator: Accelerator,
    cfg: Config,
    state: TrainerState,
    keep: int,
    data_state: StreamLoader | None = None,
    ema: WeightsEma | None = None,
    scheduler: LRScheduler | None = None,
) -> Path:
    """Write a checkpoint under ``output_dir/checkpoints`` and prune the oldest beyond ``keep``.

    ``data_state`` (a streamed run's loader) writes each process's stream positions; ``ema``
    (the same on every process) is written by the main process, as safetensors;
    ``trainer_state.json``, which marks the checkpoint complete, is written last. Everything
    goes into ``.partial-step-N`` first, is flushed to disk, then renamed to ``step-N``: a
    kill or a full disk mid-write leaves no folder that looks complete, and the previous
    checkpoints untouched. The oldest checkpoints beyond ``keep`` go before the write (never
    the newest complete one), so the disk holds at most ``keep`` checkpoints while one is
    written (2 with ``keep=1``). A write that fails on any process (a full disk) is removed
    and raised on every process as :class:`CheckpointWriteError`.
    """
    root = Path(cfg.train.output_dir) / "checkpoints"
    folder = root / f"step-{state.step:08d}"
    partial = root / f"{PARTIAL_PREFIX}{folder.name}"  # renamed to ``folder`` once complete
    if accelerator.is_main_process:
        for leftover in root.glob(f"{PARTIAL_PREFIX}*"):  # a write or a removal cut off
            shutil.rmtree(leftover, ignore_errors=True)
        # room for the new one first, keeping at least the newest complete checkpoint
        _prune(root, max(keep - 1, 1) if keep > 0 else 0, but=folder)
    accelerator.wait_for_everyone()
    error: BaseException | None = None
    try:
        accelerator.save_state(str(partial))
        if data_state is not None:
            data_state.save(partial, accelerator.process_index)
        if accelerator.is_main_process:
            if ema is not None:
                ema.save(partial)
            if scheduler is not None:
                save_schedule(scheduler, partial)
            save_config(cfg, partial / "config.yaml")
            (partial / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
    except (OSError, RuntimeError, SafetensorError) as err:  # a full disk, as each reports it
        error = err
    # every process learns whether any part failed (and waits for the others' parts)
    flag = torch.tensor(float(error is not None), device=accelerator.device)
    if all_reduce_max(flag).item():
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        accelerator.wait_for_everyone()
        raise CheckpointWriteError(folder, error) from error
    if accelerator.is_main_process:
        _sync_files(partial)
        if folder.exists():  # the same step saved again (a resumed run): the new one wins
            remove_checkpoint(folder)
        os.replace(partial, folder)
        _sync_files(root, recursive=False)
        _prune(root, keep)
    accelerator.wait_for_everyone()
    return folder


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, usually); its partial folder is gone
    and the newest complete checkpoint is intact."""

    def __init__(self, folder: Path, err: BaseException | None) -> None:
        kept = list_checkpoints(folder.parent)
        newest = f"the newest complete one, {kept[-1]}, is intact" if kept else "none is complete"
        why = str(err) if err is not None else "another process could not write its part"
        full = isinstance(err, OSError) and err.errno == errno.ENOSPC or "write" in why
        hint = "free space on the disk" if full else "check the folder can be written"
        super().__init__(
            f"could not write checkpoint {folder.name} ({why}); nothing of it was kept and "
            f"{newest}. {hint.capitalize()} (a lower train.keep_checkpoints keeps fewer), "
            "then continue with --resume"
        )


def _prune(root: Path, keep: int, but: Path | None = None) -> None:
    """Remove the oldest complete checkpoints beyond the newest ``keep`` (0: keep all)."""
    if keep <= 0:
        return
    for old in list_checkpoints(root)[:-keep]:
        if old != but:
            remove_checkpoint(old)


def remove_checkpoint(folder: Path) -> None:
    """Delete a checkpoint so that a kill midway leaves nothing that looks complete: renamed
    to a ``.partial-`` name first (skipped by :func:`list_checkpoints`, removed by the next
    write)."""
    doomed = folder.with_name(f"{PARTIAL_PREFIX}old-{folder.name}")
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def save_schedule(scheduler: LRScheduler, folder: Path) -> None:
    """The schedule's position (step count, base and last rates) as JSON; its lambdas are
    code, rebuilt from the config."""
    state = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
    (Path(folder) / SCHEDULE_FILE).write_text(json.dumps(state, indent=2))


def load_schedule(scheduler: LRScheduler, folder: Path, step: int) -> None:
    """Put ``scheduler`` where the checkpoint ``folder`` left it.

    A checkpoint without ``scheduler.json`` (written by an older mmcontrast, which let
    accelerate pickle the schedule) is placed at ``step`` from its lambdas: the pickle is
    never read, since unpickling can run any code.
    """
    path = Path(folder) / SCHEDULE_FILE
    if path.is_file():
        state = json.loads(path.read_text())
        state["lr_lambdas"] = [None] * len(scheduler.base_lrs)  # type: ignore[attr-defined]
        scheduler.load_state_dict(state)
        return
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if lambdas is None:
        raise ValueError(f"{folder} holds no {SCHEDULE_FILE}: cannot place the schedule")
    scheduler.last_epoch, scheduler._step_count = step, step + 1  # type: ignore[attr-defined]
    scheduler._last_lr = [  # type: ignore[attr-defined]
        base * fn(step) for base, fn in zip(scheduler.base_lrs, lambdas, strict=True)
    ]


@contextmanager
def without_pickled_objects(folder: Path) -> Iterator[Path]:
    """``folder`` for ``Accelerator.load_state``, less any ``custom_checkpoint_*.pkl``.

    accelerate unpickles those (registered objects) with ``weights_only=False``, which runs
    whatever code the file holds. mmcontrast registers none; a checkpoint that has them (an
    older mmcontrast's, or a planted file) is read through a folder of links to its other
    files, and the pickles are named in a warning, never opened.
    """
    pickled = sorted(Path(folder).glob("custom_checkpoint_*"))
    if not pickled:
        yield Path(folder)
        return
    logger.warning(
        "ignoring %s in %s: pickled objects are not loaded (they could run code)",
        ", ".join(p.name for p in pickled),
        folder,
    )
    with tempfile.TemporaryDirectory(prefix="mmcontrast-resume-") as links:
        for path in Path(folder).iterdir():
            if path not in pickled:
                (Path(links) / path.name).symlink_to(path.resolve())
        yield Path(links)


def read_state(folder: Path) -> TrainerState:
    return TrainerState(**json.loads((Path(folder) / STATE_FILE).read_text()))


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (by recorded step); folders still
    being written, or whose ``trainer_state.json`` cannot be read, are left out (named in a
    warning)."""
    steps: dict[Path, int] = {}
    for folder in Path(root).glob("*/"):
        if folder.name.startswith(PARTIAL_PREFIX) or not (folder / STATE_FILE).is_file():
            continue
        try:
            steps[folder] = read_state(folder).step
        except (ValueError, TypeError, OSError) as err:
            logger.warning("skipping checkpoint %s: unreadable %s (%s)", folder, STATE_FILE, err)
    return sorted(steps, key=steps.__getitem__)


def _sync_files(folder: Path, recursive: bool = True) -> None:
    """Flush ``folder``'s files (and the folder entries) to disk before it is renamed."""
    paths = [p for p in folder.rglob("*") if p.is_file()] if recursive else []
    for path in [*paths, folder]:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:  # some file systems cannot sync a folder
            pass
        finally:
            os.close(fd)


def find_resume_folder(output_dir: str | Path, resume: str) -> Path:
    """``resume`` is a checkpoint folder, or ``latest`` for the newest one of ``output_dir``."""
    if resume != "latest":
        folder = Path(resume)
        if not (folder / STATE_FILE).is_file():
            raise FileNotFoundError(
                f"{resume!r} is not a checkpoint folder (no {STATE_FILE} inside)"
            )
        try:
            read_state(folder)
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"{folder / STATE_FILE} cannot be read ({err}): the checkpoint is incomplete; "
                "resume from another one, or pass --resume latest for the newest complete one"
            ) from None
        return folder
    checkpoints = list_checkpoints(Path(output_dir) / "checkpoints")
    if not checkpoints:
        raise FileNotFoundError(f"--resume latest: no checkpoint under {output_dir}/checkpoints")
    return checkpoints[-1]


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Every weight whole: parameters sharded by FSDP2 (DTensors) are gathered to the main
    process (a collective: every process calls it; the others get an empty dict)."""
    if any(isinstance(p, DTensor) for p in model.parameters()):
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return cast(dict[str, Tensor], get_model_state_dict(model, options=options))
    return model.state_dict()


def save_weights(
    model: nn.Module, cfg: Config, folder: str | Path, state: dict[str, Tensor] | None = None
) -> Path:
    """Final weights (safetensors) and the resolved config, loadable with
    :func:`mmcontrast.methods.load_trained`.

    ``state``: the weights when ``model.state_dict()`` would hold shards (:func:`full_state_dict`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = model.state_dict() if state is None else state
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_state_file(state, str(folder / WEIGHTS_FILE))
    save_config(cfg, folder / "config.yaml")
    return folder / WEIGHTS_FILE
