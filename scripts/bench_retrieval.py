"""Times ``mmcontrast.eval.retrieval_metrics`` against CLIP_benchmark's own metric code.

Both run on the same synthetic embeddings: Ni images and Nt = 5 * Ni captions (5 per
image, as in COCO / Flickr30k), D = 512, float32, L2-normalised; each caption is its
image's embedding plus Gaussian noise (``--noise``), so recall is neither 0 nor 1.
The embeddings are written once to a temporary file; every implementation then runs
in its own subprocess with the same ``torch.set_num_threads``, so peak memory
(``ru_maxrss``) is measured separately. Reported per run: wall time (best of
``--repeats`` after one warm-up), speed ratio (CLIP_benchmark time / this one), peak
RSS and peak RSS minus the baseline after loading the embeddings, and whether every
shared metric (recall@1/5/10, both directions) counts the same hits (CLIP_benchmark
returns float32 means, mmcontrast exact ratios as Python floats). mmcontrast runs
twice: with its default ``max_matrix_elements`` (2**26) and a small budget (2**22).

The reference reproduces the post-embedding part of ``evaluate`` in
``clip_benchmark/metrics/zeroshot_retrieval.py`` of clip-benchmark 1.6.2 with its own
``recall_at_k`` and ``batchify``: the full ``texts_emb @ images_emb.t()`` score matrix,
a boolean positive-pair matrix, and ``batchify(recall_at_k, ...) > 0`` per k and
direction, with batch size 64 (in ``evaluate`` it is the dataloader batch size, and
the ``clip_benchmark eval`` CLI default ``--batch_size`` is 64).

Needs clip-benchmark, which is not an mmcontrast dependency; only torch and tqdm are
imported by its metric module:

    .venv/bin/pip install clip-benchmark --no-deps
    .venv/bin/python scripts/bench_retrieval.py                      # 5k x 25k
    .venv/bin/python scripts/bench_retrieval.py --sizes 5000 10000 --repeats 3
    .venv/bin/python scripts/bench_retrieval.py --write    # also record it in BENCHMARKS.md

It prints its tables; with ``--write`` the markdown table also replaces the
``## Retrieval metrics vs CLIP_benchmark`` section of ``scripts/BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_report import (  # scripts/bench_report.py
    add_write_flag,
    command_line,
    cpu_name,
    markdown_table,
    publish,
    text_table,
)

from mmcontrast.eval.retrieval import retrieval_metrics

try:  # imported here, so that both workers' baselines include both imports
    from clip_benchmark.metrics.zeroshot_retrieval import batchify, recall_at_k
except ImportError:
    batchify = recall_at_k = None

HEADING = "## Retrieval metrics vs CLIP_benchmark"
KS = (1, 5, 10)
CAPTIONS_PER_IMAGE = 5
CLIP_BENCHMARK_BATCH_SIZE = 64  # clip_benchmark eval --batch_size default
SMALL_BUDGET = 2**22
MISSING = "clip-benchmark is not installed: pip install clip-benchmark (--no-deps is enough)"


# ---------------------------------------------------------------- data


def make_embeddings(n_images: int, dim: int, noise: float, seed: int) -> dict[str, torch.Tensor]:
    """Unit image vectors and, per image, 5 captions = image + noise (renormalised)."""
    gen = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(n_images, dim, generator=gen), dim=1)
    text_to_image = torch.arange(n_images).repeat_interleave(CAPTIONS_PER_IMAGE)
    noise_vectors = torch.randn(len(text_to_image), dim, generator=gen) * (noise / dim**0.5)
    texts = F.normalize(images[text_to_image] + noise_vectors, dim=1)
    return {"images": images, "texts": texts, "text_to_image": text_to_image}


# ---------------------------------------------------------------- implementations


def run_clip_benchmark(images, texts, text_to_image, max_matrix_elements) -> dict[str, float]:
    """The post-embedding part of clip_benchmark's zeroshot_retrieval.evaluate."""
    batch_size, device = CLIP_BENCHMARK_BATCH_SIZE, "cpu"
    texts_image_index = text_to_image.tolist()  # evaluate() collects a Python list
    scores = texts @ images.t()
    positive_pairs = torch.zeros_like(scores, dtype=bool)
    positive_pairs[torch.arange(len(scores)), texts_image_index] = True
    metrics = {}
    for k in KS:
        metrics[f"image_retrieval_recall@{k}"] = (
            (batchify(recall_at_k, scores, positive_pairs, batch_size, device, k=k) > 0)
            .float().mean().item()
        )  # fmt: skip
        metrics[f"text_retrieval_recall@{k}"] = (
            (batchify(recall_at_k, scores.T, positive_pairs.T, batch_size, device, k=k) > 0)
            .float().mean().item()
        )  # fmt: skip
    return metrics


