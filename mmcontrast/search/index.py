"""Nearest-neighbour index over L2-normalised embeddings, where cosine is inner product.

:func:`build_index` chooses the index from the collection's size and a memory budget as
autofaiss does (``index_choice.py``): exact search for small collections, HNSW while the
vectors and the graph fit, an inverted file with 8-bit scalar or product-quantised codes
below that. It tunes the search parameter on a sample of the collection's own vectors, held
out of the index meanwhile, until recall@10 against exact search reaches the target
(``index_tuning.py``), times single queries, and writes ``index.faiss`` (faiss's own
format, never a pickle) and ``index.json`` (``index_files.py``). :func:`load_index` checks
the file's SHA-256 first; :func:`search` refuses queries of another dimension (another
model's embeddings).

faiss is the library, chosen over usearch and hnswlib on ``scripts/bench_search.py`` (its
figures are in ``scripts/BENCHMARKS.md``): with the same graph parameters and recall, its
HNSW answers one query as fast as hnswlib's and faster than usearch's, and builds a little
slower than hnswlib's and faster than usearch's; and it alone holds every kind above (exact,
graph, and compressed inverted files for collections that outgrow memory) behind one search
call and one file format, which is not a pickle.

Example:
    >>> info = build_index(embeddings, "photos/index", metadata={"model": spec})  # doctest: +SKIP
    >>> index, info = load_index("photos/index")  # doctest: +SKIP
    >>> scores, ids = search(index, queries, k=10)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from mmcontrast.search.index_build import add_rows, create_index, train
from mmcontrast.search.index_choice import KINDS, plan_index
from mmcontrast.search.index_files import IndexInfo, load_index, save_index
from mmcontrast.search.index_tuning import (
    TUNING_QUERIES,
    cpu_count,
    faiss_threads,
    ground_truth,
    sample_queries,
    single_query_latency,
    tune,
)

__all__ = ["KINDS", "IndexInfo", "build_index", "load_index", "make_index", "save_index", "search"]

logger = logging.getLogger(__name__)

NORM_TOLERANCE = 1e-3  # |norm - 1| above this is not an L2-normalised row
MIN_APPROXIMATE = 100  # vectors below which only exact search is built
HELD_OUT_FRACTION = 4  # at most 1 / 4 of the collection is held out to tune
BATCH_THREADS_FROM = 20  # queries from which a search uses every core (faiss splits by query)


def build_index(
    embeddings: np.ndarray,
    output: str | Path,
    *,
    memory_budget_mb: float | None = None,
    target_recall: float = 0.95,
    metadata: dict[str, Any] | None = None,
    seed: int = 0,
    kind: str | None = None,
) -> IndexInfo:
    """Builds, tunes and measures the index of ``embeddings`` and writes it to ``output``.

    Args:
        embeddings: ``(N, d)`` float32, each row L2-normalised; row ``i`` gets id ``i``.
        output: Folder to write ``index.faiss`` and ``index.json`` into (created; an index
            already there is replaced, each file atomically).
        memory_budget_mb: Memory the index may take, in MiB; ``None`` for no limit.
        target_recall: recall@10 against exact search that the search parameter is tuned
            to reach. Compressed codes may cap recall below it: then the best reachable is
            kept, recorded, and a warning logged.
        metadata: JSON-serialisable description saved in the manifest (model spec...).
        seed: Seed of the held-out sample and of k-means.
        kind: Force an index kind of :data:`KINDS` instead of choosing one.

    Returns:
        The index's :class:`IndexInfo`, as saved in ``index.json``.

    Raises:
        ValueError: ``embeddings`` is not a 2-D array of L2-normalised rows, a parameter is
            out of range, ``metadata`` is not JSON-serialisable, or no index fits
            ``memory_budget_mb``.
    """
    metadata = dict(metadata or {})
    try:
        json.dumps(metadata)
    except TypeError as error:
        raise ValueError(f"metadata must be JSON-serialisable: {error}") from None
    index, info = make_index(
        embeddings, memory_budget_mb=memory_budget_mb, target_recall=target_recall, seed=seed,
        kind=kind,
    )  # fmt: skip
    info.metadata = metadata
    return save_index(index, info, output)


def make_index(
    embeddings: np.ndarray,
    *,
    memory_budget_mb: float | None = None,
    target_recall: float = 0.95,
    seed: int = 0,
    kind: str | None = None,
) -> tuple[Any, IndexInfo]:
    """:func:`build_index` without writing: the tuned faiss index and its measurements.

    Returns:
        ``(index, info)``; ``info.sha256`` and ``info.memory_mb`` stay empty until
        :func:`save_index`.

    Raises:
        ValueError: As :func:`build_index`.
    """
    embeddings = _checked_embeddings(embeddings)
    if not 0.0 < target_recall <= 1.0:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    if memory_budget_mb is not None and memory_budget_mb <= 0:
        raise ValueError(f"memory_budget_mb must be positive, got {memory_budget_mb}")
    count, dim = embeddings.shape
    plan = plan_index(count, dim, memory_budget_mb, kind)
    if plan.kind != "flat" and count < MIN_APPROXIMATE:
        raise ValueError(
            f"an approximate index needs at least {MIN_APPROXIMATE} vectors, got {count}: "
            "search these exactly (leave kind unset)"
        )
    threads = cpu_count()
    searched: dict[str, int] = {}
    recall = 1.0  # exact search
    with faiss_threads(threads):
        start = time.perf_counter()
        index = create_index(plan, dim, seed)
        if plan.kind == "flat":
            index.add(embeddings)
            query_ids = sample_queries(count, TUNING_QUERIES, seed)
        else:
            query_ids = sample_queries(count, min(TUNING_QUERIES, count // HELD_OUT_FRACTION), seed)
            indexed = np.setdiff1d(np.arange(count), query_ids, assume_unique=True)
            train(index, plan, embeddings, indexed, seed)
            add_rows(index, embeddings, indexed)
        build_seconds = time.perf_counter() - start
        if plan.kind != "flat":
            truth = ground_truth(embeddings, query_ids)
            searched, recall = tune(index, plan.kind, embeddings, truth, target_recall)
        latency = single_query_latency(index, embeddings[query_ids])
        tuning_seconds = time.perf_counter() - start - build_seconds
        if plan.kind != "flat":
            add_started = time.perf_counter()
            add_rows(index, embeddings, query_ids)
            build_seconds += time.perf_counter() - add_started
    if recall < target_recall:
        _warn_below_target(plan.kind, recall, searched, target_recall)
    info = IndexInfo(
        kind=plan.kind,
        parameters={**plan.parameters, **searched},
        count=count,
        dim=dim,
        recall_at_10=round(recall, 4),
        latency_ms=latency,
        build_seconds=round(build_seconds, 3),
        tuning_seconds=round(tuning_seconds, 3),
        target_recall=target_recall,
        memory_budget_mb=memory_budget_mb,
        tuning_queries=len(query_ids),
        threads=threads,
        faiss_version=faiss.__version__,
    )
    return index, info


def search(index: Any, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest indexed vectors of each query by inner product.

    Fewer than :data:`BATCH_THREADS_FROM` queries run on one thread, a larger batch on every
    core (see :func:`~mmcontrast.search.index_tuning.faiss_threads`).

    Args:
        index: A faiss index from :func:`load_index` or :func:`make_index`.
        queries: ``(q, d)`` L2-normalised queries, ``d`` the index's dimension.
        k: Neighbours per query.

    Returns:
        ``(scores, ids)``, both ``(q, k)``, best first: float32 inner products (estimated
        from the codes for the ``ivf-*`` kinds) and int64 row ids, ``-1`` where fewer than
        ``k`` vectors were found.

    Raises:
        ValueError: ``queries`` is not 2-D, its dimension is not the index's, or ``k < 1``.
    """
    queries = np.asarray(queries)
    if queries.ndim != 2:
        raise ValueError(f"queries must be a (q, d) array, got shape {queries.shape}")
    if queries.shape[1] != index.d:
        raise ValueError(
            f"the queries have {queries.shape[1]} dimensions but the index was built from "
            f"{index.d}-dimensional embeddings: embed the queries with the model that "
            "embedded the collection"
        )
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    with faiss_threads(cpu_count() if len(queries) >= BATCH_THREADS_FROM else 1):
        scores, ids = index.search(queries, k)
    return scores, ids


def _checked_embeddings(embeddings: np.ndarray) -> np.ndarray:
    """``embeddings`` as a C-contiguous float32 array, once its shape and norms are checked."""
    array = np.asarray(embeddings)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"embeddings must be a non-empty (N, d) array, got shape {array.shape}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", array, array))  # no (N, d) temporary
    bad = np.flatnonzero(~(np.abs(norms - 1.0) <= NORM_TOLERANCE))
    if len(bad):
        raise ValueError(
            f"{len(bad)} of {len(array)} embeddings are not L2-normalised (row {bad[0]} has "
            f"norm {norms[bad[0]]:.4g}): divide each row by its norm before indexing"
        )
    return array


def _warn_below_target(kind: str, recall: float, searched: dict[str, int], target: float) -> None:
    cause = (
        "its compressed codes cap the recall: a larger memory_budget_mb gets larger codes"
        if kind.startswith("ivf")
        else "the search parameter reached the top of its range"
    )
    logger.warning(
        "the %s index reaches recall@10 %.3f at %s, below the target %.3f; %s",
        kind, recall, searched, target, cause,
    )  # fmt: skip
