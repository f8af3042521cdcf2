"""Times mmcontrast's nearest-neighbour index against exact search and other ANN libraries.

Data: synthetic L2-normalised embeddings shaped like an image collection's rather than
uniform noise: ``--clusters`` centres in a 64-d subspace of the ``--dim`` dimensions, each
point its centre plus anisotropic Gaussian spread inside that subspace (``--spread``) plus
isotropic noise in every dimension (``--noise``), normalised. ``--queries`` more points of
the same mixture are held out of the collection: half tune the other libraries' search
parameter, half measure every method against exact search.

Methods, each in its own subprocess, so that peak memory is measured separately:

- ``torch-exact``: ``X @ q`` and ``topk`` in torch;
- ``flat``, ``chosen``, ``ivf-sq8``, ``ivf-pq``: :func:`mmcontrast.search.index.build_index`,
  forced to a kind or (``chosen``) choosing one itself for ``--memory-budget-mb``; each tunes
  its search parameter on the collection's own vectors to ``--target-recall``;
- ``usearch``, ``hnswlib``: their HNSW with faiss's graph parameters (M 32, efConstruction
  40), the search expansion raised on the tuning half until it reaches ``--target-recall``
  (rows say so where the package is not installed; ``--libraries-up-to`` skips them above
  a size: their HNSW takes minutes per million vectors on two cores).

Reported per method: build time (training and adding), tuning time (exact neighbours,
tuning, mmcontrast's own latency measurement), index size, peak RSS minus the RSS once the
data is loaded, recall@10 on the held-out queries (a neighbour counts when its similarity
reaches the exact 10th), the recall build_index recorded, and single-query latency p50/p99
on one thread after a warm-up. Below the table: exact search's single-query latency at
several sizes, which sets ``EXACT_MAX_ELEMENTS`` in ``mmcontrast/search/index_choice.py``.

    .venv/bin/pip install faiss-cpu usearch hnswlib
    .venv/bin/python scripts/bench_search.py                              # 100k vectors
    .venv/bin/python scripts/bench_search.py --sizes 100000 1000000 --libraries-up-to 100000
    .venv/bin/python scripts/bench_search.py --sizes 20000 --methods chosen flat
    .venv/bin/python scripts/bench_search.py --write    # also record it in BENCHMARKS.md

It prints its table and the markdown section; with ``--write`` that section also replaces
the ``## Nearest-neighbour search index`` section of ``scripts/BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from bench_report import (  # scripts/bench_report.py
    add_write_flag,
    command_line,
    cpu_name,
    markdown_table,
    publish,
    text_table,
)

from mmcontrast.search.index import build_index, load_index, search
from mmcontrast.search.index_choice import EXACT_MAX_ELEMENTS, HNSW_EF_CONSTRUCTION, HNSW_M_MAX
from mmcontrast.search.index_tuning import EF_SEARCH_LADDER, cpu_count, faiss_threads

HEADING = "## Nearest-neighbour search index"
K = 10
TOPIC_RANK = 64
HNSW_M = HNSW_M_MAX  # the graph build_index makes without a memory budget
WARMUP = 10
FAISS_KINDS = {"flat": "flat", "chosen": None, "ivf-sq8": "ivf-sq8", "ivf-pq": "ivf-pq"}
PACKAGES = {"usearch": "usearch", "hnswlib": "hnswlib"}  # method -> module it needs
METHODS = ["torch-exact", "flat", "chosen", "ivf-sq8", "ivf-pq", "usearch", "hnswlib"]
EXACT_SWEEP = (4096, 8192, 12288, 16384, 32768, 65536)


# ---------------------------------------------------------------- data


def make_embeddings(count: int, args: argparse.Namespace) -> np.ndarray:
    """``count`` normalised points of the clustered mixture described in the docstring."""
    rng = np.random.default_rng(args.seed)
    topic = np.linalg.qr(rng.standard_normal((args.dim, TOPIC_RANK)))[0].T.astype(np.float32)
    centres = rng.standard_normal((args.clusters, TOPIC_RANK), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    scales = rng.uniform(0.2, 1.8, size=(args.clusters, TOPIC_RANK)).astype(np.float32)
    scales *= args.spread / TOPIC_RANK**0.5
    labels = rng.integers(args.clusters, size=count)
    points = rng.standard_normal((count, TOPIC_RANK), dtype=np.float32)
    points *= scales[labels]
    points += centres[labels]
    x = points @ topic
    x += rng.standard_normal((count, args.dim), dtype=np.float32) * (args.noise / args.dim**0.5)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def kth_scores(data: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Each query's exact K-th largest similarity in ``data``."""
    with faiss_threads(cpu_count()):
        scores, _ = faiss.knn(queries, data, K, faiss.METRIC_INNER_PRODUCT)
    return scores[:, K - 1].copy()


