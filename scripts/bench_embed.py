"""Times ``mmcontrast embed`` against clip-retrieval's ``clip_inference`` on CPU, same model.

Both embed the same folder of JPEG images (clip-retrieval's ``input_format="files"``, no
captions) with the same open_clip model, on the CPU in float32 (``CUDA_VISIBLE_DEVICES``
empty: clip-retrieval takes a GPU whenever it sees one), with the same batch size, the same
number of data-loading workers and the same torch threads, into a fresh output folder each
time:

- the model: an open_clip architecture (``--arch``, ViT-B-32 by default, full size) with
  random weights from ``--seed``, saved once to a local safetensors file that both load:
  mmcontrast as ``open_clip:ViT-B-32:FILE``, clip-retrieval (through all_clip) as
  ``open_clip:ViT-B-32/FILE``. Each takes the validation preprocessing open_clip returns
  with the model, so the two must give the same embeddings;
- the images: ``--images`` synthetic photograph-like JPEGs (quality 90, each side 256-512
  px at random, a colour gradient, random shapes and sensor-like noise), made once;
- mmcontrast: ``load_eval_model`` then ``embed_collection`` (what ``mmcontrast embed`` runs);
  clip-retrieval: ``clip_retrieval.clip_inference.main.main`` (what ``clip-retrieval
  inference`` runs), ``use_jit=False``, one output partition, sequential distribution.

Each run is its own subprocess, started by a small driver (``MMCONTRAST_DRIVER``,
``CLIP_RETRIEVAL_DRIVER``) that only times: the imports; the model load (clip-retrieval's
includes all_clip's warm-up, two forward passes of a batch of images and texts; the
driver times it by wrapping ``all_clip.load_clip``, which clip-retrieval calls by name);
``embed``, the rest of the call: listing the folder, decoding and preprocessing, the
forward passes and writing the output; and within it ``forward``, the calls of the loaded
model's image encoder (wrapped once loaded). ``images/s`` is images / ``embed``; ``total``
is the subprocess's wall time from start to exit. Runs alternate between the two (round 1
clip-retrieval first, round 2 mmcontrast first ...); the table gives medians over
``--rounds``. The embeddings of the last round are compared file by file (clip-retrieval
stores float16, mmcontrast float32): cosine of each image's two embeddings, the same after
removing the mean embedding (random weights give every image a similar embedding), and
how often an image's clip-retrieval embedding is nearest to its own mmcontrast one.

clip-retrieval is not an mmcontrast dependency and pins old versions of half the
ecosystem (numpy<2, pyarrow<16, open_clip<3); it runs from its own virtual environment,
never imported into this process. Its ``clip_inference`` path needs only the packages
below: the package's ``__init__`` imports the retrieval back end too (flask, faiss, h5py,
prometheus), the logger imports wandb and the mapper sentence-transformers at module
level, and all_clip imports OpenAI's ``clip`` (clip-anytorch). Installed without
clip-retrieval's pins, with the same torch and open_clip as mmcontrast's environment:

    CR=/tmp/clip-retrieval-venv            # any folder outside the repository
    python3 -m venv $CR
    $CR/bin/pip install torch==2.14.1 torchvision==0.29.1 open_clip_torch==3.3.0 \\
        'fire<0.6' braceexpand fsspec pandas pyarrow wandb sentence-transformers \\
        flask flask_restful flask_cors faiss-cpu h5py prometheus_client
    $CR/bin/pip install --no-deps clip-retrieval==2.45.0 all_clip==1.3.0 clip-anytorch==2.6.0
    $CR/bin/pip install 'setuptools<81'    # clip-anytorch imports pkg_resources

    .venv/bin/python scripts/bench_embed.py --clip-retrieval-python $CR/bin/python
    .venv/bin/python scripts/bench_embed.py --clip-retrieval-python $CR/bin/python \\
        --images 1024 --batch-size 64 --workers 0 2 --rounds 2
    .venv/bin/python scripts/bench_embed.py ... --write    # also record it in BENCHMARKS.md

Without ``--clip-retrieval-python`` the script looks at ``$CLIP_RETRIEVAL_PYTHON``, then the
interpreter of a ``clip-retrieval`` command on the PATH; with none found it times mmcontrast
alone and says so in the table. It prints its table and notes; with
``--write`` that section also replaces the ``## Embedding throughput vs clip-retrieval``
section of ``scripts/BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import open_clip
import pyarrow.parquet as pq
import torch
from bench_report import (  # scripts/bench_report.py
    add_write_flag,
    command_line,
    cpu_name,
    markdown_table,
    publish,
    text_table,
)
from PIL import Image, ImageDraw, ImageFilter
from safetensors.torch import save_file

from mmcontrast.search.embed import read_embeddings

HEADING = "## Embedding throughput vs clip-retrieval"
MISSING = (
    "clip-retrieval not installed: pip install clip-retrieval in a venv and pass "
    "--clip-retrieval-python"
)
MMCONTRAST, CLIP_RETRIEVAL = "mmcontrast", "clip-retrieval"
SIDES = (256, 512)  # image width and height, drawn uniformly in this range
JPEG_QUALITY = 90
RESULT = "BENCH_EMBED_RESULT "  # prefix of a driver's one line of JSON on stdout
WARMUP = re.compile(r"done warming up in ([0-9.]+)s")

# Each driver runs as ``PYTHON -c TIMER+DRIVER JSON_ARGS`` and prints RESULT + JSON last.
# TIMER starts the clock and gives ``timed``, which both wrap around the image encoder once
# the model is loaded: the forward passes alone.
TIMER = """
import json, sys, time
started = time.perf_counter()
forward_seconds = []

