"""Peak memory of one training step: gradient caching against the plain large batch.

For every loss (``--losses``) and effective batch (``--batches``, per process) it runs one
image-text training step twice: with gradient caching in micro-batches of ``--micro``
(``train.grad_cache_micro_batch``) and plain (the whole batch in one graph), each in a
fresh subprocess. The towers are small random ones built from config (ViT and BERT,
hidden 128, 2 layers; 32 px images in 8 px patches, 16 text tokens; no dropout), the data
synthetic, float32 on CPU, AdamW, gradient clipping at 1.0: the loop's own step
(``grad_cache_backward`` or ``method(batch)`` + ``accelerator.backward``, then clip and
step).

What is measured: the process's resident set (Linux ``VmRSS`` / ``VmHWM``). In each
subprocess the model, optimiser and the batch's input tensors are built and one warm-up
step on ``--micro`` samples allocates the optimiser state; then the high-water mark is
reset to the current resident set (``/proc/self/clear_refs``, "5") and the measured step
runs. Reported: ``before`` (the resident set just before the step: interpreter, torch,
model, optimiser state, the batch's inputs), ``peak`` (the high-water mark during the
step) and ``step`` = peak - before, the memory the step itself needed (activations,
embeddings, the loss's matrices, gradients). glibc is told to serve every allocation
over 64 KiB with its own mapping (``MALLOC_MMAP_THRESHOLD_=65536``) so that freed tensors
leave the resident set at once and it follows torch's live tensors, not malloc's reuse
(torch has no CPU allocator statistics). RSS counts pages touched, so it is an upper
bound on live tensor bytes, never an estimate from shapes.

The loss value and the gradient norm of both variants are printed: they agree (the same
gradient), which checks that the two steps did the same work.

    .venv/bin/python scripts/bench_memory.py                        # 256, 1024, 4096 x clip, siglip
    .venv/bin/python scripts/bench_memory.py --batches 256 1024 --losses siglip --threads 1
    .venv/bin/python scripts/bench_memory.py --losses clip --clip-chunk 0   # CLIP unchunked
    .venv/bin/python scripts/bench_memory.py --write    # also record it in BENCHMARKS.md

Both losses run with ``loss.kwargs.chunk_size`` (``--clip-chunk``, ``--siglip-chunk``,
default 256; 0 leaves it unset): their logits are then never more than [N, 256]. Without
it the loss holds the [N, N] logits of the whole batch (and their gradient), which
gradient caching does not shrink.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_report import ROOT, add_write_flag, command_line, cpu_name, publish

HEADING = "## Memory: gradient caching against the plain large batch"

SETUP = (
    "One image-text training step (AdamW, clipping at 1.0, float32) on random ViT + BERT "
    "towers (hidden 128, 2 layers, 4 heads; 32 px images in 8 px patches, 16 text tokens; "
    "embed_dim 64; no dropout), synthetic data, each configuration in a fresh subprocess. "
    "Memory is the process's resident set: `before` just before the measured step "
    "(interpreter, torch, transformers, model, optimiser state after a warm-up step, the "
    "batch's input tensors), `peak` its high-water mark during the step (`VmHWM`, reset "
    "with `/proc/self/clear_refs` before the step), `step` = peak - before. glibc serves "
    "allocations over 64 KiB with their own mappings (`MALLOC_MMAP_THRESHOLD_=65536`), so "
    "freed tensors leave the resident set at once. `chunk` is `loss.kwargs.chunk_size`. "
    "The loss and gradient norm show that both variants computed the same step."
)
VIT = (
    "{hidden_size: 128, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 512, "
    "image_size: 32, patch_size: 8}"
)
BERT = (
    "{hidden_size: 128, num_hidden_layers: 2, num_attention_heads: 4, intermediate_size: 512, "
    "vocab_size: 1000, max_position_embeddings: 64, hidden_dropout_prob: 0.0, "
    "attention_probs_dropout_prob: 0.0}"
)
TOKENS = 16


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(config: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in this (fresh) process: the step's time, memory, loss, norm."""
    import torch
    from accelerate import Accelerator

    from mmcontrast.config import load_recipe
    from mmcontrast.methods import build_method
    from mmcontrast.train.grad_cache import grad_cache_backward, micro_batches_per_batch
    from mmcontrast.train.optim import build_optimizer

    torch.set_num_threads(config["threads"])
    batch_size, micro = config["batch"], config["micro"]
    overrides = [
        "model.vision.name=vit",
        "model.vision.pretrained=false",
        f"model.vision.config_overrides={VIT}",
        "model.text.name=bert",
        "model.text.pretrained=false",
        f"model.text.config_overrides={BERT}",
        "model.embed_dim=64",
        f"loss.name={config['loss']}",
        f"train.batch_size={batch_size}",
        "train.max_grad_norm=1.0",
    ]
    if config["chunk"]:
        overrides.append(f"loss.kwargs={{chunk_size: {config['chunk']}}}")
    if config["cached"]:
        overrides.append(f"train.grad_cache_micro_batch={micro}")
    cfg = load_recipe(None, overrides)
    chunks = micro_batches_per_batch(cfg.train)

    torch.manual_seed(0)
    accelerator = Accelerator(cpu=True)
    method = build_method(cfg)
    optimizer = build_optimizer(method, cfg.train, method.lr_prefixes())
    method, optimizer = accelerator.prepare(method, optimizer)
    method.train()
    g = torch.Generator().manual_seed(1)
    batch = {
        "pixel_values": torch.randn(batch_size, 3, 32, 32, generator=g),
        "input_ids": torch.randint(5, 1000, (batch_size, TOKENS), generator=g),
        "attention_mask": torch.ones(batch_size, TOKENS, dtype=torch.long),
    }

    def step(inputs: dict[str, torch.Tensor], chunks: int | None) -> tuple[float, float]:
        if chunks:
            out = grad_cache_backward(accelerator, method, inputs, chunks)
        else:
            out = method(inputs)
            accelerator.backward(out["loss"])
        norm = accelerator.clip_grad_norm_(method.parameters(), cfg.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(out["loss"].detach()), float(norm)

    step({k: v[:micro] for k, v in batch.items()}, None)  # optimiser state, lazy inits
    torch.manual_seed(0)
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # high-water mark := current resident set
    before = _status("VmRSS")
    tic = time.perf_counter()
    loss, norm = step(batch, chunks)
    seconds = time.perf_counter() - tic
    peak = _status("VmHWM")
    return {
        **config,
        "before": before,
        "peak": peak,
        "seconds": seconds,
        "value": loss,
        "norm": norm,
    }


def run(config: dict[str, Any]) -> dict[str, Any]:
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "OMP_NUM_THREADS": str(config["threads"]),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(config)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise RuntimeError(f"{config} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _label(result: dict[str, Any]) -> str:
    return f"{result['loss']}, chunk {result['chunk']}" if result["chunk"] else result["loss"]


def table(results: list[dict[str, Any]], micro: int) -> str:
    mib = 2**20
    lines = [
        "| loss | batch | step | time (s) | before (MiB) | peak (MiB) | step = peak - before (MiB) "
        "| peak / cached smallest | step / cached smallest | loss | grad norm |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for loss in dict.fromkeys(map(_label, results)):
        rows = [r for r in results if _label(r) == loss]
        base = min((r for r in rows if r["cached"]), key=lambda r: r["batch"])
        for r in sorted(rows, key=lambda r: (not r["cached"], r["batch"])):
            own, base_own = r["peak"] - r["before"], base["peak"] - base["before"]
            mode = f"grad cache, micro {micro}" if r["cached"] else "plain"
            lines.append(
                f"| {loss} | {r['batch']:,} | {mode} | {r['seconds']:.2f} | {r['before'] / mib:,.0f} "
                f"| {r['peak'] / mib:,.0f} | {own / mib:,.0f} | {r['peak'] / base['peak']:.2f}x "
                f"| {own / base_own:.2f}x | {r['value']:.5f} | {r['norm']:.5f} |"
            )
    return "\n".join(lines)


def summary(results: list[dict[str, Any]]) -> str:
    lines = []
    for loss in dict.fromkeys(map(_label, results)):
        cached = [r for r in results if _label(r) == loss and r["cached"]]
        peaks = [r["peak"] for r in cached]
        steps = [r["peak"] - r["before"] for r in cached]
        lines.append(
            f"- {loss}: grad-cached peaks within {max(peaks) / min(peaks):.2f}x of each other "
            f"across batches; the step's own memory within {max(steps) / min(steps):.2f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--micro", type=int, default=64)
    parser.add_argument("--losses", nargs="+", default=["clip", "siglip"])
    parser.add_argument("--clip-chunk", type=int, default=256)
    parser.add_argument("--siglip-chunk", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    add_write_flag(parser)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return

    import torch

    machine = (
        f"{os.cpu_count()} CPU cores ({cpu_name()}), {args.threads} torch thread(s), "
        f"torch {torch.__version__}"
    )
    loads, tic = [os.getloadavg()[0]], time.perf_counter()
    print(f"{machine}; load average {loads[0]:.2f} at the start", flush=True)
    results = []
    for loss in args.losses:
        for cached in (True, False):
            for batch in args.batches:
                config = {
                    "loss": loss,
                    "batch": batch,
                    "micro": args.micro,
                    "cached": cached,
                    "threads": args.threads,
                    "chunk": {"clip": args.clip_chunk, "siglip": args.siglip_chunk}.get(loss),
                }
                results.append(run(config))
                r = results[-1]
                print(
                    f"{_label(r)} batch {batch} {'cached' if cached else 'plain'}: "
                    f"peak {r['peak'] / 2**20:,.0f} MiB, step {(r['peak'] - r['before']) / 2**20:,.0f} MiB, "
                    f"{r['seconds']:.2f} s",
                    flush=True,
                )
    loads.append(os.getloadavg()[0])
    print(f"load average {loads[1]:.2f} at the end\n")
    print(table(results, args.micro))
    print()
    print(summary(results))
    section = "\n".join([
        HEADING, "",
        f"`{command_line('scripts/bench_memory.py', argv)}` ({time.strftime('%Y-%m-%d')}, "
        f"{(time.perf_counter() - tic) / 60:.0f} min): {machine}; 1-minute load average "
        f"{loads[0]:.2f} at the start, {loads[1]:.2f} at the end (above the core count means "
        "other jobs shared the cores; times are then noisy, memory is not).", "",
        SETUP, "",
        table(results, args.micro), "",
        summary(results), "",
    ])  # fmt: skip
    publish(HEADING, section, args.write)


if __name__ == "__main__":
    main()
