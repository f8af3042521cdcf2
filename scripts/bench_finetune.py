"""Fine-tuning throughput and memory of a CLIP ViT-B/32: full, LiT and LoRA.

A fine-tuning run picks how much of the model trains (docs/finetuning.md): every weight
(``full``), the text tower with the vision tower locked (``lit``: ``model.vision.lock``), or
rank-16 LoRA adapters on both frozen towers (``lora``: ``model.{vision,text}.lora``, as in
the ``finetune-clip-lora`` recipe). This measures what each choice costs in speed and
memory. Each mode starts from the same saved transformers ``CLIPModel`` through
``model.init_from`` (the ViT-B/32 architecture, ``CLIPConfig()``'s defaults, with random
weights and a small CLIP tokenizer written here: no download) and trains with
``mmcontrast.train.loop.train`` unmodified, fed one pre-made batch of full-length captions
(as in scripts/bench_train.py), in its own fresh subprocess so that its peaks are its own.
Prints per mode: trainable parameters, median pairs/s and ms/step after the warm-up steps,
peak resident memory and, on a GPU, peak allocated and reserved GPU memory.

    python scripts/bench_finetune.py --device cuda          # one GPU: ViT-B/32, batch 256, bf16
    .venv/bin/python scripts/bench_finetune.py              # CPU smoke run: a tiny CLIP, fp32
    .venv/bin/python scripts/bench_finetune.py --write      # also record it in BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import os
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

HEADING = "## Fine-tuning throughput and memory: full, LiT and LoRA"
LORA = {"rank": 16, "alpha": 32, "dropout": 0.05}  # the finetune-clip-lora recipe's
MODES: dict[str, dict[str, Any]] = {  # tower options and learning rate of each mode
    "full": {"vision": {}, "text": {}, "lr": 1e-5},
    "lit": {"vision": {"lock": True}, "text": {}, "lr": 1e-5},
    "lora": {"vision": {"lora": LORA}, "text": {"lora": LORA}, "lr": 5e-4},
}
DESCRIBE = {
    "full": "full: every weight",
    "lit": "LiT: vision locked",
    "lora": f"LoRA r{LORA['rank']}: adapters",
}
OPTIM: dict[str, Any] = {"weight_decay": 0.1, "max_grad_norm": 1.0, "seed": 0}
VIT_B_32 = "ViT-B/32 (transformers CLIPConfig() defaults)"
# the CPU smoke run's CLIP: ViT-B/32's shape, shrunk; 77 tokens as in every CLIP
TINY_VISION = {
    "image_size": 32, "patch_size": 8, "hidden_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "intermediate_size": 256,
}  # fmt: skip
TINY_TEXT = {
    "vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    "intermediate_size": 256, "max_position_embeddings": 77,
}  # fmt: skip
TINY_EMBED = 64
# the tokenizer's words: CLIP's byte-pair merges of them, written here (no download)
WORDS = (
    "a the of on in with and photo picture small big red green blue yellow black white dog "
    "cat bird car tree house street man woman child sitting standing next to under"
).split()


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------- the source CLIPModel


def clip_tokenizer(vocab_size: int, max_length: int) -> Any:
    """A CLIPTokenizer (CLIP's lower-casing, splitting and ``</w>`` word ends) whose BPE
    merges spell ``WORDS``; ``<|startoftext|>`` and ``<|endoftext|>`` take the last two ids,
    where ViT-B/32's vocabulary of 49408 has them (49406, 49407)."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    merges: dict[tuple[str, str], None] = {}  # ordered, without repeats
    for char in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    for word in WORDS:
        parts = [*word[:-1], word[-1] + "</w>"]
        merged = parts[0]
        for part in parts[1:]:
            merges[(merged, part)] = None
            merged += part
            vocab.setdefault(merged, len(vocab))
    if len(vocab) > vocab_size - 2:
        raise ValueError(f"a vocabulary of {vocab_size} cannot hold {len(vocab) + 2} tokens")
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = vocab_size - 2, vocab_size - 1
    pairs: Any = list(merges)  # the tokenizers library takes (left, right) pairs
    return CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=max_length)


