"""Tuning an approximate index against exact search on the collection itself.

The queries are a sample of the collection's own vectors, held out of the index while it is
tuned (``index.py`` adds them afterwards): a vector already in an HNSW graph is linked to
its own neighbours, so searching for it would find them more easily than a new query finds
its own. Recall@k is measured against the exact top-k among the indexed vectors; a returned
neighbour counts when its exact similarity reaches the k-th exact one, so that ties
(duplicate vectors) count whichever of them the index returns.

The search-time parameter (HNSW's ``efSearch``, an inverted file's ``nprobe``) rises along
a ladder until recall@k reaches the target; where it cannot (compressed codes cap the
recall), the ladder stops once recall stops improving and the smallest setting within
:data:`PLATEAU` of the best is kept. Latency is measured one query at a time on one
thread, the way an interactive search runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

RECALL_K = 10
TUNING_QUERIES = 500  # sample of the collection searched per setting
LATENCY_QUERIES = 200  # single queries timed, after LATENCY_WARMUP untimed ones
LATENCY_WARMUP = 10
EXACT_BLOCK = 16_384  # collection rows scored against the queries at a time
TIE_TOLERANCE = 1e-5  # a neighbour this close to the k-th exact similarity is a hit
PLATEAU = 0.002  # recall gains smaller than this over PLATEAU_STEPS settings end the ladder
PLATEAU_STEPS = 3
EF_SEARCH_LADDER = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
NPROBE_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512,
                 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384)  # fmt: skip


def cpu_count() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextmanager
def faiss_threads(threads: int) -> Iterator[None]:
    """faiss's OpenMP threads set to ``threads`` inside the block, restored after it.

    One query is searched on one thread: faiss spreads a batch over threads by query, so
    more threads only add their start-up and synchronisation to a single query. The
    setting is process-wide: Python threads searching at once share it (which changes
    their speed, not their results).
    """
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, threads))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


@dataclass(frozen=True)
class GroundTruth:
    """Exact neighbours of held-out collection vectors among the indexed ones.

    Attributes:
        query_ids: Rows of the collection used as queries (not in the index while tuning).
        kth_score: Each query's k-th largest similarity to an indexed vector.
    """

    query_ids: np.ndarray
    kth_score: np.ndarray


def sample_queries(count: int, queries: int, seed: int) -> np.ndarray:
    """``queries`` distinct rows of ``count`` (all rows when there are fewer), sorted."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(count, size=min(queries, count), replace=False))


def ground_truth(
    embeddings: np.ndarray, query_ids: np.ndarray, k: int = RECALL_K, block: int = EXACT_BLOCK
) -> GroundTruth:
    """Exact k-th similarity of each query row among the other rows of ``embeddings``
    (the query rows themselves left out), ``block`` rows at a time."""
    queries = embeddings[query_ids]
    held_out = np.zeros(len(embeddings), dtype=bool)
    held_out[query_ids] = True
    best = np.full((len(queries), k), -np.inf, dtype=np.float32)
    for start in range(0, len(embeddings), block):
        scores = queries @ embeddings[start : start + block].T
        scores[:, held_out[start : start + block]] = -np.inf
        if scores.shape[1] > k:
            scores = np.partition(scores, -k, axis=1)[:, -k:]
        best = np.partition(np.concatenate([best, scores], axis=1), -k, axis=1)[:, -k:]
    return GroundTruth(query_ids, best.min(axis=1))


def recall_at_k(index: Any, embeddings: np.ndarray, truth: GroundTruth, k: int = RECALL_K) -> float:
    """Fraction of each query's exact top-``k`` that ``index`` returns (ties count)."""
    queries = embeddings[truth.query_ids]
    _, ids = index.search(queries, k)
    hits = 0
    for row, found in enumerate(ids):
        exact = embeddings[found[found >= 0]] @ queries[row]
        hits += int((exact >= truth.kth_score[row] - TIE_TOLERANCE).sum())
    return hits / (k * len(ids))


def search_parameter(kind: str) -> tuple[str, tuple[int, ...]] | None:
    """The tuned parameter's name and ladder for an index kind (``None``: nothing to tune)."""
    if kind == "hnsw":
        return "ef_search", EF_SEARCH_LADDER
    if kind.startswith("ivf"):
        return "nprobe", NPROBE_LADDER
    return None


def set_search_parameter(index: Any, name: str, value: int) -> None:
    """Sets ``efSearch`` or ``nprobe`` on ``index`` (kept when faiss writes the index)."""
    if name == "ef_search":
        hnsw: Any = faiss.downcast_index(index.index)  # IndexHNSWFlat inside IndexIDMap
        hnsw.hnsw.efSearch = value
    elif name == "nprobe":
        faiss.extract_index_ivf(index).nprobe = value
    else:
        raise ValueError(f"unknown search parameter {name!r}")


def tune(
    index: Any, kind: str, embeddings: np.ndarray, truth: GroundTruth, target: float
) -> tuple[dict[str, int], float]:
    """The smallest setting on the kind's ladder reaching ``target`` recall@10, set on
    ``index``; where none does, the smallest within :data:`PLATEAU` of the best.

    Returns:
        ``({parameter: value}, recall@10)``; ``({}, 1.0)`` for exact search.
    """
    tuned = search_parameter(kind)
    if tuned is None:
        return {}, 1.0
    name, ladder = tuned
    limit = faiss.extract_index_ivf(index).nlist if name == "nprobe" else max(ladder)
    tried: list[tuple[int, float]] = []
    for value in (v for v in ladder if v <= limit):
        set_search_parameter(index, name, value)
        tried.append((value, recall_at_k(index, embeddings, truth)))
        if tried[-1][1] >= target:
            break
        recent = [r for _, r in tried[-PLATEAU_STEPS - 1 :]]
        if len(recent) > PLATEAU_STEPS and recent[-1] - recent[0] < PLATEAU:
            break
    best = max(r for _, r in tried)
    value, recall = next((v, r) for v, r in tried if r >= min(target, best - PLATEAU))
    set_search_parameter(index, name, value)
    return {name: value}, recall


def single_query_latency(
    index: Any, queries: np.ndarray, k: int = RECALL_K, timed: int = LATENCY_QUERIES
) -> dict[str, float]:
    """p50 and p99 milliseconds of one query at a time, on one faiss thread."""
    rows = queries[: LATENCY_WARMUP + timed]
    times = []
    with faiss_threads(1):
        for i, query in enumerate(rows):
            start = time.perf_counter()
            index.search(query[None], k)
            if i >= min(LATENCY_WARMUP, len(rows) - 1):
                times.append(time.perf_counter() - start)
    p50, p99 = np.percentile(np.array(times) * 1e3, [50, 99])
    return {"p50": round(float(p50), 4), "p99": round(float(p99), 4)}
