"""The one training loop: accelerate, any method, checkpoints that resume exactly.

Flow: config -> method (model + data) -> DataLoader -> ``accelerator.prepare`` -> for each
batch ``method(batch)["loss"]`` -> backward / clip / step under ``accelerator.accumulate``
-> log, checkpoint, evaluate -> final weights and evaluation in ``output_dir``. Evaluation,
pictures and Hub sync come from the layers above through :class:`TrainHooks`.

With P processes each takes its own batches (accelerate shards the loader by batch). A
method whose loss gathers every process's samples (``loss.gather_distributed``) returns
the whole batch's loss with the gradient of this process's share; DDP averages gradients,
so the loop back-propagates P x loss and the weights follow the P*B batch exactly. The
logged loss is the mean over processes: the P*B batch's loss, for a gathering loss as for a
per-sample mean (BYOL).

Streamed data (``data.streaming``) comes through a :class:`StreamLoader` instead of a
prepared DataLoader: endless, read per process, its positions saved in every checkpoint.

With ``train.grad_cache_micro_batch`` a batch's forward and backward go through
:func:`mmcontrast.train.grad_cache.grad_cache_backward` (the whole batch's loss, one
micro-batch's activations at a time); clipping, stepping and logging stay as they are.

With ``train.ema_decay`` the loop keeps a moving average of the trained model's weights
(:class:`mmcontrast.train.ema.WeightsEma`), updated after each optimiser step and saved in
every checkpoint. The evaluations every ``eval.every`` steps score the EMA (swapped in, then
the raw weights put back, so training goes on unchanged), as do the final evaluation and
the final weights (``model.safetensors``): what is evaluated is what is shipped. The
step-0 evaluation needs no swap: the EMA starts as the weights. Checkpoints keep the raw
weights (the optimiser's) beside ``ema.safetensors``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import time
from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DistributedDataParallelKwargs,
    DistributedType,
    TorchDynamoPlugin,
    gather_object,
    set_seed,
)
from torch import nn
from torch.utils.data import DataLoader

from mmcontrast.config import Config, check_schedule, save_config, to_dict
from mmcontrast.data.images import set_max_image_pixels
from mmcontrast.data.skips import SkippedRows
from mmcontrast.data.streaming import StreamedPairs, StreamLoader
from mmcontrast.data.workers import ignore_stop_signals
from mmcontrast.distributed import all_reduce_max
from mmcontrast.methods.base import Method, build_method
from mmcontrast.methods.trained import WEIGHTS_FILE
from mmcontrast.models.tower import count_parameters
from mmcontrast.train.checkpoint import (
    TrainerState,
    find_resume_folder,
    full_state_dict,
    list_checkpoints,
    load_schedule,
    read_state,
    remove_checkpoint,
    save_checkpoint,
    save_weights,
    without_pickled_objects,
)
from mmcontrast.train.ema import WeightsEma
from mmcontrast.train.errors import NonFiniteTraining, TrainingInterrupted
from mmcontrast.train.grad_cache import (
    check_grad_cache_support,
    grad_cache_backward,
    micro_batches_per_batch,
)
from mmcontrast.train.hooks import Evaluate, TrainHooks
from mmcontrast.train.optim import build_optimizer, cosine_schedule, weight_decay_schedule
from mmcontrast.train.preemption import StopSignals
from mmcontrast.train.progress import Progress
from mmcontrast.train.resume_checks import check_resume, explained_load_errors
from mmcontrast.train.sampler import EpochShuffleSampler

logger = logging.getLogger("mmcontrast")

__all__ = ["TrainHooks", "build_loader", "train"]


def train(
    cfg: Config, resume: str | None = None, hooks: TrainHooks | None = None
) -> dict[str, Any]:
    """Train ``cfg``; ``resume`` is a checkpoint folder or ``latest``. Returns a summary.

    The run's saved config is the method's (its defaults filled in); ``cfg`` is not changed.
    """
    hooks = hooks or TrainHooks()
    output_dir = Path(cfg.train.output_dir)
    chunks = micro_batches_per_batch(cfg.train)  # gradient caching: micro-batches per batch
    accelerator = Accelerator(
        cpu=_multi_process_cpu(),
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=cfg.train.gradient_accumulation_steps,
        log_with=cfg.train.trackers or None,
        project_dir=str(output_dir),
        kwargs_handlers=[
            DistributedDataParallelKwargs(find_unused_parameters=cfg.train.find_unused_parameters)
        ],
        dynamo_plugin=_compile_plugin(cfg),
    )
    if hooks.start is not None:
        hooks.start(cfg)
    if cfg.hub.push_to_hub and hooks.run_finished is None:
        logger.warning(
            "hub.push_to_hub is set but nothing here pushes: train through "
            "mmcontrast.pipeline.train (as `mmcontrast train` does), which wires the Hub sync"
        )
    if resume == "auto":  # the newest checkpoint, or a fresh run when there is none yet
        resume = _resume_auto(output_dir)
        if resume == "finished":  # a requeued job whose run ended: nothing left to do
            accelerator.print(f"{output_dir} holds a finished run ({WEIGHTS_FILE})")
            return {"step": None, "history": [], "already_finished": True}
    if not resume:
        _claim_output_dir(output_dir, cfg.train.overwrite_output_dir, accelerator.is_main_process)
        accelerator.wait_for_everyone()  # every process looked before the main one writes
    set_seed(cfg.train.seed)
    set_max_image_pixels(cfg.data.max_image_pixels)  # before train_data(), which may decode
    method = sync_batchnorm(build_method(cfg), cfg, accelerator.num_processes, accelerator.device)
    cfg = method.cfg  # with the method's defaults, as saved beside checkpoints and weights
    accelerator.print(trainable_summary(method))
    if cfg.train.allow_tf32 and accelerator.device.type == "cuda":
        torch.set_float32_matmul_precision("high")
    if chunks:
        check_grad_cache_support(method, accelerator)
    dataset, collate = method.train_data()
    optimizer = build_optimizer(method, cfg.train, method.lr_prefixes(), method.fixed_lr_prefixes())
    streamed = isinstance(dataset, StreamedPairs)
    if streamed and not cfg.train.max_steps:
        raise ValueError("streamed data (data.streaming) has no length: set train.max_steps")
    loader: Any = build_loader(
        cfg,
        dataset,
        collate,
        accelerator.process_index,
        accelerator.num_processes,
        accelerator.device,
    )
    if streamed:  # endless, read per process: not prepared (no sharding or dispatching)
        method, optimizer = accelerator.prepare(method, optimizer)
        total_steps = int(cfg.train.max_steps or 0)
    else:
        method, optimizer, loader = accelerator.prepare(method, optimizer, loader)
        steps_per_epoch = math.ceil(len(loader) / cfg.train.gradient_accumulation_steps)
        total_steps = cfg.train.max_steps or steps_per_epoch * cfg.train.epochs
    warning = check_schedule(cfg, total_steps)
    if warning and accelerator.is_main_process:
        logger.warning(warning)
    scheduler = cosine_schedule(
        optimizer, cfg.train.warmup_steps, total_steps, cfg.train.min_lr_ratio
    )
    decay = None  # the weight decay's schedule, if any: set from the step before each step
    if cfg.train.weight_decay_end is not None:
        decay = weight_decay_schedule(optimizer, total_steps, cfg.train.weight_decay_end)
    # stepped by us once per optimiser step; checkpoints keep its position as JSON
    # (save_schedule), not through register_for_checkpointing, which pickles it
    unwrapped: Method = accelerator.unwrap_model(
        method, keep_torch_compile=False
    )  # plain keys in saved weights
    ema = _build_ema(cfg, accelerator, unwrapped)  # on the training device: after prepare

    state = TrainerState()
    if resume:
        folder = find_resume_folder(output_dir, resume)
        check_resume(folder, cfg, accelerator.num_processes)  # exact, or refused by key
        with without_pickled_objects(folder) as readable, explained_load_errors(folder):
            accelerator.load_state(str(readable))
        state = read_state(folder)
        load_schedule(scheduler, folder, state.step)
        if ema is not None:
            ema.load(folder)
        if streamed:
            loader.load(folder, accelerator.process_index)
        elif list(folder.glob("data_state_rank*.json")):
            raise ValueError(
                f"{folder} was written by a streamed run: resume it with data.streaming=true"
            )
        accelerator.print(
            f"resumed from {folder} at step {state.step} (epoch {state.epoch}, batch {state.batches_in_epoch})"
        )
        if accelerator.is_main_process:  # what came after the checkpoint is done again
            for name in ("history.jsonl", "eval_history.jsonl"):
                truncate_history(output_dir / name, state.step)
            drop_later_checkpoints(output_dir / "checkpoints", state.step)
    if accelerator.is_main_process:
        save_config(cfg, output_dir / "config.yaml")  # a fresh run's histories: _claim_output_dir
    accelerator.init_trackers("mmcontrast", config=_flat_config(cfg))

    if decay is not None:
        decay(state.step)  # the first step's rate (a resumed run: its step's)
    loss_factor = _loss_factor(accelerator.num_processes, unwrapped)
    stop_at = min(total_steps, cfg.train.stop_at_step or total_steps)
    history: list[dict[str, float]] = []
    skipped = SkippedRows()  # distinct bad rows, named; those dropped at load counted once
    if accelerator.is_main_process:
        skipped.add_at_load(getattr(dataset, "skipped_at_load", {}))
    samples_per_step = (
        cfg.train.batch_size * accelerator.num_processes * cfg.train.gradient_accumulation_steps
    )
    progress = Progress(
        stop_at, state.step, cfg.train.progress_bar, accelerator.is_main_process
    )  # a bar on a terminal, else a plain line per log_every steps
    step_losses: list[torch.Tensor] = []
    tic, tic_step = time.perf_counter(), state.step
    last_scalars: dict[str, torch.Tensor] = {}

    if hooks.evaluate is not None and not resume and _evaluate_at_start(cfg):
        # before/after: the starting model scored with the tasks of the end (eval/step-00000000)
        with progress.paused():
            _evaluate(accelerator, hooks.evaluate, unwrapped, output_dir, 0, False)
    nonfinite = NonFiniteSteps(accelerator)
    first_batches = first_empty = 0  # of this invocation, for _require_usable_data
    window_nonfinite = False  # a non-finite loss or gradient in this optimiser step's batches
    # SIGTERM / SIGINT: a checkpoint after the step, then TrainingInterrupted
    with StopSignals() as stops, progress:
        method.train()
        data_state = loader if streamed else None  # checkpoints keep the streams' positions
        while state.step < stop_at:
            epoch_loader = loader
            if not streamed:  # a streamed loader never ends and resumes from its own state
                loader.set_epoch(state.epoch)
                if hasattr(dataset, "set_epoch"):
                    dataset.set_epoch(state.epoch)
                if state.batches_in_epoch:
                    epoch_loader = accelerator.skip_first_batches(loader, state.batches_in_epoch)
            for batch in epoch_loader:
                skipped.add(batch.pop("skipped", {}))
                if first_batches < FIRST_BATCHES:  # all unusable: stop, rather than train on none
                    first_batches += 1
                    first_empty += not batch
                    if first_batches == FIRST_BATCHES:
                        _require_usable_data(accelerator, first_empty == first_batches, skipped)
                with accelerator.accumulate(method):
                    if batch:  # empty when every sample of the batch was unreadable
                        if chunks:  # gradient caching: the batch's loss, micro-batch by micro-batch
                            out = grad_cache_backward(
                                accelerator, method, batch, chunks, loss_factor
                            )
                        else:
                            out = method(batch)
                            accelerator.backward(out["loss"] * loss_factor)
                        batch_loss = out["loss"].detach()
                        if torch.isfinite(batch_loss).all():
                            step_losses.append(batch_loss)
                        else:
                            window_nonfinite = True
                        last_scalars = {k: v for k, v in out.items() if k != "loss"}
                        if accelerator.sync_gradients and cfg.train.max_grad_norm:
                            norm = accelerator.clip_grad_norm_(
                                method.parameters(), cfg.train.max_grad_norm
                            )
                            # fp16's loss scaler skips overflowing steps itself
                            if norm is not None and cfg.train.mixed_precision != "fp16":
                                window_nonfinite |= not bool(torch.isfinite(norm).all())
                    skip_update = accelerator.sync_gradients and _on_any_process(
                        accelerator, window_nonfinite
                    )
                    if not skip_update:  # a non-finite loss or gradient: no update from it
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                state.batches_in_epoch += 1
                if not accelerator.sync_gradients:
                    continue
                window_nonfinite = False
                if skip_update:
                    nonfinite.skip(state, cfg)
                    continue
                nonfinite.in_a_row = 0
                scheduler.step()
                state.step += 1
                weight_decay = decay(state.step) if decay is not None else None
                unwrapped.after_optimizer_step(state.step, total_steps)
                if ema is not None:
                    ema.update(state.step)
                progress.update(state.step)
                if state.step % cfg.train.log_every == 0 or state.step == stop_at:
                    toc = time.perf_counter()
                    loss = _global_mean(accelerator, step_losses)
                    record = {
                        "step": state.step,
                        "loss": loss,
                        "lr": _scheduled_lr(scheduler, optimizer),
                        "pairs_per_s": samples_per_step
                        * (state.step - tic_step)
                        / max(toc - tic, 1e-9),
                        **{k: float(v) for k, v in last_scalars.items()},
                    }
                    if weight_decay is not None:  # the rate the next step uses
                        record["weight_decay"] = weight_decay
                    if nonfinite.total:
                        record["nonfinite_skipped"] = nonfinite.total
                    history.append(record)
                    accelerator.log(
                        {f"train/{k}": v for k, v in record.items() if k != "step"}, step=state.step
                    )
                    progress.log(record)
                    if accelerator.is_main_process:
                        with open(output_dir / "history.jsonl", "a") as f:
                            f.write(json.dumps(record) + "\n")
                    tic, tic_step = time.perf_counter(), state.step
                step_losses = []
                evaluate_now = cfg.eval.every and state.step % cfg.eval.every == 0
                if hooks.evaluate is not None and evaluate_now and state.step < stop_at:
                    with ema.swapped_in() if ema is not None else contextlib.nullcontext():
                        with progress.paused():
                            _evaluate(
                                accelerator,
                                hooks.evaluate,
                                unwrapped,
                                output_dir,
                                state.step,
                                False,
                            )
                checkpointed = None
                if cfg.train.checkpoint_every and state.step % cfg.train.checkpoint_every == 0:
                    require_finite_weights(accelerator, unwrapped, state.step)
                    checkpointed = save_checkpoint(
                        accelerator,
                        cfg,
                        state,
                        cfg.train.keep_checkpoints,
                        data_state,
                        ema,
                        scheduler,
                    )
                    saved = hooks.checkpoint_saved
                    if (
                        saved is not None
                        and accelerator.is_main_process
                        and state.step < total_steps
                    ):
                        with torch.random.fork_rng(devices=[]):  # e.g. an export builds a model
                            saved(cfg, checkpointed, state.step)
                if state.step >= stop_at:
                    break
                signum = stops.requested(accelerator)
                if signum is not None:
                    _stop_for_signal(
                        accelerator, cfg, state, signum, checkpointed, unwrapped,
                        data_state, ema, scheduler,
                    )  # fmt: skip
            else:
                state.epoch += 1
                state.batches_in_epoch = 0

    summary: dict[str, Any] = {"step": state.step, "history": history}
    all_skipped = SkippedRows.merge(gather_object([skipped.to_state()]))
    if all_skipped:
        logger.warning(all_skipped.message())
        accelerator.print(f"WARNING: {all_skipped.message()}")
    summary["skipped"] = all_skipped.by_reason()
    summary["nonfinite_skipped"] = nonfinite.total
    if state.step >= total_steps or cfg.train.stop_at_step:
        require_finite_weights(accelerator, unwrapped, state.step)  # nothing non-finite saved
    if state.step >= total_steps:
        if cfg.train.checkpoint_every and state.step % cfg.train.checkpoint_every != 0:
            save_checkpoint(
                accelerator, cfg, state, cfg.train.keep_checkpoints, data_state, ema, scheduler
            )
        if ema is not None:  # the final weights and evaluation are the EMA's
            ema.copy_to_model()
            summary["ema_decay"] = ema.decay
            note = f"final weights and evaluation: the EMA (train.ema_decay={ema.decay})"
            logger.info(note)
            accelerator.print(note)
        weights = full_state_dict(unwrapped)  # every process: FSDP gathers its shards
        if accelerator.is_main_process:
            save_weights(unwrapped, cfg, output_dir, weights)
        if cfg.eval.at_end and hooks.evaluate is not None:
            summary["eval"] = _evaluate(
                accelerator, hooks.evaluate, unwrapped, output_dir, state.step, True
            )
        if accelerator.is_main_process and hooks.run_finished is not None:
            summary.update(hooks.run_finished(cfg, output_dir, state.step))
    elif cfg.train.stop_at_step:
        save_checkpoint(
            accelerator, cfg, state, cfg.train.keep_checkpoints, data_state, ema, scheduler
        )
        summary["stopped_early"] = True
        accelerator.print(
            f"stopped at step {state.step} of {total_steps} (train.stop_at_step): the "
            "checkpoint is saved; the same command with --resume, train.stop_at_step "
            "raised or unset, goes on"
        )
    accelerator.end_training()
    return summary


def _scheduled_lr(scheduler: Any, optimizer: torch.optim.Optimizer) -> float:
    """The logged rate: the fastest scheduled group's (heads, usually), not a fixed one."""
    rates = scheduler.get_last_lr()
    moving = [
        r for r, g in zip(rates, optimizer.param_groups, strict=True) if not g.get("fixed_lr")
    ]
    return max(moving or rates)