def run_mmcontrast(images, texts, text_to_image, max_matrix_elements) -> dict[str, float]:
    return retrieval_metrics(
        images, texts, text_to_image, ks=KS, max_matrix_elements=max_matrix_elements
    )


IMPLEMENTATIONS = {"clip_benchmark": run_clip_benchmark, "mmcontrast": run_mmcontrast}


# ---------------------------------------------------------------- worker (one subprocess each)


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(impl: str, data: Path, threads: int, repeats: int, budget: int) -> dict:
    """Loads the embeddings, warms up once, times ``repeats`` runs; returns a JSON-able dict."""
    torch.set_num_threads(threads)
    func = IMPLEMENTATIONS[impl]
    tensors = torch.load(data)
    args = (tensors["images"], tensors["texts"], tensors["text_to_image"], budget)
    baseline = max_rss_mib()
    metrics = func(*args)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        again = func(*args)
        times.append(time.perf_counter() - start)
        if again != metrics:
            raise RuntimeError(f"{impl} is not deterministic: {metrics} vs {again}")
    return {
        "times": times,
        "baseline_mib": baseline,
        "peak_mib": max_rss_mib(),
        "metrics": metrics,
        "threads": torch.get_num_threads(),
    }


def spawn(impl: str, data: Path, args: argparse.Namespace, budget: int) -> dict:
    command = [
        sys.executable, __file__, "--worker", impl, "--data", str(data),
        "--threads", str(args.threads), "--repeats", str(args.repeats),
        "--max-matrix-elements", str(budget),
    ]  # fmt: skip
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------- report


def hit_counts(metrics: dict, n_images: int) -> dict[str, int]:
    """Recall@k as the number of queries with a hit (CLIP_benchmark's means are float32)."""
    n_texts = CAPTIONS_PER_IMAGE * n_images
    return {
        key: round(metrics[key] * (n_texts if key.startswith("image_") else n_images))
        for key in (f"{way}_retrieval_recall@{k}" for way in ("image", "text") for k in KS)
    }


def compare(reference: dict, other: dict, n_images: int) -> str:
    ref, got = hit_counts(reference, n_images), hit_counts(other, n_images)
    wrong = [f"{key} {got[key] - ref[key]:+d}" for key in ref if got[key] != ref[key]]
    return "yes" if not wrong else "NO: " + ", ".join(wrong)


def result_rows(n_images: int, runs: dict[str, dict]) -> list[dict]:
    reference = runs["clip_benchmark"]
    ref_time = min(reference["times"])
    rows = []
    for label, run in runs.items():
        best = min(run["times"])
        rows.append({
            "size": f"{n_images:,} x {CAPTIONS_PER_IMAGE * n_images:,}",
            "impl": label,
            "time": best,
            "ratio": ref_time / best,
            "peak": run["peak_mib"],
            "extra": run["peak_mib"] - run["baseline_mib"],
            "block": run["block_mib"],
            "agree": "reference" if run is reference else compare(
                reference["metrics"], run["metrics"], n_images
            ),
        })  # fmt: skip
    return rows


COLUMNS = [
    ("images x captions", lambda r: r["size"]),
    ("implementation", lambda r: r["impl"]),
    ("best time (s)", lambda r: f"{r['time']:.2f}"),
    ("speed-up vs CLIP_benchmark", lambda r: f"{r['ratio']:.1f}x"),
    ("largest score block (MiB)", lambda r: f"{r['block']:,.0f}"),
    ("peak RSS (MiB)", lambda r: f"{r['peak']:,.0f}"),
    ("peak - after load (MiB)", lambda r: f"{r['extra']:,.0f}"),
    ("same hits, R@1/5/10 both ways", lambda r: r["agree"]),
]


