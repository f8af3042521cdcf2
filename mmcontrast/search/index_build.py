"""Building a planned faiss index: training its quantizers, adding vectors under their row ids.

k-means runs fewer iterations than faiss's default (25): the centroids barely move after
the first ten, and the search parameter is tuned afterwards against exact search anyway, so
a slightly worse partition costs a slightly larger ``nprobe``, not recall. Product
quantisers train on a smaller sample than faiss's default for the same reason; with one
small k-means per sub-vector, their training otherwise dominates the build.

Vectors are added under their row number as id, in chunks, so that a subset (all rows but
the held-out tuning queries, then those) can go in first without copying the collection.
An HNSW graph numbers its vectors in insertion order, so it is wrapped in ``IndexIDMap``.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from mmcontrast.search.index_choice import IndexPlan

IVF_KMEANS_ITERATIONS = 10
IVF_TRAIN_POINTS_PER_LIST = 50  # training sample per inverted list (capped by the collection)
PQ_KMEANS_ITERATIONS = 10
PQ_TRAIN_POINTS_PER_CENTROID = 40  # 10,240 training sub-vectors per 8-bit codebook
PQ_MIN_VECTORS = 256  # one per centroid of an 8-bit codebook
ADD_CHUNK = 65_536  # rows copied and added at a time


def create_index(plan: IndexPlan, dim: int, seed: int) -> Any:
    """An empty faiss index for ``plan`` (inner product), its build parameters set."""
    index: Any = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
    if plan.kind == "hnsw":  # IDMap,HNSW..: the graph inside an id map
        graph: Any = faiss.downcast_index(index.index)
        graph.hnsw.efConstruction = plan.parameters["ef_construction"]
    if plan.kind.startswith("ivf"):
        ivf: Any = faiss.downcast_index(faiss.extract_index_ivf(index))  # IVF-SQ8 or IVF-PQ
        ivf.cp.niter, ivf.cp.seed = IVF_KMEANS_ITERATIONS, seed
        if plan.kind == "ivf-pq":
            ivf.do_polysemous_training = False  # an index_factory default; slow, unused here
            ivf.pq.cp.niter, ivf.pq.cp.seed = PQ_KMEANS_ITERATIONS, seed
            ivf.pq.cp.max_points_per_centroid = PQ_TRAIN_POINTS_PER_CENTROID
    return index


def train(index: Any, plan: IndexPlan, embeddings: np.ndarray, rows: np.ndarray, seed: int) -> None:
    """Trains an inverted file's centroids and codes on a sample of ``rows`` (no-op for
    the kinds that need no training).

    Raises:
        ValueError: Too few rows to train an IVF-PQ index.
    """
    if not plan.kind.startswith("ivf"):
        return
    if plan.kind == "ivf-pq" and len(rows) < PQ_MIN_VECTORS:
        raise ValueError(
            f"an IVF-PQ index needs at least {PQ_MIN_VECTORS} vectors to train its codebooks, "
            f"got {len(rows)}"
        )
    size = min(len(rows), plan.parameters["nlist"] * IVF_TRAIN_POINTS_PER_LIST)
    sample = np.sort(np.random.default_rng(seed).choice(rows, size=size, replace=False))
    index.train(embeddings[sample])


def add_rows(index: Any, embeddings: np.ndarray, rows: np.ndarray) -> None:
    """Adds ``embeddings[rows]`` under ids ``rows``, :data:`ADD_CHUNK` rows at a time."""
    for start in range(0, len(rows), ADD_CHUNK):
        ids = rows[start : start + ADD_CHUNK].astype(np.int64)
        index.add_with_ids(embeddings[ids], ids)