def timed(encode):
    def call(*args, **kwargs):
        start = time.perf_counter()
        try:
            return encode(*args, **kwargs)
        finally:
            forward_seconds.append(time.perf_counter() - start)

    call.timed = True
    return call
"""

MMCONTRAST_DRIVER = """
import torch
from mmcontrast.eval.adapters import load_eval_model
from mmcontrast.search.embed import embed_collection
args = json.loads(sys.argv[1])
imported = time.perf_counter()
model = load_eval_model(args["model"], "cpu")
model.encode_images = timed(model.encode_images)
loaded = time.perf_counter()
summary = embed_collection(
    model, args["images"], args["output"], batch_size=args["batch_size"],
    num_workers=args["workers"], progress=False,
)
done = time.perf_counter()
print("\\n" + args["prefix"] + json.dumps({
    "import_s": imported - started, "load_s": loaded - imported, "embed_s": done - loaded,
    "forward_s": sum(forward_seconds), "forward_batches": forward_seconds,
    "count": summary.count,
    "threads": torch.get_num_threads(), "torch": torch.__version__,
}), flush=True)
"""

CLIP_RETRIEVAL_DRIVER = """
import torch
import all_clip
args = json.loads(sys.argv[1])
load_seconds = []
load_clip = all_clip.load_clip

def timed_load_clip(*positional, **keywords):
    start = time.perf_counter()
    loaded = load_clip(*positional, **keywords)  # cached: the second call returns the same model
    load_seconds.append(time.perf_counter() - start)
    model = loaded[0]
    if not getattr(model.encode_image, "timed", False):  # after all_clip's warm-up
        model.encode_image = timed(model.encode_image)
    return loaded