def recall(ids: np.ndarray, data: np.ndarray, queries: np.ndarray, kth: np.ndarray) -> float:
    """Fraction of returned neighbours whose exact similarity reaches the exact K-th."""
    hits = 0
    for row, found in enumerate(ids):
        found = found[found >= 0][:K]
        hits += int((data[found] @ queries[row] >= kth[row] - 1e-5).sum())
    return hits / (K * len(ids))


def latency(one_query: Callable[[np.ndarray], Any], queries: np.ndarray, timed: int) -> dict:
    """p50 / p99 milliseconds of single queries, after WARMUP untimed ones."""
    for query in queries[:WARMUP]:
        one_query(query[None])
    times = []
    for query in queries[WARMUP : WARMUP + timed]:
        start = time.perf_counter()
        one_query(query[None])
        times.append(time.perf_counter() - start)
    p50, p99 = np.percentile(np.array(times) * 1e3, [50, 99])
    return {"p50": float(p50), "p99": float(p99)}


# ---------------------------------------------------------------- methods (one subprocess each)


def run_torch_exact(data: np.ndarray, tune: dict, test: dict, args: argparse.Namespace) -> dict:
    matrix = torch.from_numpy(data)  # shares the array: no index to build

    def top(queries: np.ndarray) -> np.ndarray:
        return torch.topk(torch.from_numpy(queries) @ matrix.T, K, dim=1).indices.numpy()

    torch.set_num_threads(cpu_count())
    ids = np.concatenate(
        [top(test["queries"][i : i + 256]) for i in range(0, len(test["queries"]), 256)]
    )
    torch.set_num_threads(1)
    return {
        "params": "X @ q, topk",
        "build_s": 0.0,
        "index_mib": data.nbytes / 2**20,
        "recall": recall(ids, data, test["queries"], test["kth"]),
        "latency": latency(top, test["queries"], args.latency_queries),
    }


def run_faiss(
    data: np.ndarray, tune: dict, test: dict, args: argparse.Namespace, kind: str | None
) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        info = build_index(
            data, folder, memory_budget_mb=args.memory_budget_mb, target_recall=args.target_recall,
            seed=args.seed, kind=kind,
        )  # fmt: skip
        total = time.perf_counter() - start
        index, _ = load_index(folder)
    _, ids = search(index, test["queries"], K)
    return {
        "params": " ".join([info.kind, *(f"{k}={v}" for k, v in info.parameters.items())]),
        "build_s": info.build_seconds,
        "tune_s": total - info.build_seconds,
        "index_mib": info.memory_mb,
        "recall": recall(ids, data, test["queries"], test["kth"]),
        "recorded": info.recall_at_10,
        "latency": latency(lambda q: search(index, q, K), test["queries"], args.latency_queries),
    }