def trainable_summary(method: nn.Module) -> str:
    """``trainable parameters: 1,234 of 56,789 (2.17%)``, as peft's
    ``print_trainable_parameters`` says it (locks, LiT and LoRA adapters counted); buffers
    (a memory bank, BatchNorm statistics) are not parameters."""
    trainable, total = count_parameters(method)
    share = 100 * trainable / total if total else 0.0
    return f"trainable parameters: {trainable:,} of {total:,} ({share:.2f}%)"


def samples_per_batch(batch_size: int, dataset: Any) -> int:
    """Dataset samples per batch of ``batch_size`` rows: a dataset whose samples are groups
    of rows (``rows_per_sample``: k captions of one image) gives ``batch_size / k``.

    Raises:
        ValueError: ``batch_size`` is not a multiple of the group size.
    """
    rows = getattr(dataset, "rows_per_sample", 1)
    if batch_size % rows:
        raise ValueError(
            f"train.batch_size={batch_size} is not a multiple of data.captions_per_image={rows}: "
            "every image enters a batch with all its captions; pick a multiple"
        )
    return batch_size // rows


def build_loader(
    cfg: Config,
    dataset: Any,
    collate: Any,
    rank: int = 0,
    world: int = 1,
    device: torch.device | str = "cpu",
) -> DataLoader | StreamLoader:
    """The training batches: a :class:`StreamLoader` for streamed data, else a DataLoader
    shuffled by (seed, epoch) (accelerate shards it across processes at ``prepare``)."""
    pin_memory = torch.device(device).type == "cuda"
    batch_size = samples_per_batch(cfg.train.batch_size, dataset)
    if isinstance(dataset, StreamedPairs):
        return StreamLoader(
            dataset, batch_size, collate, cfg.data.num_workers, rank, world, device, pin_memory
        )
    size = len(cast(Sized, dataset))
    if size < batch_size:
        raise ValueError(
            f"the training data has {size} rows, fewer than the {batch_size} a batch of "
            f"train.batch_size={cfg.train.batch_size} needs"
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochShuffleSampler(size, seed=cfg.train.seed),
        collate_fn=collate,
        num_workers=cfg.data.num_workers,
        drop_last=True,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(cfg.train.seed),  # worker seeds off the global RNG
        worker_init_fn=ignore_stop_signals,  # the loop stops the run, after a step
    )


