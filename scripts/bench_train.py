"""Training throughput: mmcontrast's loop against open_clip's own trainer on the same model.

Both sides train the same open_clip architecture from random weights, each in its own
subprocess, with the same batch, precision, threads, AdamW settings and clipping; over
``--rounds`` the order alternates (A B B A ...). open_clip runs ``open_clip_train.main
--dataset-type synthetic`` (step times parsed from its log); mmcontrast runs
``mmcontrast.train.loop.train`` unmodified, fed one pre-made batch (step times from its
history). Prints median pairs/s, ms/step, the ratio, peak memory, TFLOP/s and MFU.

    .venv/bin/python scripts/bench_train.py                     # CPU, small ViT, ~3 minutes
    .venv/bin/python scripts/bench_train.py --rounds 1 --steps 2 --warmup-steps 1
    python scripts/bench_train.py --device cuda --compile       # one GPU, ViT-B-32, bf16
    .venv/bin/python scripts/bench_train.py --write             # also record it in BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_report import (  # scripts/bench_report.py
    add_write_flag,
    command_line,
    cpu_name,
    markdown_table,
    publish,
    text_table,
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
VIT_B_32_GFLOPS = 14.78  # forward, one pair at 224 px and 77 tokens (open_clip's model profile)
# open_clip's ViT-B-32 recipe; the same on both sides (throughput does not depend on them)
OPTIM: dict[str, Any] = {
    "lr": 5e-4,
    "wd": 0.2,
    "betas": [0.9, 0.98],
    "eps": 1e-6,
    "max_grad_norm": 1.0,
    "seed": 0,
}
LOG_LINE = re.compile(
    r"Train Epoch: \d+ \[\s*(\d+)/\d+ .*?\] Data \(t\): ([\d.]+) Batch \(t\): ([\d.]+), "
    r"([\d.e+]+)/s.*?Loss: ([\d.e+-]+)"
)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def peaks() -> dict[str, Any]:
    """Peak memory, threads and torch.compile graphs of this process, when training ends."""
    import torch
    from torch._dynamo.utils import counters

    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {
        "peak_rss_mib": rss_mib(),
        "cuda_peak_mib": cuda,
        "threads": torch.get_num_threads(),
        "compiled_graphs": int(counters["stats"]["unique_graphs"]),
    }


def model_name(model: str) -> str:
    """open_clip's name for ``model``: a config JSON registers under its file name."""
    return Path(model).stem if model.endswith(".json") else model


def register_config(model: str) -> None:
    if model.endswith(".json"):
        import open_clip

        open_clip.add_model_config(model)


# ---------------------------------------------------------------- the two sides (subprocesses)


def open_clip_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """``open_clip_train.main.main`` on synthetic data; per-step times from its log."""
    import torch
    from open_clip_train import main as open_clip_main

    torch.set_num_threads(spec["threads"])
    register_config(spec["model"])
    after_imports = rss_mib()
    recorded: dict[str, Any] = {}
    train_one_epoch = open_clip_main.train_one_epoch

    def timed_epoch(model: torch.nn.Module, *args: Any, **kwargs: Any) -> None:
        recorded["params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        train_one_epoch(model, *args, **kwargs)
        recorded.update(peaks())

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
        "--lr", str(OPTIM["lr"]), "--wd", str(OPTIM["wd"]),
        "--beta1", str(OPTIM["betas"][0]), "--beta2", str(OPTIM["betas"][1]),
        "--eps", str(OPTIM["eps"]),
        "--warmup", "0",
        "--grad-clip-norm", str(OPTIM["max_grad_norm"]),
        "--log-every-n-steps", "1",
        "--seed", str(OPTIM["seed"]),
        "--logs", str(logs),
        "--name", "bench",
        "--report-to", "",
    ]  # fmt: skip
    argv += ["--torchcompile"] * spec["compile"] + ["--grad-checkpointing"] * spec["grad_ckpt"]
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