def tune_expansion(search_batch: Callable[[np.ndarray], np.ndarray], set_ef: Callable[[int], None],
                   data: np.ndarray, tune: dict, target: float) -> int:  # fmt: skip
    """The first ladder value whose recall on the tuning queries reaches ``target``."""
    for ef in EF_SEARCH_LADDER:
        set_ef(ef)
        if recall(search_batch(tune["queries"]), data, tune["queries"], tune["kth"]) >= target:
            return ef
    return EF_SEARCH_LADDER[-1]


def run_usearch(data: np.ndarray, tune: dict, test: dict, args: argparse.Namespace) -> dict:
    from usearch.index import Index

    threads = cpu_count()
    index = Index(ndim=data.shape[1], metric="ip", dtype="f32", connectivity=HNSW_M,
                  expansion_add=HNSW_EF_CONSTRUCTION)  # fmt: skip
    start = time.perf_counter()
    index.add(np.arange(len(data)), data, threads=threads)
    build = time.perf_counter() - start

    def set_ef(ef: int) -> None:
        index.expansion_search = ef

    ef = tune_expansion(lambda q: index.search(q, K, threads=threads).keys.astype(np.int64),
                        set_ef, data, tune, args.target_recall)  # fmt: skip
    tune_s = time.perf_counter() - start - build
    ids = index.search(test["queries"], K, threads=threads).keys.astype(np.int64)
    return {
        "params": f"hnsw M={HNSW_M} ef_construction={HNSW_EF_CONSTRUCTION} ef_search={ef}, f32",
        "build_s": build,
        "tune_s": tune_s,
        "index_mib": index.memory_usage / 2**20,
        "recall": recall(ids, data, test["queries"], test["kth"]),
        "latency": latency(lambda q: index.search(q, K, threads=1), test["queries"],
                           args.latency_queries),
    }  # fmt: skip


def run_hnswlib(data: np.ndarray, tune: dict, test: dict, args: argparse.Namespace) -> dict:
    import hnswlib

    index = hnswlib.Index(space="ip", dim=data.shape[1])
    index.init_index(max_elements=len(data), ef_construction=HNSW_EF_CONSTRUCTION, M=HNSW_M,
                     random_seed=args.seed)  # fmt: skip
    index.set_num_threads(cpu_count())
    start = time.perf_counter()
    index.add_items(data, np.arange(len(data)))
    build = time.perf_counter() - start
    ef = tune_expansion(lambda q: index.knn_query(q, K)[0].astype(np.int64), index.set_ef,
                        data, tune, args.target_recall)  # fmt: skip
    tune_s = time.perf_counter() - start - build
    ids = index.knn_query(test["queries"], K)[0].astype(np.int64)
    index.set_num_threads(1)
    return {
        "params": f"hnsw M={HNSW_M} ef_construction={HNSW_EF_CONSTRUCTION} ef_search={ef}",
        "build_s": build,
        "tune_s": tune_s,
        "index_mib": index.index_file_size() / 2**20,
        "recall": recall(ids, data, test["queries"], test["kth"]),
        "latency": latency(lambda q: index.knn_query(q, K), test["queries"], args.latency_queries),
    }