all_clip.load_clip = timed_load_clip  # before clip_retrieval's modules import it by name
from clip_retrieval.clip_inference.main import main
imported = time.perf_counter()
main(
    input_dataset=args["images"], output_folder=args["output"], input_format="files",
    batch_size=args["batch_size"], num_prepro_workers=args["workers"], enable_text=False,
    enable_metadata=False, clip_model=args["model"], use_jit=False,
    write_batch_size=10**9, distribution_strategy="sequential",
)
done = time.perf_counter()
stats = json.loads(open(args["output"] + "/stats/0.json").read())
from importlib.metadata import version
print("\\n" + args["prefix"] + json.dumps({
    "import_s": imported - started, "load_s": sum(load_seconds),
    "embed_s": done - imported - sum(load_seconds), "forward_s": sum(forward_seconds),
    "forward_batches": forward_seconds, "count": stats["sample_count"],
    "loop_s": stats["total_duration"], "threads": torch.get_num_threads(),
    "torch": torch.__version__, "open_clip": version("open_clip_torch"),
    "clip_retrieval": version("clip-retrieval"), "all_clip": version("all_clip"),
}), flush=True)
"""


# ---------------------------------------------------------------- data and model


def make_images(folder: Path, count: int, seed: int) -> int:
    """``count`` photograph-like JPEGs in ``folder``; returns their total size in bytes."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        width, height = (int(side) for side in rng.integers(SIDES[0], SIDES[1] + 1, size=2))
        y, x = np.mgrid[0:height, 0:width] / max(width, height)
        angle = rng.uniform(0, 2 * np.pi)
        ramp = x * np.cos(angle) + y * np.sin(angle)
        ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-9)
        start, end = rng.uniform(0, 255, size=(2, 3))
        image = Image.fromarray((start + ramp[..., None] * (end - start)).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 9))):
            xs = sorted(int(v) for v in rng.integers(-width // 4, width + width // 4, size=2))
            ys = sorted(int(v) for v in rng.integers(-height // 4, height + height // 4, size=2))
            colour = tuple(int(v) for v in rng.integers(0, 256, size=3))
            shape = int(rng.integers(3))
            if shape == 0:
                draw.ellipse((xs[0], ys[0], xs[1], ys[1]), fill=colour)
            elif shape == 1:
                draw.rectangle((xs[0], ys[0], xs[1], ys[1]), fill=colour)
            else:
                points = rng.integers(0, (width, height), size=(int(rng.integers(3, 7)), 2))
                draw.polygon([tuple(int(v) for v in p) for p in points], fill=colour)
        image = image.filter(ImageFilter.GaussianBlur(0.8))
        noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, (height, width, 3))
        image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
        image.save(folder / f"{i:05d}.jpg", quality=JPEG_QUALITY)
    return sum(path.stat().st_size for path in folder.iterdir())


def make_weights(arch: str, path: Path, seed: int) -> int:
    """Random ``arch`` weights (open_clip's own initialisation) saved to ``path``;
    returns the number of parameters."""
    torch.manual_seed(seed)
    logging.disable(logging.WARNING)  # open_clip warns that the weights are random
    model = open_clip.create_model(arch)
    logging.disable(logging.NOTSET)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- runs (one subprocess each)


def find_clip_retrieval_python(given: str | None) -> str | None:
    """``--clip-retrieval-python``, ``$CLIP_RETRIEVAL_PYTHON``, or the interpreter of a
    ``clip-retrieval`` command on the PATH (its ``#!`` line)."""
    if given or os.environ.get("CLIP_RETRIEVAL_PYTHON"):
        return given or os.environ["CLIP_RETRIEVAL_PYTHON"]
    command = shutil.which("clip-retrieval")
    if command is None:
        return None
    first = Path(command).read_text(errors="replace").splitlines()[:1]
    return first[0][2:].strip() if first and first[0].startswith("#!") else None


def run_once(
    method: str, python: str, model: str, output: Path, workers: int, args: argparse.Namespace
) -> dict:
    """One embedding run in a fresh subprocess: the driver's timings plus the wall time."""
    driver = MMCONTRAST_DRIVER if method == MMCONTRAST else CLIP_RETRIEVAL_DRIVER
    settings = {
        "images": str(args.image_dir), "output": str(output), "model": model,
        "batch_size": args.batch_size, "workers": workers, "prefix": RESULT,
    }  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "CUDA_VISIBLE_DEVICES": "",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "WANDB_MODE": "disabled"}  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(
        [python, "-c", TIMER + driver, json.dumps(settings)],
        capture_output=True, text=True, env=env, cwd=output.parent,
    )  # fmt: skip
    total = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"{method} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n"
            f"{done.stderr[-3000:]}"
        )
    run = {**json.loads(lines[-1][len(RESULT) :]), "total_s": total}
    warmup = WARMUP.findall(done.stdout)  # all_clip prints how long its warm-up took
    return {**run, "warmup_s": sum(map(float, warmup))} if warmup else run


def run_folder(root: Path, method: str, workers: int, round_: int) -> Path:
    return root / f"{method}-w{workers}-r{round_}"


# ---------------------------------------------------------------- agreement


def read_clip_retrieval(output: Path) -> tuple[np.ndarray, list[str]]:
    embeddings = np.concatenate(
        [np.load(p) for p in sorted((output / "img_emb").glob("*.npy"))]
    ).astype(np.float32)
    tables = [pq.read_table(p) for p in sorted((output / "metadata").glob("*.parquet"))]
    names = [Path(p).name for t in tables for p in t.column("image_path").to_pylist()]
    return embeddings, names


def agreement(mmcontrast_output: Path, clip_retrieval_output: Path) -> dict:
    """The two outputs' embeddings of the same files, matched by file name."""
    mm = read_embeddings(mmcontrast_output)
    mm_rows = {Path(p).name: i for i, p in enumerate(mm.metadata.column("image_path").to_pylist())}
    cr, names = read_clip_retrieval(clip_retrieval_output)
    cr_rows = {name: i for i, name in enumerate(names)}
    shared = [name for name in names if name in mm_rows]
    a = np.asarray(mm.images)[[mm_rows[name] for name in shared]]
    b = cr[[cr_rows[name] for name in shared]]
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    cosine = (a * b).sum(axis=1)
    mean = a.mean(axis=0)
    ac, bc = a - mean, b - mean
    centred = (ac * bc).sum(axis=1) / (np.linalg.norm(ac, axis=1) * np.linalg.norm(bc, axis=1))
    others = a @ a.T
    return {
        "matched": len(shared),
        "mm_only": len(mm_rows) - len(shared),
        "cr_only": len(names) - len(shared),
        "min_cosine": float(cosine.min()),
        "mean_cosine": float(cosine.mean()),
        "min_centred": float(centred.min()),
        "nearest_is_same": float(((b @ a.T).argmax(axis=1) == np.arange(len(shared))).mean()),
        "between_images": float(others[~np.eye(len(shared), dtype=bool)].mean()),
    }


def agreement_line(workers: int, agree: dict) -> str:
    return (
        f"- {workers} workers: {agree['matched']} images in both outputs "
        f"({agree['mm_only']} only in mmcontrast's, {agree['cr_only']} only in "
        f"clip-retrieval's); cosine of each image's two embeddings min "
        f"{agree['min_cosine']:.6f}, mean {agree['mean_cosine']:.6f}; after removing the mean "
        f"embedding min {agree['min_centred']:.5f}; clip-retrieval's embedding nearest to "
        f"mmcontrast's of the same image for {agree['nearest_is_same']:.1%} of images (mean "
        f"cosine between different images {agree['between_images']:.3f})"
    )


def batch_times(runs: list[dict]) -> str:
    """The image encoder's first two calls and the median of the others, in seconds, each a
    median over the runs."""
    per_run = [run["forward_batches"] for run in runs]  # the same batches in every run
    calls = [statistics.median(times) for times in zip(*per_run, strict=True)]
    first = ", ".join(f"{t:.1f}" for t in calls[:2])
    return f"{first} s, then a median of {statistics.median(calls[2:] or calls):.1f} s"


def clip_retrieval_line(workers: int, done: list[dict], mmcontrast: list[dict]) -> str:
    """Where clip-retrieval's load and embed time go, from its own stats and prints."""
    return (
        f"- {workers} workers: its model load ({median(done, 'load_s'):.1f} s) is mostly "
        f"all_clip's warm-up ({median(done, 'warmup_s'):.1f} s). Its own stats "
        "(`stats/0.json`, the batches' read + inference + write summed) put its batch loop "
        f"at {median(done, 'loop_s'):.1f} s of its {median(done, 'embed_s'):.1f} s `embed` "
        "(medians); the rest is outside the loop (listing the folder, writing, joining its "
        "two logger processes). Those are started with `spawn`, and each imports the whole "
        "clip_retrieval package (torch, faiss, sentence-transformers, wandb, flask) on the "
        "same cores; the per-batch one starts with the first batch. The image encoder's "
        f"calls took {batch_times(done)} in clip-retrieval and {batch_times(mmcontrast)} in "
        "mmcontrast (medians over the rounds)"
    )


# ---------------------------------------------------------------- report


def median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def result_rows(args: argparse.Namespace, runs: dict[tuple[str, int], list[dict]]) -> list[dict]:
    rows = []
    for workers in args.workers:
        reference = runs.get((CLIP_RETRIEVAL, workers))
        for method in (CLIP_RETRIEVAL, MMCONTRAST):
            if (method, workers) not in runs:
                rows.append({"method": method, "workers": workers, "missing": True})
                continue
            done = runs[(method, workers)]
            rate = [run["count"] / run["embed_s"] for run in done]
            row = {
                "method": method, "workers": workers, "missing": False,
                "images": done[0]["count"], "import": median(done, "import_s"),
                "load": median(done, "load_s"), "embed": median(done, "embed_s"),
                "forward": median(done, "forward_s"),
                "rate": statistics.median(rate), "low": min(rate), "high": max(rate),
                "total": median(done, "total_s"),
                "overall": statistics.median(run["count"] / run["total_s"] for run in done),
            }  # fmt: skip
            if reference:
                row["ratio"] = row["rate"] / statistics.median(
                    run["count"] / run["embed_s"] for run in reference
                )
                row["ratio_total"] = median(reference, "total_s") / row["total"]
            rows.append(row)
    return rows


def cell(key: str, fmt: str):
    return lambda r: "-" if r["missing"] or key not in r else format(r[key], fmt)


def method_cell(r: dict) -> str:
    return f"{r['method']} (not installed)" if r["missing"] else r["method"]


def columns(batch_size: int) -> list:
    return [
        ("method", method_cell),
        ("images", cell("images", ",")),
        ("batch", lambda r: str(batch_size)),
        ("workers", lambda r: str(r["workers"])),
        ("import (s)", cell("import", ".1f")),
        ("model load (s)", cell("load", ".1f")),
        ("embed (s)", cell("embed", ".1f")),
        ("of which forward (s)", cell("forward", ".1f")),
        ("images/s", cell("rate", ".1f")),
        ("images/s min-max", lambda r: "-" if r["missing"] else f"{r['low']:.1f}-{r['high']:.1f}"),
        ("total (s)", cell("total", ".1f")),
        ("images/s incl. start-up", cell("overall", ".1f")),
        ("images/s vs clip-retrieval", cell("ratio", ".2f")),
        ("total time speed-up", cell("ratio_total", ".2f")),
    ]


def markdown_section(
    args: argparse.Namespace, rows: list[dict], facts: dict, notes: dict[str, list[str]]
) -> str:
    command = command_line("scripts/bench_embed.py")
    versions = facts["versions"]
    return "\n".join([
        HEADING, "",
        f"`{command}` ({time.strftime('%Y-%m-%d')}): {os.cpu_count()} CPU cores "
        f"({cpu_name()}), CPU only, {args.threads} torch threads in each run "
        f"({facts['threads']}), float32. {versions}. Model: open_clip {args.arch} at full "
        f"size ({facts['params']:,} parameters) with random weights (seed {args.seed}) from a "
        "local safetensors file, loaded by mmcontrast as `open_clip:ARCH:FILE` and by "
        "clip-retrieval as `open_clip:ARCH/FILE`, each with open_clip's validation "
        f"preprocessing. Data: {facts['images']:,} synthetic photograph-like JPEGs in one "
        f"folder (quality {JPEG_QUALITY}, sides {SIDES[0]}-{SIDES[1]} px, "
        f"{facts['megabytes']:.1f} MB), no captions; batch {args.batch_size}. Each run is a "
        f"fresh subprocess writing a fresh folder; {args.rounds} rounds, alternating which "
        "side goes first; medians. `import`: the driver's imports; `model load`: "
        "`load_eval_model` / all_clip's `load_clip` (which includes its warm-up, two passes "
        "of a batch of images and texts); `embed`: the rest of the call (listing, decoding, "
        "preprocessing, forward passes, writing), and `images/s` = images / embed; `forward`: "
        "the time inside the image encoder's calls during `embed`; `total`: "
        "the subprocess from start to exit; `images/s vs clip-retrieval`: images/s over "
        "clip-retrieval's; `total time speed-up`: clip-retrieval's total over this one's. "
        "clip-retrieval: "
        "`clip_inference.main.main(input_format='files', enable_text=False, use_jit=False)`, "
        "one partition, sequential; mmcontrast: `load_eval_model` + `embed_collection`. "
        f"1-minute load average {facts['loads'][0]:.2f} at the start, {facts['loads'][1]:.2f} "
        f"at the end ({os.cpu_count()} cores; above {os.cpu_count()} means other jobs shared "
        "them).", "",
        markdown_table(rows, columns(args.batch_size)), "",
        "Same model and preprocessing (last round's outputs, clip-retrieval's float16 against "
        "mmcontrast's float32):", "", *notes["agree"], "",
        *(["Where clip-retrieval's time goes:", "", *notes["cr"], ""] if notes["cr"] else []),
    ])  # fmt: skip


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=256, help="number of images")
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip architecture")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[2],
                        help="data-loading workers; several values: a row pair each")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="runs of each side per setting")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clip-retrieval-python", help="a Python with clip-retrieval installed")
    add_write_flag(parser)
    return parser.parse_args()