def _stop_for_signal(
    accelerator: Accelerator,
    cfg: Config,
    state: TrainerState,
    signum: int,
    checkpointed: Path | None,
    method: Method,
    data_state: StreamLoader | None,
    ema: WeightsEma | None,
    scheduler: Any,
) -> None:
    """Write a checkpoint at this step (unless one was just written) and raise
    :class:`TrainingInterrupted` on every process."""
    if checkpointed is None:
        require_finite_weights(accelerator, method, state.step)
        checkpointed = save_checkpoint(
            accelerator, cfg, state, cfg.train.keep_checkpoints, data_state, ema, scheduler
        )
    accelerator.end_training()
    name = signal.Signals(signum).name
    raise TrainingInterrupted(
        f"{name} received: stopped after step {state.step} and wrote {checkpointed}; "
        "continue with the same command and --resume (or --resume auto in a job that is "
        "requeued)",
        signum,
    )


def _resume_auto(output_dir: Path) -> str | None:
    """``--resume auto``, for a job that is requeued with the same command: ``latest`` when
    a complete checkpoint exists, ``finished`` when the final weights do, else None (a fresh
    run, which refuses an earlier attempt's files unless ``--overwrite``)."""
    if (output_dir / WEIGHTS_FILE).exists():
        return "finished"
    return "latest" if list_checkpoints(output_dir / "checkpoints") else None


