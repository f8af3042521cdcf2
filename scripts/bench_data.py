"""Is training loader-bound or model-bound? Data-only images/s beside the model's pairs/s.

For a recipe (default: the quickstart with its vision tower fine-tuned, so every step
decodes and augments images) it measures, on this machine:

* **loader**: the trainer's own loader (``build_loader``: a ``StreamLoader`` for
  ``data.streaming``, else the shuffled DataLoader) for each ``--workers`` count:
  decoding, augmentation, caption choice, tokenisation and collation, nothing else.
  Readable images per second over ``--batches`` batches after ``--warmup``.
* **model**: the training step alone (forward, backward, clipping, optimiser step) on
  one batch from that loader, repeated: pairs per second.

It prints both and which one bounds training for each worker count. With
``--stream-from DIR`` it first writes the recipe's training data as webdataset shards
(``mmcontrast shards``) and then benchmarks streaming them. With ``--write`` the table
also replaces its section of ``scripts/BENCHMARKS.md`` (one section for the table, one
for streamed shards).

    .venv/bin/python scripts/bench_data.py                                   # imagefolder
    .venv/bin/python scripts/bench_data.py --stream-from /tmp/emoji-shards   # tar shards
    .venv/bin/python scripts/bench_data.py --set train.batch_size=64 --workers 0 2
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

SCRIPTS = Path(__file__).resolve().parent
if str(SCRIPTS) not in sys.path:  # bench_report.py sits beside this file (tests load it by path)
    sys.path.insert(0, str(SCRIPTS))

from bench_report import add_write_flag, command_line, cpu_name, publish  # noqa: E402

ROOT = SCRIPTS.parent
HEADINGS = {  # BENCHMARKS.md section per data source
    False: "## Data throughput: imagefolder table, loader or model?",
    True: "## Data throughput: streamed tar shards, loader or model?",
}
DEFAULT_SETS = [
    "train.cache_locked_features=false",  # decode images every step, as real training does
    "model.vision.lock=false",
    "data.random_resized_crop=[0.8, 1.0]",
    "data.horizontal_flip=0.5",
]


def recipe_config(args: argparse.Namespace, workers: int) -> Any:
    from mmcontrast.config import load_recipe

    sets = [*DEFAULT_SETS, *args.set, f"data.num_workers={workers}", "train.trackers=[]"]
    if args.stream_from:
        sets += [f"data.path={args.stream_from}", "data.streaming=true"]
    return load_recipe(args.recipe, sets)


def loader_rate(cfg: Any, method: Any, batches: int, warmup: int) -> tuple[float, dict[str, Any]]:
    """Images per second of the trainer's loader, and one batch for the model step."""
    from mmcontrast.train.loop import build_loader

    dataset, collate = method.train_data()
    loader = build_loader(cfg, dataset, collate)
    iterator = iter(loader)
    first = next(iterator)
    for _ in range(warmup - 1):
        next(iterator)
    images, tic = 0, time.perf_counter()
    for batch in itertools.islice(iterator, batches):
        images += len(batch.get("pixel_values", ()))
    seconds = time.perf_counter() - tic
    del iterator  # stops the workers
    return images / seconds, first


def model_rate(cfg: Any, method: Any, batch: dict[str, Any], steps: int, warmup: int) -> float:
    """Pairs per second of the training step alone (forward, backward, clip, step)."""
    from accelerate import Accelerator

    from mmcontrast.train.optim import build_optimizer

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    optimizer = build_optimizer(method, cfg.train, method.lr_prefixes())
    method, optimizer = accelerator.prepare(method, optimizer)
    batch = {k: v.to(accelerator.device) for k, v in batch.items() if k != "skipped"}
    method.train()

    def step() -> None:
        accelerator.backward(method(batch)["loss"])
        if cfg.train.max_grad_norm:
            accelerator.clip_grad_norm_(method.parameters(), cfg.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    tic = time.perf_counter()
    for _ in range(steps):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return steps * len(batch["input_ids"]) / (time.perf_counter() - tic)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "quickstart.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=10, help="timed loader batches")
    parser.add_argument("--steps", type=int, default=5, help="timed model steps")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--stream-from", help="write the recipe's data as tar shards here and stream them"
    )
    add_write_flag(parser)
    args = parser.parse_args(argv)
    from mmcontrast.methods import build_method

    if args.stream_from and not Path(args.stream_from).is_dir():
        from mmcontrast.cli import main as cli

        source = recipe_config(argparse.Namespace(**{**vars(args), "stream_from": None}), 0)
        cli(["shards", source.data.path, "--output", args.stream_from, "--shard-size", "250",
             "--image-column", source.data.image_column,
             "--caption-column", source.data.caption_column])  # fmt: skip

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU only"
    machine = (
        f"{os.cpu_count()} CPU cores ({cpu_name()}), {device}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads"
    )
    print(f"# {machine}")
    model_pairs = None
    rows = []
    for workers in args.workers:
        cfg = recipe_config(args, workers)
        torch.manual_seed(0)
        method = build_method(cfg)
        images_per_s, batch = loader_rate(cfg, method, args.batches, args.warmup)
        if model_pairs is None:
            model_pairs = model_rate(cfg, method, batch, args.steps, args.warmup)
            print(
                f"model step alone: {model_pairs:.1f} pairs/s (batch {cfg.train.batch_size}, "
                f"{cfg.train.mixed_precision} precision)"
            )
        source = "streamed shards" if cfg.data.streaming else "table"
        rows.append((workers, source, images_per_s))
    assert model_pairs is not None
    lines = [
        "| data.num_workers | data | loader images/s | model pairs/s | bound by |",
        "| --- | --- | --- | --- | --- |",
    ]
    for workers, source, rate in rows:
        bound = "loader" if rate < model_pairs else "model"
        lines.append(f"| {workers} | {source} | {rate:.1f} | {model_pairs:.1f} | {bound} |")
    table = "\n".join(lines)
    reading = (
        "The loader runs in the main process with 0 workers, so the step then pays for both; "
        "with workers it overlaps the model and training runs at about min(loader, model)."
    )
    print("\n" + table + "\n\n" + reading)
    overrides = " ".join(f"`{s}`" for s in [*DEFAULT_SETS, *args.set])
    heading = HEADINGS[bool(args.stream_from)]
    section = "\n".join([
        heading, "",
        f"`{command_line('scripts/bench_data.py', argv)}` ({time.strftime('%Y-%m-%d')}): "
        f"{machine}. Recipe `{Path(args.recipe).name}` with {overrides}; batch "
        f"{cfg.train.batch_size}, {cfg.train.mixed_precision} precision. Loader: "
        f"{args.batches} batches after {args.warmup} warm-up; model: {args.steps} steps "
        "after the warm-up, on one batch of that loader.", "",
        table, "",
        reading, "",
    ])  # fmt: skip
    publish(heading, section, args.write)


if __name__ == "__main__":
    main()