def progress_line(method: str, workers: int, round_: int, run: dict) -> str:
    loop = f" (its batch loop {run['loop_s']:.1f} s)" if "loop_s" in run else ""
    return (
        f"{method:>14}  workers {workers}  round {round_ + 1}: "
        f"{run['count'] / run['embed_s']:.1f} images/s, load {run['load_s']:.1f} s, embed "
        f"{run['embed_s']:.1f} s (forward {run['forward_s']:.1f} s){loop}, total "
        f"{run['total_s']:.1f} s"
    )


def versions_text(first: dict[str, dict]) -> str:
    """The versions each side ran with, from the first run's driver."""
    text = f"torch {torch.__version__}, open_clip_torch {version('open_clip_torch')}"
    if CLIP_RETRIEVAL not in first:
        return text
    cr = first[CLIP_RETRIEVAL]
    return (
        f"mmcontrast: {text}; clip-retrieval {cr['clip_retrieval']} (all_clip "
        f"{cr['all_clip']}): torch {cr['torch']}, open_clip_torch {cr['open_clip']}"
    )


def bench(
    args: argparse.Namespace, root: Path, python: str | None
) -> tuple[list[dict], dict, dict[str, list[str]]]:
    """Makes the images and weights in ``root``, runs every setting and round; returns the
    table's rows, the facts the section states and its notes."""
    loads = [os.getloadavg()[0]]
    args.image_dir = root / "images"
    size = make_images(args.image_dir, args.images, args.seed)
    weights = root / f"{args.arch}-random-seed{args.seed}.safetensors"
    params = make_weights(args.arch, weights, args.seed)
    specs = {MMCONTRAST: f"open_clip:{args.arch}:{weights}",
             CLIP_RETRIEVAL: f"open_clip:{args.arch}/{weights}"}  # fmt: skip
    pythons = {CLIP_RETRIEVAL: python} if python else {}
    pythons[MMCONTRAST] = sys.executable
    methods = list(pythons)  # clip-retrieval first, when it is there
    runs: dict[tuple[str, int], list[dict]] = {}
    notes: dict[str, list[str]] = {"agree": [], "cr": []}
    for workers in args.workers:
        folders = []
        for round_ in range(args.rounds):
            for method in methods if round_ % 2 == 0 else methods[::-1]:
                folders.append(run_folder(root, method, workers, round_))
                run = run_once(method, pythons[method], specs[method], folders[-1], workers, args)
                runs.setdefault((method, workers), []).append(run)
                print(progress_line(method, workers, round_, run), flush=True)
        if len(methods) == 2:
            last = args.rounds - 1
            agree = agreement(run_folder(root, MMCONTRAST, workers, last),
                              run_folder(root, CLIP_RETRIEVAL, workers, last))  # fmt: skip
            notes["agree"].append(agreement_line(workers, agree))
            done = runs[(CLIP_RETRIEVAL, workers)]
            notes["cr"].append(clip_retrieval_line(workers, done, runs[(MMCONTRAST, workers)]))
        else:
            notes["agree"].append(f"- {workers} workers: {MISSING}")
        for folder in folders:
            shutil.rmtree(folder)
    loads.append(os.getloadavg()[0])
    first = {method: runs[(method, args.workers[0])][0] for method in methods}
    facts = {
        "params": params, "images": args.images, "megabytes": size / 1e6, "loads": loads,
        "threads": ", ".join(f"{m} {first[m]['threads']}" for m in methods),
        "versions": versions_text(first),
    }  # fmt: skip
    return result_rows(args, runs), facts, notes


def main() -> None:
    args = parse_args()
    python = find_clip_retrieval_python(args.clip_retrieval_python)
    if python is None:
        print(MISSING + "\n")
    elif not Path(python).exists() and shutil.which(python) is None:
        sys.exit(f"--clip-retrieval-python {python}: no such interpreter")
    with tempfile.TemporaryDirectory(prefix="bench_embed_") as tmp:
        rows, facts, notes = bench(args, Path(tmp), python)
    print("\n" + text_table(rows, columns(args.batch_size), left=1) + "\n")
    print("Same model and preprocessing:\n" + "\n".join(notes["agree"]))
    if notes["cr"]:
        print("\nWhere clip-retrieval's time goes:\n" + "\n".join(notes["cr"]))
    publish(HEADING, markdown_section(args, rows, facts, notes), args.write)


if __name__ == "__main__":
    main()