def drop_later_checkpoints(root: Path, step: int) -> None:
    """Remove checkpoints past ``step`` when resuming from an older one: the run goes on from
    ``step``, and a later ``--resume`` must not pick the abandoned ones."""
    later = [folder for folder in list_checkpoints(root) if read_state(folder).step > step]
    if later:
        logger.warning(
            "resuming from step %d: removing the later checkpoints %s",
            step, ", ".join(folder.name for folder in later),
        )  # fmt: skip
    for folder in later:
        remove_checkpoint(folder)


def truncate_history(path: Path, step: int) -> None:
    """Drop the records of a JSON-lines history logged after ``step`` (and a line cut off by
    a kill), so that a resumed run's history reads as if it had never stopped."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text("".join(f"{line}\n" for line in kept))
    os.replace(partial, path)


# what a run writes into its output_dir: a fresh run there replaces them only when asked
RUN_ARTEFACTS = (
    "checkpoints", "model.safetensors", "config.yaml", "history.jsonl", "eval_history.jsonl",
    "eval", "curves.png", "views.png", "mmcontrast", "wise_ft",
)  # fmt: skip


def _claim_output_dir(output_dir: Path, overwrite: bool, is_main: bool) -> None:
    """Refuse to start a fresh run over an earlier run's files unless told to replace them
    (then they are removed first, so nothing of the old run mixes with the new one)."""
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(
            f"train.output_dir {output_dir} is a file, not a folder: choose another "
            "train.output_dir (--output-dir)"
        )
    found = [name for name in RUN_ARTEFACTS if (output_dir / name).exists()]
    if not found:
        return
    if not overwrite:
        raise FileExistsError(
            f"{output_dir} already holds an earlier run ({', '.join(found)}): pass --resume to "
            "continue it, choose another train.output_dir, or pass --overwrite "
            "(train.overwrite_output_dir=true) to replace it"
        )
    if is_main:
        for name in found:
            path = output_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def sync_batchnorm(method: Method, cfg: Config, num_processes: int, device: torch.device) -> Method:
    """``train.sync_batchnorm``: BatchNorm layers (momentum targets included) become
    ``SyncBatchNorm`` when several GPU processes train; one process needs nothing."""
    if not cfg.train.sync_batchnorm or num_processes == 1:
        return method
    if device.type != "cuda":
        raise ValueError(
            "train.sync_batchnorm needs GPUs: torch's SyncBatchNorm does not run on CPU "
            "processes; set train.sync_batchnorm=false"
        )
    return cast(Method, torch.nn.SyncBatchNorm.convert_sync_batchnorm(method))


def _compile_plugin(cfg: Config) -> TorchDynamoPlugin | None:
    """``train.compile``: accelerate compiles the method at ``prepare`` (None: eager)."""
    if not cfg.train.compile:
        return None
    return TorchDynamoPlugin(
        backend=cfg.train.compile_backend,
        mode=cfg.train.compile_mode,
        use_regional_compilation=cfg.train.compile_regional,
    )


def _build_ema(cfg: Config, accelerator: Accelerator, method: Method) -> WeightsEma | None:
    """``train.ema_decay``: the EMA of the trained model, on the training device (after
    ``prepare``); refused where processes hold only shards of the weights."""
    if cfg.train.ema_decay is None:
        return None
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise ValueError(
            f"train.ema_decay works in one process or with DDP, not with "
            f"{accelerator.distributed_type.value} (each process holds only part of the "
            "weights); set train.ema_decay=null or launch without it"
        )
    return WeightsEma(method.trained_model(), cfg.train.ema_decay)


# after a divergence; a resume keeps the optimiser's settings, so lr and warm-up need a new run
WHAT_TO_CHANGE = (
    "Clip gradients (train.max_grad_norm) and --resume, or start a new run with a lower "
    "train.lr or a longer train.warmup_steps (model.init_from=CHECKPOINT starts it from a "
    "checkpoint's weights)"
)


class NonFiniteSteps:
    """``train.nonfinite``: optimiser steps skipped for a non-finite loss or gradient norm.

    Every process skips together (the flag is reduced over processes). ``skip`` counts and
    logs the step; past ``train.nonfinite_limit`` steps in a row, or at the first with
    ``halt``, it raises :class:`NonFiniteTraining` before anything more is saved.
    """

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        self.total = 0
        self.in_a_row = 0

    def skip(self, state: TrainerState, cfg: Config) -> None:
        self.total += 1
        self.in_a_row += 1
        where = f"epoch {state.epoch}, batch {state.batches_in_epoch}, after step {state.step}"
        if cfg.train.nonfinite == "halt" or self.in_a_row > cfg.train.nonfinite_limit:
            checkpoints = list_checkpoints(Path(cfg.train.output_dir) / "checkpoints")
            kept = (
                f"the last checkpoint, {checkpoints[-1]}, is intact"
                if checkpoints
                else ("no checkpoint was written")
            )
            raise NonFiniteTraining(
                f"the loss or its gradient was not finite for {self.in_a_row} optimiser step(s) "
                f"in a row ({where}; train.nonfinite={cfg.train.nonfinite}, "
                f"nonfinite_limit={cfg.train.nonfinite_limit}); {kept}. {WHAT_TO_CHANGE}"
            )  # fmt: skip
        message = f"skipped an optimiser step: non-finite loss or gradient ({where})"
        logger.warning(message)
        self.accelerator.print(f"WARNING: {message}")


FIRST_BATCHES = 8  # batches read before a run whose every sample is unusable is stopped


def _require_usable_data(accelerator: Accelerator, all_empty: bool, skipped: SkippedRows) -> None:
    """Stop a run whose first batches held no usable sample on any process (every image
    unreadable or over ``data.max_image_pixels``, every caption empty): it would take
    optimiser steps on nothing and save the starting weights (a collective)."""
    if _on_any_process(accelerator, not all_empty):
        return
    raise ValueError(
        f"the first {FIRST_BATCHES} batches held no usable sample: {skipped.message()}. "
        "Check data.path and the files it names (images larger than "
        "data.max_image_pixels are skipped)"
    )


def require_finite_weights(accelerator: Accelerator, method: nn.Module, step: int) -> None:
    """Refuse to save weights that are not finite (every process calls it).

    Raises:
        NonFiniteTraining: Some weight is NaN or infinite on some process.
    """
    bad = any(not bool(torch.isfinite(p.detach()).all()) for p in method.parameters())
    if _on_any_process(accelerator, bad):
        raise NonFiniteTraining(
            f"the weights are not finite after step {step}: nothing is saved, earlier "
            f"checkpoints are intact. {WHAT_TO_CHANGE}"
        )


def _on_any_process(accelerator: Accelerator, flag: bool) -> bool:
    """Whether ``flag`` is set on any process (a collective: every process calls it)."""
    return bool(all_reduce_max(torch.tensor(float(flag), device=accelerator.device)).item())


def _loss_factor(num_processes: int, method: Method) -> int:
    """P for a loss that gathers (its gradient is this process's share; DDP averages), else 1."""
    return num_processes if method.loss_is_global() else 1


def _global_mean(accelerator: Accelerator, losses: list[torch.Tensor]) -> float:
    """The mean of this step's losses over micro-batches and processes (every process calls it)."""
    local = torch.stack(losses).mean() if losses else torch.tensor(float("nan"))
    return float(accelerator.reduce(local.to(accelerator.device), "mean").item())


def _multi_process_cpu() -> bool:
    """Several processes without a GPU (``torchrun --nproc_per_node N`` on CPU): use gloo."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def _evaluate(
    accelerator: Accelerator,
    evaluate: Evaluate,
    method: Method,
    output_dir: Path,
    step: int,
    final: bool,
) -> dict[str, float]:
    """Evaluate on every process (embeddings sharded) in eval mode, without touching the
    training RNGs.

    The hook writes ``eval/`` (final) or ``eval/step-N/`` on the main process; the loop adds a
    line to ``eval_history.jsonl`` and the trackers' ``eval/*`` values.
    """
    folder = output_dir / "eval" if final else output_dir / "eval" / f"step-{step:08d}"
    main = accelerator.is_main_process
    was_training = method.training
    method.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            metrics = evaluate(method, folder if main else None, step, accelerator)
    finally:
        method.train(was_training)
    if main and metrics:
        with open(output_dir / "eval_history.jsonl", "a") as f:
            finite = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}
            f.write(json.dumps({"step": step, **finite}) + "\n")  # NaN (acc5 of 3 classes): null
        accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=step)
    accelerator.wait_for_everyone()
    return metrics


def _evaluate_at_start(cfg: Config) -> bool:
    """``eval.at_start``; unset, on for runs that start from a pretrained model (init_from)."""
    if cfg.eval.at_start is not None:
        return cfg.eval.at_start
    return bool(cfg.model.init_from)


def _flat_config(cfg: Config) -> dict[str, Any]:
    """Scalar-only flattened config for trackers (tensorboard's hparams)."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            value = node if isinstance(node, int | float | str | bool) else str(node)
            flat[prefix.rstrip(".")] = value

    walk(to_dict(cfg), "")
    return flat