def metrics_lines(n_images: int, metrics: dict) -> str:
    values = ", ".join(f"{key} {value:.4f}" for key, value in metrics.items())
    return f"- {n_images:,} images: {values}"


def markdown_section(
    args: argparse.Namespace, rows: list[dict], metric_lines: list[str], loads: list[float]
) -> str:
    command = command_line("scripts/bench_retrieval.py")
    return "\n".join([
        HEADING, "",
        f"`{command}` ({time.strftime('%Y-%m-%d')}): {os.cpu_count()} CPU cores "
        f"({cpu_name()}), {args.threads} torch threads in "
        f"each implementation, torch {torch.__version__}, clip-benchmark "
        f"{version('clip-benchmark')}. D={args.dim}, {CAPTIONS_PER_IMAGE} captions per image "
        f"(caption = image + noise {args.noise}), seed {args.seed}; best of {args.repeats} "
        f"after a warm-up, each implementation in its own subprocess. CLIP_benchmark: "
        f"`evaluate`'s metric part (full score matrix, `batchify(recall_at_k)`, batch "
        f"{CLIP_BENCHMARK_BATCH_SIZE}); mmcontrast: `retrieval_metrics`, default "
        f"`max_matrix_elements=2**26` and the small budget `2**22`. 1-minute load average "
        f"{loads[0]:.2f} at the start, {loads[1]:.2f} at the end. Times include the kernel's "
        "page faults on fresh large allocations, which vary between runs on a VM; compare "
        "rows of one run.", "",
        markdown_table(rows, COLUMNS), "",
        "Metrics (CLIP_benchmark):", "", *metric_lines, "",
    ])  # fmt: skip


# ---------------------------------------------------------------- main


RUNS = [  # label, implementation, max_matrix_elements
    ("clip_benchmark", "clip_benchmark", None),
    ("mmcontrast", "mmcontrast", 2**26),
    ("mmcontrast, budget 2**22", "mmcontrast", SMALL_BUDGET),
]


def score_block_mib(n_images: int, budget: int | None) -> float:
    """Largest similarity block held at once: the full matrix, or one chunk per direction."""
    n_texts = CAPTIONS_PER_IMAGE * n_images
    if budget is None:
        return n_texts * n_images * 4 / 2**20
    chunks = (min(n_rows, max(1, budget // n_cols)) * n_cols for n_rows, n_cols in
              ((n_texts, n_images), (n_images, n_texts)))  # fmt: skip
    return max(chunks) * 4 / 2**20


def bench_size(n_images: int, args: argparse.Namespace, tmp: Path) -> tuple[list[dict], str]:
    data = tmp / f"embeddings_{n_images}.pt"
    torch.save(make_embeddings(n_images, args.dim, args.noise, args.seed), data)
    runs = {}
    for label, impl, budget in RUNS:
        runs[label] = spawn(impl, data, args, budget or 0)
        runs[label]["block_mib"] = score_block_mib(n_images, budget)
    data.unlink()
    return result_rows(n_images, runs), metrics_lines(n_images, runs["clip_benchmark"]["metrics"])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000], help="numbers of images")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--noise", type=float, default=7.0, help="caption noise norm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after a warm-up")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    add_write_flag(parser)
    parser.add_argument("--worker", choices=sorted(IMPLEMENTATIONS), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--max-matrix-elements", type=int, default=2**26, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if recall_at_k is None:
        sys.exit(MISSING)
    if args.worker:
        result = worker(args.worker, args.data, args.threads, args.repeats,
                        args.max_matrix_elements)  # fmt: skip
        print(json.dumps(result))
        return
    rows, metric_lines, loads = [], [], [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        for n_images in args.sizes:
            size_rows, line = bench_size(n_images, args, Path(tmp))
            rows += size_rows
            metric_lines.append(line)
            print(text_table(size_rows, COLUMNS, left=2) + "\n", flush=True)
    loads.append(os.getloadavg()[0])
    if len(args.sizes) > 1:
        print(text_table(rows, COLUMNS, left=2) + "\n")
    print("Metrics (CLIP_benchmark):\n" + "\n".join(metric_lines))
    publish(HEADING, markdown_section(args, rows, metric_lines, loads), args.write)


if __name__ == "__main__":
    main()
