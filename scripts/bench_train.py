"""Times mmcontrast's training loop against open_clip's own trainer on the same model.

Both sides train the same open_clip architecture from random weights, with the same batch
size, precision, threads, AdamW settings (lr, weight decay, betas, eps, no warm-up,
cosine schedule) and gradient clipping at norm 1, one after the other, each in its own
subprocess (so that one does not disturb the other's peak memory); ``--rounds`` (default 2)
runs each side that often, alternating the order (A B B A ...) so that a drift in the
machine's load hits both:

- **open_clip**: ``open_clip_train.main`` itself (the code behind ``python -m
  open_clip_train.main``) with ``--dataset-type synthetic --log-every-n-steps 1``,
  started through a small wrapper that registers the model config JSON
  (``open_clip.add_model_config``) and records peak memory when ``train_one_epoch``
  returns. Its per-step log lines give ``Batch (t)`` (the whole step, including the
  synthetic dataset's per-sample work: a blank PIL image through ``preprocess_train`` and
  tokenising "Dummy caption") and ``Data (t)`` (waiting for that batch, plus the previous
  step's logging). The table shows it as logged, and with ``Data (t)`` taken out. On CPU
  (``--workers 0``: workers would take cores from training) the ratio uses the latter, the
  step alone. On a GPU ``Data (t)`` also holds the wait for the previous step's kernels
  (open_clip synchronises when it logs), so the ratio uses the logged steps, with 8
  workers building samples off the critical path (``--open-clip-workers``).
- **mmcontrast**: the real loop, ``mmcontrast.train.loop.train``, unmodified, with a
  ``clip`` recipe whose towers are ``source: open_clip`` with the same config
  (``pretrained: false``, ``projection: none``). The method is ``clip``'s class with
  ``train_data`` replaced by a dataset whose collate returns one pre-made batch of random
  images and token ids (so it builds no samples), and an ``after_optimizer_step`` that
  reads peak memory after the last step and, on a GPU, synchronises, so that each step's
  time holds its kernels. Each step is timed by the loop itself (``pairs_per_s`` in
  ``history.jsonl``, ``train.log_every: 1``): the loader's sampling and its move of the
  batch to the device (free on CPU), forward + loss, ``accelerator.backward``,
  ``clip_grad_norm_``, ``optimizer.step``, ``zero_grad`` and the scheduler step.

Each side steps AdamW its own default way: open_clip with torch's per-parameter loop,
mmcontrast with torch's fused kernel (``train.fused_optimizer``, the same update);
``--unfused-optimizer`` gives mmcontrast open_clip's loop, to compare the rest alone.

The first ``--warmup-steps`` of each side are discarded; the table gives the median pairs/s
over the remaining ``--steps`` (with the 25th-75th percentile range), the ratio mmcontrast
/ open_clip, peak memory (CPU: the process's peak RSS, ``ru_maxrss``, and its rise over the
RSS after imports; GPU: ``torch.cuda.max_memory_allocated``), achieved TFLOP/s and, on a
GPU, model FLOPs utilisation: 3 x the forward FLOPs of one pair x pairs/s /
``--peak-tflops``. Forward FLOPs are counted with ``torch.utils.flop_counter`` (2 per
multiply-add), except for ViT-B-32, which uses the issue's 14.78 GFLOPs at 224 px and 77
tokens (open_clip's model profile; torch counts 14.54). Gradient checkpointing's second
forward is not counted, as usual for MFU. Other processes' CPU use while each side runs,
and CPU time the hypervisor stole (both from ``/proc/stat``), are printed too: the figures
are only clean when both are near 0.

Defaults: CPU, float32, the small ViT below (``bench-vit-w256-l6``: 64 px images in 8 px
patches, width 256, 6 layers in both towers, 77 tokens), batch 32. ``--device cuda``
switches to ViT-B-32, batch 256, bf16 autocast (open_clip ``--precision amp_bf16``,
mmcontrast ``train.mixed_precision: bf16``)::

    .venv/bin/python scripts/bench_train.py                        # CPU, about 3 minutes
    .venv/bin/python scripts/bench_train.py --batch-size 64 --steps 30 --rounds 3
    python scripts/bench_train.py --device cuda --compile          # one GPU, ViT-B-32

``--compile``: open_clip ``--torchcompile``; mmcontrast ``train.compile: true`` with
``train.compile_regional: false``, so that, like open_clip, the whole method (towers and
loss) is compiled by inductor in ``accelerator.prepare``. ``--grad-checkpointing``:
open_clip ``--grad-checkpointing``; mmcontrast ``model.vision.gradient_checkpointing`` and
``model.text.gradient_checkpointing`` (open_clip's own flag on each tower).

Needs open_clip's trainer dependencies, which mmcontrast does not: ``pip install -e '.[bench]'`` or ``pip install
'open_clip_torch[training]'`` (or just ``'webdataset>=0.2.5,<=0.2.86'``, with braceexpand).
The markdown table replaces the ``## Training throughput vs open_clip`` section of
``scripts/BENCHMARKS.md`` (``--no-markdown`` to skip).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_report import (  # scripts/bench_report.py
    MARKDOWN,
    ROOT,
    command_line,
    cpu_name,
    markdown_table,
    text_table,
    write_section,
)

HEADING = "## Training throughput vs open_clip"
SIDES = ("open_clip", "mmcontrast")
CPU_MODEL = "bench-vit-w256-l6"
CPU_MODEL_CONFIG = {  # a ViT-B-style CLIP shrunk for 2 CPU cores; 77 tokens as in every CLIP
    "embed_dim": 256,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 256, "layers": 6, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 6},
}
GPU_MODEL = "ViT-B-32"
EPILOG = """\
what is timed (steady state: median over --steps after --warmup-steps, per step):
  open_clip   open_clip_train.main --dataset-type synthetic --log-every-n-steps 1
              (in-process, with the config JSON registered): its logged Batch (t), and
              Batch (t) - Data (t), the step without building synthetic samples. The ratio
              uses the latter on CPU (--workers 0), the logged steps on a GPU (--workers 8;
              there Data (t) also holds the previous step's kernels).
  mmcontrast  mmcontrast.train.loop.train, unmodified, on a clip recipe with open_clip
              towers of the same config, fed one pre-made random batch: its own per-step
              pairs_per_s (sampler + move to device + forward + loss + backward + clip +
              AdamW + scheduler; on a GPU a synchronize ends each step).
Each side runs in its own subprocess, one after the other, with the same threads, batch,
precision (fp32 CPU / bf16 autocast GPU), AdamW settings and clipping. Peak memory: RSS
(ru_maxrss) on CPU, torch.cuda.max_memory_allocated on GPU, when training ends.

examples:
  .venv/bin/python scripts/bench_train.py                     # CPU defaults, about 3 minutes
  .venv/bin/python scripts/bench_train.py --rounds 3 --steps 30 --no-markdown
  .venv/bin/python scripts/bench_train.py --model my_clip.json --batch-size 16
  python scripts/bench_train.py --device cuda --compile       # ViT-B-32, bf16, MFU vs 989 TFLOP/s
  python scripts/bench_train.py --device cuda --grad-checkpointing --batch-size 1024
"""
REFERENCE_NOTE = {
    "cpu": "its Data (t), building synthetic samples in the training process, is left out",
    "cuda": "on a GPU Data (t) also holds the wait for the previous step's kernels, as "
    "open_clip synchronises when it logs, so the step alone is not measurable from its "
    "log; its workers build the samples off the critical path",
}
MISSING = (
    "open_clip's trainer cannot be imported ({err}): pip install 'open_clip_torch[training]' "
    "(or just 'webdataset>=0.2.5,<=0.2.86', which brings braceexpand)"
)
VIT_B_32_GFLOPS = 14.78  # forward, one pair at 224 px and 77 tokens (open_clip's model profile)
LOG_LINE = re.compile(
    r"Train Epoch: \d+ \[\s*(\d+)/\d+ .*?\] Data \(t\): ([\d.]+) Batch \(t\): ([\d.]+), "
    r"([\d.e+]+)/s.*?Loss: ([\d.e+-]+)"
)


# ---------------------------------------------------------------- shared helpers


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cuda_peak_mib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def compiled_graphs() -> int:
    """How many graphs torch.compile has built in this process (0: nothing compiled)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def model_name(model: str) -> str:
    """open_clip's name for ``model``: a config JSON registers under its file name."""
    return Path(model).stem if model.endswith(".json") else model


def register_config(model: str) -> None:
    if model.endswith(".json"):
        import open_clip

        open_clip.add_model_config(model)


# ---------------------------------------------------------------- open_clip worker


def open_clip_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """``open_clip_train.main.main`` on synthetic data; per-step times from its log."""
    set_threads(spec["threads"])
    import torch
    from open_clip_train import main as open_clip_main

    register_config(spec["model"])
    after_imports = rss_mib()
    recorded: dict[str, Any] = {}
    train_one_epoch = open_clip_main.train_one_epoch

    def timed_epoch(model: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        recorded["params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        train_one_epoch(model, *args, **kwargs)
        recorded.update(peak_rss_mib=rss_mib(), cuda_peak_mib=cuda_peak_mib())
        recorded.update(threads=torch.get_num_threads(), compiled_graphs=compiled_graphs())

    open_clip_main.train_one_epoch = timed_epoch  # main() looks the name up at call time
    logs = Path(spec["workdir"]) / "open_clip_logs"
    argv = [
        "--model", model_name(spec["model"]),
        "--dataset-type", "synthetic",
        "--train-num-samples", str(spec["batch_size"] * spec["total_steps"]),
        "--batch-size", str(spec["batch_size"]),
        "--epochs", "1",
        "--workers", str(spec["open_clip_workers"]),
        "--device", spec["device"],
        "--precision", "amp_bf16" if spec["precision"] == "bf16" else "fp32",
        "--lr", str(spec["lr"]), "--wd", str(spec["wd"]),
        "--beta1", str(spec["betas"][0]), "--beta2", str(spec["betas"][1]),
        "--eps", str(spec["eps"]),
        "--warmup", "0",
        "--grad-clip-norm", str(spec["max_grad_norm"]),
        "--log-every-n-steps", "1",
        "--seed", str(spec["seed"]),
        "--logs", str(logs),
        "--name", "bench",
        "--report-to", "",
    ]  # fmt: skip
    if spec["compile"]:
        argv.append("--torchcompile")
    if spec["grad_checkpointing"]:
        argv.append("--grad-checkpointing")
    status = open_clip_main.main(argv)
    if status not in (None, 0):
        raise RuntimeError(f"open_clip_train.main returned {status}")
    log = (logs / "bench" / "out.log").read_text().splitlines()
    steps = [m for m in map(LOG_LINE.search, log) if m]
    if len(steps) != spec["total_steps"]:
        raise RuntimeError(f"expected {spec['total_steps']} log lines, parsed {len(steps)}")
    return {
        "step_s": [float(m[3]) for m in steps],
        "data_s": [float(m[2]) for m in steps],
        "losses": [float(m[5]) for m in steps],
        "rss_after_imports_mib": after_imports,
        **recorded,
    }


# ---------------------------------------------------------------- mmcontrast worker


def mmcontrast_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The real ``train`` loop with a method whose training data is pre-made tensors."""
    set_threads(spec["threads"])
    import torch
    from torch.utils.data import Dataset

    from mmcontrast.config import Config, from_dict
    from mmcontrast.methods.clip import ImageTextContrastive
    from mmcontrast.models.tower import resolved_preprocess
    from mmcontrast.registry import METHODS
    from mmcontrast.train.loop import train

    after_imports = rss_mib()
    recorded: dict[str, Any] = {}

    class PremadeBatch(Dataset):
        """``size`` rows whose collate returns one pre-made batch (in host memory).

        open_clip's step time excludes building its batches, so this side builds none: the
        loader only samples indices. The loop moves the batch to the device, as it would
        real batches (on CPU that is free).
        """

        def __init__(self, size: int, image_size: int, length: int, vocab: int) -> None:
            gen = torch.Generator().manual_seed(spec["seed"])
            batch = spec["batch_size"]
            self.batch = {
                "pixel_values": torch.randn(batch, 3, image_size, image_size, generator=gen),
                "input_ids": torch.randint(1, vocab, (batch, length), generator=gen),
            }
            self.size = size

        def __len__(self) -> int:
            return self.size

        def __getitem__(self, i: int) -> int:
            return i

        def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
            return dict(self.batch)  # a new dict: the loop pops keys from it

    @METHODS.register("bench_synthetic_clip", "clip on random tensors (scripts/bench_train.py)")
    class SyntheticClip(ImageTextContrastive):
        def __init__(self, cfg: Any) -> None:
            super().__init__(cfg)
            recorded["params"] = sum(p.numel() for p in self.parameters() if p.requires_grad)

        def train_data(self) -> Any:  # (PremadeBatch, its collate)
            text = self.model.text
            dataset = PremadeBatch(
                size=spec["batch_size"] * spec["total_steps"],
                image_size=resolved_preprocess(self.model.vision).size,
                length=getattr(text, "context_length", 77),
                vocab=getattr(text.model, "vocab_size", 49408),
            )
            return dataset, dataset.collate

        def after_optimizer_step(self, step: int, total_steps: int) -> None:
            if spec["device"] == "cuda":  # the loop's per-step clock then holds the GPU work
                torch.cuda.synchronize()
            if step == total_steps:  # before the loop saves weights
                recorded.update(peak_rss_mib=rss_mib(), cuda_peak_mib=cuda_peak_mib())
                recorded.update(threads=torch.get_num_threads(), compiled_graphs=compiled_graphs())

    tower = {
        "source": "open_clip",
        "name": spec["model"],
        "pretrained": False,
        "gradient_checkpointing": spec["grad_checkpointing"],
    }
    cfg = from_dict(
        Config,
        {
            "method": "bench_synthetic_clip",
            "model": {
                "vision": tower,
                "text": tower,
                "embed_dim": spec["embed_dim"],
                "projection": "none",
            },
            "loss": {"name": "clip"},
            "data": {"path": "synthetic", "eval_split": None},
            "train": {
                "output_dir": str(Path(spec["workdir"]) / "mmcontrast_run"),
                "seed": spec["seed"],
                "batch_size": spec["batch_size"],
                "max_steps": spec["total_steps"],
                "lr": spec["lr"],
                "weight_decay": spec["wd"],
                "betas": list(spec["betas"]),
                "eps": spec["eps"],
                "warmup_steps": 0,
                "max_grad_norm": spec["max_grad_norm"],
                "mixed_precision": spec["precision"] if spec["precision"] == "bf16" else "no",
                "log_every": 1,
                "trackers": [],
                "progress_bar": False,
                "fused_optimizer": not spec["unfused_optimizer"],
                "compile": spec["compile"],
                "compile_regional": False,  # the whole method, as open_clip's --torchcompile
            },
            "eval": {"at_end": False},
        },
    )
    summary = train(cfg)
    history = summary["history"]
    return {
        "step_s": [spec["batch_size"] / record["pairs_per_s"] for record in history],
        "data_s": None,
        "losses": [record["loss"] for record in history],
        "rss_after_imports_mib": after_imports,
        **recorded,
    }


WORKERS = {"open_clip": open_clip_worker, "mmcontrast": mmcontrast_worker}


def worker_main(side: str, spec_path: Path) -> None:
    result = WORKERS[side](json.loads(spec_path.read_text()))
    print("\n" + json.dumps(result))


# ---------------------------------------------------------------- parent: run both sides


def forward_gflops(model: str, batch: int = 1) -> float:
    """Forward GFLOPs of one image-text pair (FLOPs = 2 x multiply-adds), counted by torch."""
    import open_clip
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    register_config(model)
    logging.disable(logging.WARNING)  # "No pretrained weights loaded": none are wanted
    net = open_clip.create_model(model_name(model))
    logging.disable(logging.NOTSET)
    size = net.visual.image_size
    size = size if isinstance(size, tuple | list) else (size, size)
    images = torch.zeros(batch, 3, *size)
    texts = torch.zeros(batch, net.context_length, dtype=torch.long)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(images, texts)
    return counter.get_total_flops() / batch / 1e9


def cpu_counters() -> tuple[float, float] | None:
    """CPU-seconds used by every process since boot, and stolen by the hypervisor (Linux)."""
    stat = Path("/proc/stat")
    if not stat.exists():
        return None
    fields = [int(x) for x in stat.read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def spawn(side: str, spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    shutil.rmtree(workdir, ignore_errors=True)  # open_clip refuses an existing experiment
    workdir.mkdir(parents=True)
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps({**spec, "workdir": str(workdir)}))
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]),
           "MKL_NUM_THREADS": str(spec["threads"]), "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    if spec["device"] == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    command = [sys.executable, __file__, "--worker", side, "--spec", str(spec_path)]
    start, before, own = time.perf_counter(), cpu_counters(), children_cpu_s()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=workdir)
    if done.returncode:
        sys.exit(f"the {side} worker failed:\n{done.stderr[-4000:]}\n{done.stdout[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - start
    after = cpu_counters()
    if before is not None and after is not None:  # others' CPU time while it ran, in cores
        others = after[0] - before[0] - (children_cpu_s() - own)
        result["others_cores"] = max(0.0, others / result["wall_s"])
        result["steal_cores"] = (after[1] - before[1]) / result["wall_s"]
    return result


def steady(result: dict[str, Any], warmup: int, exclude_data: bool = False) -> list[float]:
    """Seconds per step after the warm-up (optionally without open_clip's data time)."""
    times = result["step_s"]
    if exclude_data:
        times = [t - d for t, d in zip(times, result["data_s"], strict=True)]
    return times[warmup:]


def summarise(
    label: str, rounds: list[dict[str, Any]], args: argparse.Namespace, gflops: float,
    exclude_data: bool = False,
) -> dict[str, Any]:  # fmt: skip
    times = [t for result in rounds for t in steady(result, args.warmup_steps, exclude_data)]
    rates = sorted(args.batch_size / t for t in times)
    q1, _, q3 = statistics.quantiles(rates, n=4) if len(rates) > 1 else (rates[0],) * 3
    pairs_s = args.batch_size / statistics.median(times)
    tflops = 3 * gflops * pairs_s / 1e3
    cuda = [r["cuda_peak_mib"] for r in rounds if r.get("cuda_peak_mib") is not None]
    return {
        "side": label,
        "pairs_s": pairs_s,
        "iqr": (q1, q3),
        "step_ms": 1e3 * statistics.median(times),
        "steps": len(times),
        "peak": max(r["peak_rss_mib"] for r in rounds),
        "extra": max(r["peak_rss_mib"] - r["rss_after_imports_mib"] for r in rounds),
        "cuda": max(cuda) if cuda else None,
        "tflops": tflops,
        "mfu": tflops / args.peak_tflops if args.peak_tflops else None,
        "params": rounds[0].get("params"),
        "threads": rounds[0].get("threads"),
        "graphs": rounds[0].get("compiled_graphs"),
        "loss": (rounds[0]["losses"][0], rounds[0]["losses"][-1]),
        "wall_s": statistics.mean(r["wall_s"] for r in rounds),
        "per_round": [
            args.batch_size / statistics.median(steady(r, args.warmup_steps, exclude_data))
            for r in rounds
        ],
        "others": max((r.get("others_cores", 0.0) for r in rounds), default=0.0),
        "steal": max((r.get("steal_cores", 0.0) for r in rounds), default=0.0),
    }


# ---------------------------------------------------------------- report


def columns(rows: list[dict[str, Any]], reference: float) -> list[tuple[str, Any]]:
    """The table's columns; GPU memory and MFU only where they were measured."""
    cols: list[tuple[str, Any]] = [
        ("trainer", lambda r: r["side"]),
        ("pairs/s (median)", lambda r: f"{r['pairs_s']:.1f}"),
        ("p25-p75", lambda r: f"{r['iqr'][0]:.1f}-{r['iqr'][1]:.1f}"),
        ("ms/step", lambda r: f"{r['step_ms']:.0f}"),
        ("vs open_clip", lambda r: f"{r['pairs_s'] / reference:.3f}"),
        ("peak RSS (MiB)", lambda r: f"{r['peak']:,.0f}"),
        ("peak - after imports (MiB)", lambda r: f"{r['extra']:,.0f}"),
    ]
    if any(r["cuda"] is not None for r in rows):
        cols.append(("peak GPU alloc (MiB)", lambda r: f"{r['cuda']:,.0f}"))
    cols.append(("TFLOP/s", lambda r: f"{r['tflops']:.3f}"))
    if any(r["mfu"] is not None for r in rows):
        cols.append(("MFU", lambda r: f"{100 * r['mfu']:.1f}%"))
    return cols


def device_name(device: str) -> str:
    import torch

    if device == "cuda":
        return f"1 x {torch.cuda.get_device_name()}"
    return f"{os.cpu_count()} CPU cores ({cpu_name()})"


def setting_lines(
    args: argparse.Namespace, gflops: float, counted: float, loads: list[float]
) -> list[str]:
    from importlib.metadata import version

    import torch

    model = args.model
    if model == CPU_MODEL:
        model += f" (`{json.dumps(CPU_MODEL_CONFIG)}`)"
    return [
        f"{device_name(args.device)}, {args.threads} torch threads each, torch "
        f"{torch.__version__}, open_clip_torch {version('open_clip_torch')}, accelerate "
        f"{version('accelerate')}.",
        f"Model {model}: {gflops:.2f} GFLOPs forward per pair"
        + ("" if gflops == counted else f" (the issue's figure; torch counts {counted:.2f})")
        + " (x3 per training step). "
        f"Batch {args.batch_size}, {args.precision}, AdamW lr {args.lr} wd {args.wd} betas "
        f"{tuple(args.betas)} eps {args.eps} (open_clip: torch's default per-parameter loop; "
        f"mmcontrast: {'the same' if args.unfused_optimizer else 'fused, its default'}), "
        f"clip norm {args.max_grad_norm}, compile "
        f"{'on' if args.compile else 'off'}, gradient checkpointing "
        f"{'on' if args.grad_checkpointing else 'off'}.",
        f"{args.rounds} round(s) of each side ({' then '.join(round_order(args.rounds))}); "
        f"median over {args.steps} steps per round after {args.warmup_steps} warm-up steps.",
        f"1-minute load average {loads[0]:.2f} at the start, {loads[1]:.2f} at the end "
        f"({os.cpu_count()} cores; above {args.threads} means other jobs shared the cores).",
    ]


def round_order(rounds: int) -> list[str]:
    order: list[str] = []
    for i in range(rounds):  # alternate, so that a change in load hits both sides
        order += list(SIDES if i % 2 == 0 else reversed(SIDES))
    return order


def markdown_section(
    args: argparse.Namespace, rows: list[dict[str, Any]], cols: list[tuple[str, Any]],
    lines: list[str], notes: list[str],
) -> str:  # fmt: skip
    command = command_line("scripts/bench_train.py")
    return "\n".join([
        HEADING, "",
        f"`{command}` ({time.strftime('%Y-%m-%d')}): " + " ".join(lines), "",
        "open_clip: `open_clip_train.main --dataset-type synthetic --workers "
        f"{args.open_clip_workers} --log-every-n-steps 1`, its logged `Batch (t)` per step "
        "(which includes waiting for each batch of synthetic samples: a blank PIL image "
        "through `preprocess_train` and a tokenised caption) and `Batch (t) - Data (t)`. "
        "mmcontrast: `mmcontrast.train.loop.train` unchanged, its own per-step "
        "`pairs_per_s`, fed one pre-made batch of random tensors (the loader only samples "
        "indices). The ratio column divides by open_clip's "
        + ("step alone (`Batch (t) - Data (t)`)." if args.device == "cpu" else
           "logged steps (on a GPU `Data (t)` also holds the previous step's kernels)."),
        "",
        markdown_table(rows, cols), "",
        *notes, "",
    ])  # fmt: skip


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="where both sides train"
    )
    parser.add_argument(
        "--model",
        help=f"open_clip model name or config JSON (default: {CPU_MODEL}, a small ViT "
        f"written to a temporary JSON, on CPU; {GPU_MODEL} on cuda)",
    )
    parser.add_argument(
        "--batch-size", type=int, help="pairs per step (default: 32 on CPU, 256 on cuda)"
    )
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument(
        "--warmup-steps", type=int, help="discarded first steps (default: 3; 10 with --compile)"
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="runs of each side, alternating the order"
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch threads and OMP_NUM_THREADS"
    )
    parser.add_argument(
        "--open-clip-workers",
        type=int,
        help="open_clip's --workers, which build its synthetic samples (default: 0 on CPU, "
        "where workers would take cores from training; 8 on cuda)",
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        help="fp32, or bf16 autocast (default: fp32 on CPU, bf16 on cuda)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile (inductor) on both sides"
    )
    parser.add_argument(
        "--grad-checkpointing", action="store_true", help="activation checkpointing in both towers"
    )
    parser.add_argument(
        "--unfused-optimizer",
        action="store_true",
        help="mmcontrast with train.fused_optimizer=false (open_clip's per-parameter AdamW loop)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="the device's peak dense TFLOP/s at --precision, for MFU (default: 989, an "
        "H100 SXM in bf16, on cuda; none on CPU)",
    )
    parser.add_argument("--lr", type=float, default=5e-4, help="AdamW peak learning rate")
    parser.add_argument("--wd", type=float, default=0.2, help="AdamW weight decay")
    parser.add_argument(
        "--betas", type=float, nargs=2, default=[0.9, 0.98], metavar=("B1", "B2"), help="AdamW"
    )
    parser.add_argument("--eps", type=float, default=1e-6, help="AdamW epsilon")
    parser.add_argument(
        "--max-grad-norm", type=float, default=1.0, help="gradient clipping (both sides)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the runs' files here (open_clip's out.log, mmcontrast's history.jsonl; "
        "each run's folder is replaced); default: a temporary folder, deleted",
    )
    parser.add_argument("--no-markdown", action="store_true", help="do not write BENCHMARKS.md")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    args.model = args.model or (GPU_MODEL if gpu else CPU_MODEL)
    args.batch_size = args.batch_size or (256 if gpu else 32)
    args.precision = args.precision or ("bf16" if gpu else "fp32")
    if args.open_clip_workers is None:
        args.open_clip_workers = 8 if gpu else 0
    if args.warmup_steps is None:
        args.warmup_steps = 10 if args.compile else 3
    if args.peak_tflops is None and gpu:
        args.peak_tflops = 989.0
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        worker_main(args.worker, args.spec)
        return
    import torch

    try:
        import open_clip_train.main  # noqa: F401  (fail here, not in the worker)
    except ImportError as err:
        sys.exit(MISSING.format(err=err))
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no GPU")
    loads = [os.getloadavg()[0]]
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        model = args.model
        if model == CPU_MODEL:
            model = str(workdir / f"{CPU_MODEL}.json")
            Path(model).write_text(json.dumps(CPU_MODEL_CONFIG, indent=2))
        elif model.endswith(".json"):
            model = str(Path(model).resolve())
        register_config(model)
        import open_clip

        config = open_clip.get_model_config(model_name(model))
        if config is None:
            sys.exit(f"unknown open_clip model {args.model!r}: give a name or a config JSON")
        counted = forward_gflops(model)
        gflops = VIT_B_32_GFLOPS if model == GPU_MODEL else counted
        spec = {
            "model": model,
            "embed_dim": config["embed_dim"],
            "total_steps": args.warmup_steps + args.steps,
            "betas": list(args.betas),
            **{k: getattr(args, k) for k in (
                "device", "batch_size", "threads", "precision", "compile",
                "grad_checkpointing", "lr", "wd", "eps", "max_grad_norm", "seed",
                "open_clip_workers", "unfused_optimizer",
            )},
        }  # fmt: skip
        results: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
        for i, side in enumerate(round_order(args.rounds)):
            print(f"running {side} ({i + 1}/{2 * args.rounds}) ...", flush=True)
            results[side].append(spawn(side, spec, workdir / f"{i}-{side}"))
    loads.append(os.getloadavg()[0])
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    rows = [
        summarise("open_clip_train, as logged", results["open_clip"], args, gflops),
        summarise("open_clip_train, step (data excluded)", results["open_clip"], args, gflops,
                  exclude_data=True),
        summarise("mmcontrast train loop", results["mmcontrast"], args, gflops),
    ]  # fmt: skip
    reference = rows[1] if args.device == "cpu" else rows[0]  # see REFERENCE_NOTE
    cols = columns(rows, reference=reference["pairs_s"])
    ratio = rows[2]["pairs_s"] / reference["pairs_s"]
    lines = setting_lines(args, gflops, counted, loads)
    notes = [
        f"- ratio mmcontrast / open_clip: **{ratio:.3f}** against open_clip's "
        + ("step alone" if args.device == "cpu" else "logged steps")
        + f" ({REFERENCE_NOTE[args.device]}).",
        f"- trainable parameters: open_clip {rows[0]['params']:,}, mmcontrast "
        f"{rows[2]['params']:,}; "
        f"torch threads in training: open_clip {rows[0]['threads']}, mmcontrast "
        f"{rows[2]['threads']}.",
        f"- loss at the first and last step: open_clip {rows[0]['loss'][0]:.4f} -> "
        f"{rows[0]['loss'][1]:.4f}, mmcontrast {rows[2]['loss'][0]:.4f} -> "
        f"{rows[2]['loss'][1]:.4f} (ln {args.batch_size} = {math.log(args.batch_size):.4f}; "
        "open_clip's synthetic pairs are one blank image and one caption, so its loss stays "
        "there; mmcontrast's one random batch gets memorised).",
        f"- wall time per subprocess (start-up, {args.warmup_steps + args.steps} steps, "
        f"saving): open_clip {rows[0]['wall_s']:.0f} s, mmcontrast {rows[2]['wall_s']:.0f} s.",
        f"- other processes' CPU use while each side ran (the most of its rounds, in cores "
        f"of {os.cpu_count()}): open_clip {rows[0]['others']:.2f}, mmcontrast "
        f"{rows[2]['others']:.2f}; stolen by the hypervisor: open_clip {rows[0]['steal']:.2f}, "
        f"mmcontrast {rows[2]['steal']:.2f}"
        + (
            "."
            if max(rows[0]["others"], rows[2]["others"], rows[0]["steal"], rows[2]["steal"]) < 0.1
            else ": the cores were shared, so these figures are not clean; run again when idle."
        ),
    ]
    if args.rounds > 1:
        notes.append(
            "- median pairs/s of each round: open_clip ("
            + ("step" if args.device == "cpu" else "logged")
            + ") "
            + ", ".join(f"{x:.1f}" for x in reference["per_round"])
            + "; mmcontrast "
            + ", ".join(f"{x:.1f}" for x in rows[2]["per_round"])
            + "."
        )
    if args.compile:
        notes.append(
            f"- graphs built by torch.compile: open_clip {rows[0]['graphs']}, mmcontrast "
            f"{rows[2]['graphs']}."
        )
    print("\n".join(lines) + "\n")
    print(text_table(rows, cols) + "\n")
    print("\n".join(notes))
    if not args.no_markdown:
        write_section(HEADING, markdown_section(args, rows, cols, lines, notes))
        print(f"\nwrote the '{HEADING[3:]}' section of {MARKDOWN.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