def save_source(folder: Path, tiny: bool) -> dict[str, Any]:
    """A random CLIPModel with its image processor and tokenizer, for ``model.init_from``;
    returns its shape."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(OPTIM["seed"])
    if tiny:
        ids = {
            "bos_token_id": TINY_TEXT["vocab_size"] - 2,
            "eos_token_id": TINY_TEXT["vocab_size"] - 1,
        }
        config = CLIPConfig(
            vision_config=TINY_VISION, text_config={**TINY_TEXT, **ids}, projection_dim=TINY_EMBED
        )
    else:
        config = CLIPConfig()  # openai/clip-vit-base-patch32's architecture
    vision: Any = config.vision_config
    text: Any = config.text_config
    model = CLIPModel(config)
    model.save_pretrained(folder)
    size = vision.image_size
    CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    ).save_pretrained(folder)
    tokenizer = clip_tokenizer(text.vocab_size, text.max_position_embeddings)
    if (tokenizer.bos_token_id, tokenizer.eos_token_id) != (text.bos_token_id, text.eos_token_id):
        raise RuntimeError("the tokenizer's start and end ids differ from the model's")
    tokenizer.save_pretrained(folder)
    return {
        "image": f"{size} px, patch {vision.patch_size}",
        "vision": f"width {vision.hidden_size}, {vision.num_hidden_layers} layers, "
        f"{vision.num_attention_heads} heads",
        "text": f"width {text.hidden_size}, {text.num_hidden_layers} layers, "
        f"{text.num_attention_heads} heads, {text.max_position_embeddings} tokens, "
        f"vocabulary {text.vocab_size}",
        "embed": config.projection_dim,
        "params": sum(p.numel() for p in model.parameters()),
    }


# ---------------------------------------------------------------- one mode (a subprocess)


def peaks(cuda: bool) -> dict[str, Any]:
    """Peak memory of this process so far (GPU: since the worker reset the counters)."""
    import torch

    if cuda:
        torch.cuda.synchronize()
    return {
        "peak_rss_mib": rss_mib(),
        "cuda_alloc_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "cuda_reserved_mib": torch.cuda.max_memory_reserved() / 2**20 if cuda else None,
        "threads": torch.get_num_threads(),
    }


def worker(mode: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The real ``train`` loop from ``init_from`` with one mode's options, on one pre-made
    batch; per-step times from its history."""
    import torch
    from bench_premade import PremadeBatch  # scripts/bench_premade.py

    from mmcontrast.config import Config, from_dict
    from mmcontrast.models.tower import resolved_preprocess
    from mmcontrast.registry import METHODS
    from mmcontrast.train.loop import train

    torch.set_num_threads(spec["threads"])
    cuda = spec["device"] == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    after_imports = rss_mib()
    recorded: dict[str, Any] = {}
    batch_size = spec["batch_size"]

    @METHODS.register("bench_premade_finetune", "image_text on one batch (bench_finetune.py)")
    class PremadeFinetune(METHODS.get("image_text")):  # type: ignore[misc]
        def __init__(self, cfg: Config) -> None:
            super().__init__(cfg)  # init_from, then lock / LoRA: what trains is now set
            params = list(self.parameters())
            recorded["params"] = sum(p.numel() for p in params)
            recorded["trainable"] = sum(p.numel() for p in params if p.requires_grad)

        def train_data(self) -> tuple[PremadeBatch, Callable[[list[int]], dict[str, Any]]]:
            """Images at the source's size; captions through the source's tokenizer, each
            longer than its maximum length, so every row holds all its tokens (77 for CLIP)."""
            gen = torch.Generator().manual_seed(OPTIM["seed"])
            size = resolved_preprocess(self.model.vision).size
            tokenize = self.model.text.tokenizer()
            picks = torch.randint(len(WORDS), (batch_size, 2 * tokenize.max_length), generator=gen)
            captions = [" ".join(WORDS[i] for i in row) for row in picks.tolist()]
            tokens = tokenize(captions)
            if tuple(tokens["input_ids"].shape) != (batch_size, tokenize.max_length):
                raise RuntimeError(f"captions tokenized to {tuple(tokens['input_ids'].shape)}")
            recorded["image_size"], recorded["tokens"] = size, tokenize.max_length
            pixels = torch.randn(batch_size, 3, size, size, generator=gen)
            batch = {"pixel_values": pixels, **tokens}
            if cuda:  # pinned once: the loader's pinning is then a no-op, as with a pin thread
                batch = {k: v.pin_memory() for k, v in batch.items()}
            dataset = PremadeBatch(batch, batch_size * spec["total_steps"])
            return dataset, dataset.collate

        def after_optimizer_step(self, step: int, total_steps: int) -> None:
            super().after_optimizer_step(step, total_steps)
            if cuda:  # the loop's per-step clock then holds the GPU work
                torch.cuda.synchronize()
            if step == total_steps:  # before the loop saves weights
                recorded.update(peaks(cuda))

    towers = MODES[mode]
    options = {
        "output_dir": str(Path(spec["workdir"]) / "run"), "seed": OPTIM["seed"],
        "batch_size": batch_size, "max_steps": spec["total_steps"], "lr": towers["lr"],
        "weight_decay": OPTIM["weight_decay"], "warmup_steps": 0,
        "max_grad_norm": OPTIM["max_grad_norm"],
        "mixed_precision": "bf16" if spec["precision"] == "bf16" else "no",
        "log_every": 1, "trackers": [], "progress_bar": False,
    }  # fmt: skip
    model = {"init_from": spec["source"], "vision": towers["vision"], "text": towers["text"]}
    cfg = from_dict(Config, {
        "method": "bench_premade_finetune", "model": model, "train": options,
        "data": {"path": "synthetic", "eval_split": None},
        "eval": {"at_start": False, "at_end": False},
    })  # fmt: skip
    history = train(cfg)["history"]
    if len(history) != spec["total_steps"]:
        raise RuntimeError(f"expected {spec['total_steps']} steps, the history has {len(history)}")
    return {
        "step_s": [batch_size / record["pairs_per_s"] for record in history],
        "losses": [record["loss"] for record in history],
        "rss_after_imports_mib": after_imports,
        **recorded,
    }