def mmcontrast_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The real ``train`` loop with a clip method whose training data is one pre-made batch."""
    import torch
    from bench_premade import PremadeBatch  # scripts/bench_premade.py

    from mmcontrast.config import Config, from_dict
    from mmcontrast.models.tower import resolved_preprocess
    from mmcontrast.registry import METHODS
    from mmcontrast.train.loop import train

    torch.set_num_threads(spec["threads"])
    after_imports = rss_mib()
    recorded: dict[str, Any] = {}

    @METHODS.register("bench_synthetic_clip", "clip on one random batch (scripts/bench_train.py)")
    class SyntheticClip(METHODS.get("image_text")):  # type: ignore[misc]
        def __init__(self, cfg: Config) -> None:
            super().__init__(cfg)
            recorded["params"] = sum(p.numel() for p in self.parameters() if p.requires_grad)

        def train_data(self) -> tuple[PremadeBatch, Callable[[list[int]], dict[str, Any]]]:
            text = self.model.text
            size = resolved_preprocess(self.model.vision).size
            length = getattr(text, "context_length", 77)
            vocab = getattr(text.model, "vocab_size", 49408)
            gen = torch.Generator().manual_seed(OPTIM["seed"])
            batch = spec["batch_size"]
            pixels = torch.randn(batch, 3, size, size, generator=gen)
            ids = torch.randint(1, vocab, (batch, length), generator=gen)
            dataset = PremadeBatch(
                {"pixel_values": pixels, "input_ids": ids}, batch * spec["total_steps"]
            )
            return dataset, dataset.collate

        def after_optimizer_step(self, step: int, total_steps: int) -> None:
            if spec["device"] == "cuda":  # the loop's per-step clock then holds the GPU work
                torch.cuda.synchronize()
            if step == total_steps:  # before the loop saves weights
                recorded.update(peaks())

    tower = {"source": "open_clip", "name": spec["model"], "pretrained": False,
             "gradient_checkpointing": spec["grad_ckpt"]}  # fmt: skip
    options = {
        "output_dir": str(Path(spec["workdir"]) / "mmcontrast_run"), "seed": OPTIM["seed"],
        "batch_size": spec["batch_size"], "max_steps": spec["total_steps"], "lr": OPTIM["lr"],
        "weight_decay": OPTIM["wd"], "betas": OPTIM["betas"], "eps": OPTIM["eps"],
        "warmup_steps": 0, "max_grad_norm": OPTIM["max_grad_norm"],
        "mixed_precision": "bf16" if spec["precision"] == "bf16" else "no",
        "log_every": 1, "trackers": [], "progress_bar": False,
        "fused_optimizer": not spec["unfused_optimizer"], "compile": spec["compile"],
        "compile_regional": False,  # the whole method, as open_clip's --torchcompile
    }  # fmt: skip
    model = {"vision": tower, "text": tower, "embed_dim": spec["embed_dim"], "projection": "none"}
    cfg = from_dict(Config, {
        "method": "bench_synthetic_clip", "model": model, "loss": {"name": "clip"},
        "data": {"path": "synthetic", "eval_split": None}, "train": options,
        "eval": {"at_end": False},
    })  # fmt: skip
    history = train(cfg)["history"]
    return {
        "step_s": [spec["batch_size"] / record["pairs_per_s"] for record in history],
        "data_s": None,
        "losses": [record["loss"] for record in history],
        "rss_after_imports_mib": after_imports,
        **recorded,
    }


WORKERS = {"open_clip": open_clip_worker, "mmcontrast": mmcontrast_worker}


# ---------------------------------------------------------------- parent: run and summarise


def forward_gflops(model: str) -> float:
    """Forward GFLOPs of one image-text pair (FLOPs = 2 x multiply-adds), counted by torch."""
    import open_clip
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    logging.disable(logging.WARNING)  # "No pretrained weights loaded": none are wanted
    net = open_clip.create_model(model_name(model))
    logging.disable(logging.NOTSET)
    size = net.visual.image_size
    size = size if isinstance(size, tuple | list) else (size, size)
    images = torch.zeros(1, 3, *size)
    texts = torch.zeros(1, net.context_length, dtype=torch.long)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(images, texts)
    return counter.get_total_flops() / 1e9


def busy_cpu_s() -> float | None:
    """CPU-seconds every process has used since boot (Linux ``/proc/stat``)."""
    stat = Path("/proc/stat")
    if not stat.exists():
        return None
    user, nice, system, _idle, _iowait, irq, softirq = map(int, stat.read_text().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def spawn(side: str, spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run one side in a fresh process; adds its wall time and others' CPU use (in cores)."""
    shutil.rmtree(workdir, ignore_errors=True)  # open_clip refuses an existing experiment
    workdir.mkdir(parents=True)
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps({**spec, "workdir": str(workdir)}))
    threads = str(spec["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    if spec["device"] == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    command = [sys.executable, __file__, "--worker", side, "--spec", str(spec_path)]
    start, before, own = time.perf_counter(), busy_cpu_s(), children_cpu_s()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=workdir)
    if done.returncode:
        sys.exit(f"the {side} worker failed:\n{done.stderr[-4000:]}\n{done.stdout[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - start
    after = busy_cpu_s()
    if before is not None and after is not None:
        others = after - before - (children_cpu_s() - own)
        result["others_cores"] = max(0.0, others / result["wall_s"])
    return result


def round_order(rounds: int) -> list[str]:
    """A B B A ...: a drift in the machine's load hits both sides."""
    return [s for i in range(rounds) for s in (SIDES if i % 2 == 0 else SIDES[::-1])]


def summarise(
    label: str, rounds: list[dict[str, Any]], args: argparse.Namespace, gflops: float,
    exclude_data: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """One table row: the steady-state steps of every round of one side."""

    def steady(result: dict[str, Any]) -> list[float]:
        times = result["step_s"]
        if exclude_data:  # open_clip's step without waiting for its synthetic samples
            times = [t - d for t, d in zip(times, result["data_s"], strict=True)]
        return times[args.warmup_steps :]

    times = [t for result in rounds for t in steady(result)]
    rates = [args.batch_size / t for t in times]
    q1, _, q3 = statistics.quantiles(rates, n=4) if len(rates) > 1 else (rates[0],) * 3
    pairs_s = args.batch_size / statistics.median(times)
    tflops = 3 * gflops * pairs_s / 1e3  # forward + backward = 3 forwards
    cuda = [r["cuda_peak_mib"] for r in rounds if r.get("cuda_peak_mib") is not None]
    return {
        "side": label,
        "pairs_s": pairs_s,
        "iqr": (q1, q3),
        "step_ms": 1e3 * statistics.median(times),
        "peak": max(r["peak_rss_mib"] for r in rounds),
        "extra": max(r["peak_rss_mib"] - r["rss_after_imports_mib"] for r in rounds),
        "cuda": max(cuda) if cuda else None,
        "tflops": tflops,
        "mfu": tflops / args.peak_tflops if args.peak_tflops else None,
        "params": rounds[0]["params"],
        "threads": rounds[0]["threads"],
        "graphs": rounds[0]["compiled_graphs"],
        "loss": (rounds[0]["losses"][0], rounds[0]["losses"][-1]),
        "per_round": [args.batch_size / statistics.median(steady(r)) for r in rounds],
        "others": max((r.get("others_cores", 0.0) for r in rounds), default=0.0),
    }


def columns(rows: list[dict[str, Any]], reference: float) -> list[tuple[str, Callable]]:
    """The table's columns; GPU memory and MFU only where they were measured."""
    cols: list[tuple[str, Callable]] = [
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


def settings(args: argparse.Namespace, gflops: float, loads: list[float]) -> str:
    """The machine and the run's settings, one paragraph."""
    from importlib.metadata import version

    import torch

    gpu = args.device == "cuda"
    device = f"1 x {torch.cuda.get_device_name()}" if gpu else f"{os.cpu_count()} CPU cores"
    model = args.model + (f" (`{json.dumps(CPU_MODEL_CONFIG)}`)" if args.model == CPU_MODEL else "")
    return (
        f"{device} ({cpu_name()}), {args.threads} torch threads each, torch {torch.__version__}, "
        f"open_clip_torch {version('open_clip_torch')}, accelerate {version('accelerate')}. "
        f"Model {model}: {gflops:.2f} GFLOPs forward per pair. Batch {args.batch_size}, "
        f"{args.precision}, AdamW lr {OPTIM['lr']} wd {OPTIM['wd']} betas {OPTIM['betas']} eps "
        f"{OPTIM['eps']} (open_clip: torch's per-parameter loop; mmcontrast: "
        f"{'the same' if args.unfused_optimizer else 'fused'}), clip norm "
        f"{OPTIM['max_grad_norm']}, compile "
        f"{'on' if args.compile else 'off'}, gradient checkpointing "
        f"{'on' if args.grad_checkpointing else 'off'}. {args.rounds} round(s) "
        f"({' then '.join(round_order(args.rounds))}), median over {args.steps} steps after "
        f"{args.warmup_steps} warm-up steps. Load average {loads[0]:.2f} at the start, "
        f"{loads[1]:.2f} at the end."
    )


def notes(args: argparse.Namespace, rows: list[dict[str, Any]], reference: dict) -> list[str]:
    ours = rows[2]
    theirs_rounds, our_rounds = (
        ", ".join(f"{x:.1f}" for x in r["per_round"]) for r in (reference, ours)
    )
    lines = [
        f"- ratio mmcontrast / open_clip: **{ours['pairs_s'] / reference['pairs_s']:.3f}** "
        f"(open_clip {'step, data excluded' if args.device == 'cpu' else 'as logged'}).",
        f"- trainable parameters: open_clip {rows[0]['params']:,}, mmcontrast "
        f"{ours['params']:,}; torch threads: {rows[0]['threads']}, {ours['threads']}.",
        f"- loss first -> last step: open_clip {rows[0]['loss'][0]:.4f} -> "
        f"{rows[0]['loss'][1]:.4f}, mmcontrast {ours['loss'][0]:.4f} -> {ours['loss'][1]:.4f}.",
        f"- other processes' CPU use (cores of {os.cpu_count()}): open_clip "
        f"{rows[0]['others']:.2f}, mmcontrast {ours['others']:.2f}.",
        f"- median pairs/s of each round: open_clip {theirs_rounds}; mmcontrast {our_rounds}.",
    ]
    if args.compile:
        lines.append(
            f"- graphs compiled: open_clip {rows[0]['graphs']}, mmcontrast {ours['graphs']}."
        )
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--device", choices=["cpu", "cuda"], default="cpu", help="where both sides train")
    add("--model", help=f"open_clip model name or config JSON (default: {CPU_MODEL} on CPU, "
        f"{GPU_MODEL} on cuda)")  # fmt: skip
    add("--batch-size", type=int, help="pairs per step (default: 32 on CPU, 256 on cuda)")
    add("--steps", type=int, default=20, help="timed steps per round")
    add("--warmup-steps", type=int, help="discarded first steps (default: 3; 10 with --compile)")
    add("--rounds", type=int, default=2, help="runs of each side, alternating the order")
    add("--threads", type=int, default=os.cpu_count(), help="torch threads and OMP_NUM_THREADS")
    add(
        "--open-clip-workers", type=int, help="open_clip's --workers (default: 0 on CPU, 8 on cuda)"
    )
    add("--precision", choices=["fp32", "bf16"], help="default: fp32 on CPU, bf16 on cuda")
    add("--compile", action="store_true", help="torch.compile (inductor) on both sides")
    add("--grad-checkpointing", action="store_true", help="activation checkpointing, both towers")
    add("--unfused-optimizer", action="store_true", help="mmcontrast with open_clip's AdamW loop")
    add("--peak-tflops", type=float, help="device peak for MFU (default: 989 on cuda, none on CPU)")
    add("--workdir", type=Path, help="keep the runs' logs here (default: a temporary folder)")
    add_write_flag(parser)
    add("--worker", choices=SIDES, help=argparse.SUPPRESS)
    add("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    args.model = args.model or (GPU_MODEL if gpu else CPU_MODEL)
    args.batch_size = args.batch_size or (256 if gpu else 32)
    args.precision = args.precision or ("bf16" if gpu else "fp32")
    if args.open_clip_workers is None:  # on CPU, workers would take cores from training
        args.open_clip_workers = 8 if gpu else 0
    if args.warmup_steps is None:
        args.warmup_steps = 10 if args.compile else 3
    if args.peak_tflops is None and gpu:
        args.peak_tflops = 989.0  # H100 SXM, dense bf16
    return args


def run_rounds(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, list], float]:
    """Every round of both sides, and the model's forward GFLOPs per pair."""
    import open_clip

    model = args.model
    if model == CPU_MODEL:
        model = str(workdir / f"{CPU_MODEL}.json")
        Path(model).write_text(json.dumps(CPU_MODEL_CONFIG, indent=2))
    elif model.endswith(".json"):
        model = str(Path(model).resolve())
    register_config(model)
    config = open_clip.get_model_config(model_name(model))
    if config is None:
        sys.exit(f"unknown open_clip model {args.model!r}: give a name or a config JSON")
    gflops = VIT_B_32_GFLOPS if model == GPU_MODEL else forward_gflops(model)
    spec = {
        "model": model,
        "embed_dim": config["embed_dim"],
        "total_steps": args.warmup_steps + args.steps,
        "grad_ckpt": args.grad_checkpointing,
        **{k: getattr(args, k) for k in ("device", "batch_size", "threads", "precision",
                                         "compile", "open_clip_workers", "unfused_optimizer")},
    }  # fmt: skip
    results: dict[str, list] = {side: [] for side in SIDES}
    for i, side in enumerate(round_order(args.rounds)):
        print(f"running {side} ({i + 1}/{2 * args.rounds}) ...", flush=True)
        results[side].append(spawn(side, spec, workdir / f"{i}-{side}"))
    return results, gflops


def main() -> None:
    args = parse_args()
    if args.worker:
        print("\n" + json.dumps(WORKERS[args.worker](json.loads(args.spec.read_text()))))
        return
    import torch

    try:
        import open_clip_train.main  # noqa: F401  (fail here, not in the worker)
    except ImportError as err:
        sys.exit(f"open_clip's trainer cannot be imported ({err}): pip install -e '.[bench]'")
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no GPU")
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        results, gflops = run_rounds(args, workdir)
    loads.append(os.getloadavg()[0])
    rows = [
        summarise("open_clip_train, as logged", results["open_clip"], args, gflops),
        summarise("open_clip_train, step (data excluded)", results["open_clip"], args, gflops,
                  exclude_data=True),
        summarise("mmcontrast train loop", results["mmcontrast"], args, gflops),
    ]  # fmt: skip
    # CPU: open_clip's step alone; GPU: its logged steps (there Data (t) holds kernel waits)
    reference = rows[1] if args.device == "cpu" else rows[0]
    cols = columns(rows, reference=reference["pairs_s"])
    about, remarks = settings(args, gflops, loads), notes(args, rows, reference)
    print(f"\n{about}\n\n{text_table(rows, cols)}\n\n" + "\n".join(remarks))
    section = "\n".join([
        HEADING, "",
        f"`{command_line('scripts/bench_train.py')}` ({time.strftime('%Y-%m-%d')}): {about}", "",
        markdown_table(rows, cols), "",
        *remarks, "",
    ])  # fmt: skip
    publish(HEADING, section, args.write)


if __name__ == "__main__":
    main()