def memory_mib(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (its high-water mark) of this process in MiB,
    which, unlike ``ru_maxrss``, starts afresh at ``exec`` rather than at the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(method: str, folder: Path, args: argparse.Namespace) -> dict:
    """Loads the data, runs one method; the peak RSS above the loaded data is its cost."""
    data = np.load(folder / "data.npy")
    tune = {"queries": np.load(folder / "tune.npy"), "kth": np.load(folder / "tune_kth.npy")}
    test = {"queries": np.load(folder / "test.npy"), "kth": np.load(folder / "test_kth.npy")}
    baseline = memory_mib("VmRSS")
    if method == "torch-exact":
        result = run_torch_exact(data, tune, test, args)
    elif method in FAISS_KINDS:
        result = run_faiss(data, tune, test, args, FAISS_KINDS[method])
    elif method == "usearch":
        result = run_usearch(data, tune, test, args)
    else:
        result = run_hnswlib(data, tune, test, args)
    return {**result, "peak_mib": memory_mib("VmHWM") - baseline}


def spawn(method: str, folder: Path, args: argparse.Namespace) -> dict:
    command = [
        sys.executable, __file__, "--worker", method, "--data", str(folder),
        "--target-recall", str(args.target_recall), "--seed", str(args.seed),
        "--latency-queries", str(args.latency_queries),
    ]  # fmt: skip
    if args.memory_budget_mb is not None:
        command += ["--memory-budget-mb", str(args.memory_budget_mb)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "wall_s": time.perf_counter() - start}


# ---------------------------------------------------------------- report


def exact_sweep(data: np.ndarray, queries: np.ndarray, timed: int) -> list[tuple[int, float]]:
    """Single-query p50 (ms, one thread) of exact search over the first n rows."""
    return [(n, exact_p50(data[:n], queries, timed)) for n in EXACT_SWEEP if n <= len(data)]


def exact_p50(data: np.ndarray, queries: np.ndarray, timed: int) -> float:
    index = faiss.IndexFlatIP(data.shape[1])
    index.add(data)
    with faiss_threads(1):
        return latency(lambda q: index.search(q, K), queries, timed)["p50"]


def bench_size(count: int, args: argparse.Namespace, tmp: Path) -> list[dict]:
    start = time.perf_counter()
    every = make_embeddings(count + args.queries, args)
    data, held_out = every[:count], every[count:]
    half = len(held_out) // 2
    np.save(tmp / "data.npy", data)
    for name, queries in (("tune", held_out[:half]), ("test", held_out[half:])):
        np.save(tmp / f"{name}.npy", queries)
        np.save(tmp / f"{name}_kth.npy", kth_scores(data, queries))
    print(f"{count:,} vectors: data and exact neighbours in {time.perf_counter() - start:.0f} s",
          flush=True)  # fmt: skip
    rows = []
    for method in args.methods:
        module = PACKAGES.get(method)
        if module and importlib.util.find_spec(module) is None:
            rows.append({"count": count, "method": method, "params": "not installed"})
            continue
        if module and args.libraries_up_to is not None and count > args.libraries_up_to:
            continue
        result = spawn(method, tmp, args)
        rows.append({"count": count, "method": method, **result})
        print(text_table(rows[-1:], COLUMNS, left=3), flush=True)
    return rows


def cell(key: str, fmt: str, sub: str | None = None) -> Callable[[dict], str]:
    def show(row: dict) -> str:
        value = row.get(key)
        value = value.get(sub) if isinstance(value, dict) and sub else value
        return "-" if value is None else format(value, fmt)

    return show


COLUMNS = [
    ("vectors", lambda r: f"{r['count']:,}"),
    ("method", lambda r: r["method"]),
    ("configuration", lambda r: r.get("params", "")),
    ("build (s)", cell("build_s", ".1f")),
    ("tuning (s)", cell("tune_s", ".1f")),
    ("index (MiB)", cell("index_mib", ",.0f")),
    ("peak RSS - data (MiB)", cell("peak_mib", ",.0f")),
    ("recall@10 held-out", cell("recall", ".3f")),
    ("recall@10 recorded", cell("recorded", ".3f")),
    ("p50 (ms)", cell("latency", ".2f", "p50")),
    ("p99 (ms)", cell("latency", ".2f", "p99")),
]


def versions() -> str:
    names = ["faiss-cpu", "usearch", "hnswlib"]
    found = []
    for name in names:
        try:
            found.append(f"{name} {version(name)}")
        except Exception:  # not installed
            continue
    return ", ".join(found + [f"torch {torch.__version__}", f"numpy {np.__version__}"])


def summary_lines(
    rows: list[dict], sweep: list[tuple[int, float]], dim: int, target: float
) -> list[str]:
    lines = [
        f"- exact search (faiss IndexFlatIP), one {dim}-d query on one thread, p50: "
        + ", ".join(f"{n:,} vectors {ms:.2f} ms" for n, ms in sweep)
        + f"; build_index searches exactly up to {EXACT_MAX_ELEMENTS // dim:,} vectors of "
        f"{dim}-d (`EXACT_MAX_ELEMENTS` = {EXACT_MAX_ELEMENTS:,} elements)."
    ]  # fmt: skip
    for row in rows:
        if row["method"] == "chosen" and "recall" in row:
            lines.append(
                f"- {row['count']:,} vectors, build_index's choice ({row['params']}): recall@10 "
                f"{row['recall']:.3f} on held-out queries at p50 {row['latency']['p50']:.2f} ms "
                f"(target recall@10 >= {target} under 5 ms), index {row['index_mib']:,.0f} MiB, "
                f"peak {row['peak_mib']:,.0f} MiB above the data."
            )
    return lines


def markdown_section(args: argparse.Namespace, rows: list[dict], lines: list[str],
                     loads: list[float], minutes: float) -> str:  # fmt: skip
    command = command_line("scripts/bench_search.py")
    limit = args.libraries_up_to
    libraries = f" (run up to {limit:,} vectors)" if limit is not None else ""
    return "\n".join([
        HEADING, "",
        f"`{command}` ({time.strftime('%Y-%m-%d')}, {minutes:.0f} min): {os.cpu_count()} CPU "
        f"cores ({cpu_name()}), {versions()}. Synthetic {args.dim}-d normalised embeddings: "
        f"{args.clusters} clusters in a {TOPIC_RANK}-d subspace, spread {args.spread}, noise "
        f"{args.noise}, seed {args.seed}; {args.queries} held-out queries, half tuning "
        f"usearch and hnswlib{libraries}, half measuring every row. Builds use every core; "
        f"latency is one "
        f"query at a time on one thread, {args.latency_queries} queries after {WARMUP} "
        f"warm-up ones. Target recall@10 {args.target_recall}, memory budget "
        f"{args.memory_budget_mb or 'none'}. Each method runs in its own subprocess; peak RSS "
        f"is its high-water mark minus the RSS once the data is loaded. 1-minute load average "
        f"{loads[0]:.2f} at the start, {loads[1]:.2f} at the end (above {os.cpu_count()}, "
        "other jobs shared the cores and times are noisy).", "",
        markdown_table(rows, COLUMNS), "",
        *lines, "",
    ])  # fmt: skip


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000], help="collection sizes")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=1024)
    parser.add_argument("--spread", type=float, default=1.0, help="within-cluster spread")
    parser.add_argument("--noise", type=float, default=0.25, help="isotropic noise norm")
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries")
    parser.add_argument("--latency-queries", type=int, default=200, help="single queries timed")
    parser.add_argument("--target-recall", type=float, default=0.95)
    parser.add_argument("--memory-budget-mb", type=float, help="for build_index (default none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--libraries-up-to",
        type=int,
        help="run usearch and hnswlib only at sizes up to this (default: every size)",
    )
    add_write_flag(parser)
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.data, args)))
        return
    start, loads, rows = time.perf_counter(), [os.getloadavg()[0]], []
    with tempfile.TemporaryDirectory() as tmp:
        for count in args.sizes:
            rows += bench_size(count, args, Path(tmp))
        data, test = np.load(Path(tmp) / "data.npy"), np.load(Path(tmp) / "test.npy")
        sweep = exact_sweep(data, test, args.latency_queries)
    loads.append(os.getloadavg()[0])
    lines = summary_lines(rows, sweep, args.dim, args.target_recall)
    print("\n" + text_table(rows, COLUMNS, left=3))
    minutes = (time.perf_counter() - start) / 60
    section = markdown_section(args, rows, lines, loads, minutes)
    print("\n" + section)  # the record as --write would write it
    publish(HEADING, section, args.write)


if __name__ == "__main__":
    main()