# ---------------------------------------------------------------- parent: run and summarise


def spawn(mode: str, spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run one mode in a fresh process; adds its wall time."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps({**spec, "workdir": str(workdir)}))
    threads = str(spec["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}  # fmt: skip
    if spec["device"] == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    command = [sys.executable, __file__, "--worker", mode, "--spec", str(spec_path)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=workdir)
    if done.returncode:
        sys.exit(f"the {mode} worker failed:\n{done.stderr[-4000:]}\n{done.stdout[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - start
    return result


def round_order(modes: list[str], rounds: int) -> list[str]:
    """The modes, then reversed, ...: a drift in the machine's load hits every mode."""
    return [m for i in range(rounds) for m in (modes if i % 2 == 0 else modes[::-1])]


def summarise(mode: str, runs: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """One table row: the steps after the warm-up of every run of one mode."""
    times = [t for run in runs for t in run["step_s"][args.warmup_steps :]]
    rates = [args.batch_size / t for t in times]
    q1, _, q3 = statistics.quantiles(rates, n=4) if len(rates) > 1 else (rates[0],) * 3
    first = runs[0]
    return {
        "mode": mode,
        "trainable": first["trainable"],
        "share": first["trainable"] / first["params"],
        "pairs_s": args.batch_size / statistics.median(times),
        "iqr": (q1, q3),
        "step_ms": 1e3 * statistics.median(times),
        "rss": max(run["peak_rss_mib"] for run in runs),
        "rss_extra": max(run["peak_rss_mib"] - run["rss_after_imports_mib"] for run in runs),
        "cuda_alloc": max((run["cuda_alloc_mib"] or 0.0) for run in runs),
        "cuda_reserved": max((run["cuda_reserved_mib"] or 0.0) for run in runs),
        "loss": (first["losses"][0], first["losses"][-1]),
        "threads": first["threads"],
        "inputs": (first["image_size"], first["tokens"]),
        "wall_s": max(run["wall_s"] for run in runs),
    }


def columns(rows: list[dict[str, Any]], cuda: bool) -> list[tuple[str, Callable]]:
    """The table's columns: GPU memory on a GPU, resident memory on CPU."""
    full = next((r for r in rows if r["mode"] == "full"), None)
    cols: list[tuple[str, Callable]] = [
        ("mode", lambda r: DESCRIBE[r["mode"]]),
        ("trainable params", lambda r: f"{r['trainable']:,}"),
        ("trainable %", lambda r: f"{100 * r['share']:.2f}"),
        ("pairs/s (median)", lambda r: f"{r['pairs_s']:.1f}"),
        ("p25-p75", lambda r: f"{r['iqr'][0]:.1f}-{r['iqr'][1]:.1f}"),
        ("ms/step", lambda r: f"{r['step_ms']:.0f}"),
    ]
    if full is not None:
        cols.append(("vs full", lambda r: f"{r['pairs_s'] / full['pairs_s']:.2f}x"))
    if cuda:
        cols += [
            ("peak GPU alloc (MiB)", lambda r: f"{r['cuda_alloc']:,.0f}"),
            ("peak GPU reserved (MiB)", lambda r: f"{r['cuda_reserved']:,.0f}"),
        ]
        if full is not None:
            cols.append(("alloc vs full", lambda r: f"{r['cuda_alloc'] / full['cuda_alloc']:.2f}x"))
    else:
        cols += [
            ("peak RSS (MiB)", lambda r: f"{r['rss']:,.0f}"),
            ("peak - after imports (MiB)", lambda r: f"{r['rss_extra']:,.0f}"),
        ]
    return cols


def settings(args: argparse.Namespace, shape: dict[str, Any], loads: list[float]) -> str:
    """The machine, the model and the run's settings, one paragraph."""
    from importlib.metadata import version

    import torch

    gpu = args.device == "cuda"
    device = f"1 x {torch.cuda.get_device_name()}" if gpu else f"{os.cpu_count()} CPU cores"
    name = "a tiny CLIP" if args.tiny else VIT_B_32
    lrs = ", ".join(f"{m} {MODES[m]['lr']:g}" for m in args.modes)
    return (
        f"{device} ({cpu_name()}), {args.threads} torch thread{'s' * (args.threads > 1)}, "
        f"torch {torch.__version__}, "
        f"transformers {version('transformers')}, peft {version('peft')}, accelerate "
        f"{version('accelerate')}. A transformers CLIPModel, {name}, random weights, "
        f"{shape['params']:,} parameters: images {shape['image']}; vision {shape['vision']}; "
        f"text {shape['text']}; embeddings {shape['embed']}; loaded by `model.init_from`. "
        f"Batch {args.batch_size} of full-length captions, {args.precision} "
        f"(`train.mixed_precision`), AdamW (fused) wd {OPTIM['weight_decay']}, lr {lrs}, clip "
        f"norm {OPTIM['max_grad_norm']}; LoRA `{json.dumps(LORA)}` on both towers' default "
        f"targets. Each mode in a fresh process, {args.rounds} round(s) "
        f"({' then '.join(round_order(args.modes, args.rounds))}), median over {args.steps} "
        f"steps after {args.warmup_steps} warm-up steps. Load average {loads[0]:.2f} at the "
        f"start, {loads[1]:.2f} at the end."
    )


def notes(rows: list[dict[str, Any]], cuda: bool) -> list[str]:
    size, tokens = rows[0]["inputs"]
    copy = " (pinned) and copied to the GPU at every step, as the loop does" if cuda else ""
    return [
        f"- inputs per pair: {size} x {size} px image, {tokens} tokens; the batch is made once"
        f"{copy}.",
        "- trainable parameters include the projections and the logit scale in every mode; "
        "trainable % is of all the model's parameters, LoRA's adapters included.",
        "- loss first -> last step: "
        + "; ".join(f"{r['mode']} {r['loss'][0]:.4f} -> {r['loss'][1]:.4f}" for r in rows)
        + ".",
        "- wall time of each mode's process (imports, model load, steps, weights saved): "
        + ", ".join(f"{r['mode']} {r['wall_s']:.0f} s" for r in rows)
        + f"; torch threads {rows[0]['threads']}.",
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--device", choices=["cpu", "cuda"], default="cpu", help="where every mode trains")
    add("--tiny", action=argparse.BooleanOptionalAction, default=None,
        help=f"a tiny CLIP instead of {VIT_B_32} (default: on CPU only)")  # fmt: skip
    add("--modes", nargs="+", choices=list(MODES), default=list(MODES), help="modes to run")
    add("--batch-size", type=int, help="pairs per step (default: 32 on CPU, 256 on cuda)")
    add("--steps", type=int, default=20, help="timed steps per run")
    add("--warmup-steps", type=int, help="discarded first steps (default: 3 on CPU, 5 on cuda)")
    add("--rounds", type=int, default=1, help="runs of each mode, the order reversed each round")
    add("--threads", type=int, help="torch threads and OMP_NUM_THREADS (default: 1 on CPU, "
        "where more contend with any other load; all cores on cuda)")  # fmt: skip
    add("--precision", choices=["fp32", "bf16"], help="default: fp32 on CPU, bf16 on cuda")
    add("--workdir", type=Path, help="keep the source model and runs here (default: temporary)")
    add_write_flag(parser)
    add("--worker", choices=list(MODES), help=argparse.SUPPRESS)
    add("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    gpu = args.device == "cuda"
    args.tiny = not gpu if args.tiny is None else args.tiny
    args.batch_size = args.batch_size or (256 if gpu else 32)
    args.precision = args.precision or ("bf16" if gpu else "fp32")
    if args.threads is None:
        args.threads = (os.cpu_count() or 1) if gpu else 1
    if args.warmup_steps is None:
        args.warmup_steps = 5 if gpu else 3
    if args.steps < 1 or args.warmup_steps < 0 or args.rounds < 1:
        parser.error("--steps and --rounds must be at least 1, --warmup-steps at least 0")
    return args


def main() -> None:
    args = parse_args()
    if args.worker:
        print("\n" + json.dumps(worker(args.worker, json.loads(args.spec.read_text()))))
        return
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no GPU here (run on a GPU machine, or leave out "
                 "--device for the CPU smoke run)")  # fmt: skip
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        source = workdir / ("clip-tiny" if args.tiny else "clip-vit-b-32")
        print(f"saving a random CLIPModel to {source} ...", flush=True)
        shape = save_source(source, args.tiny)
        spec = {
            "source": str(source.resolve()),
            "total_steps": args.warmup_steps + args.steps,
            **{k: getattr(args, k) for k in ("device", "batch_size", "threads", "precision")},
        }
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in args.modes}
        order = round_order(args.modes, args.rounds)
        for i, mode in enumerate(order):
            print(f"running {mode} ({i + 1}/{len(order)}) ...", flush=True)
            runs[mode].append(spawn(mode, spec, workdir / f"{i}-{mode}"))
    loads.append(os.getloadavg()[0])
    rows = [summarise(mode, runs[mode], args) for mode in args.modes]
    cols = columns(rows, cuda=args.device == "cuda")
    about, remarks = settings(args, shape, loads), notes(rows, args.device == "cuda")
    print(f"\n{about}\n\n{text_table(rows, cols)}\n\n" + "\n".join(remarks))
    section = "\n".join([
        HEADING, "",
        f"`{command_line('scripts/bench_finetune.py')}` ({time.strftime('%Y-%m-%d')}): {about}",
        "", markdown_table(rows, cols), "",
        *remarks, "",
    ])  # fmt: skip
    publish(HEADING, section, args.write)


if __name__ == "__main__":
    main()
