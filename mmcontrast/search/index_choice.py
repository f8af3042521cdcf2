"""Which faiss index a collection gets: its kind and parameters, from its size and a memory budget.

The rule follows autofaiss (``get_optimal_index_keys_v2``): exact search while it is fast
enough, a graph (HNSW) while the full vectors and the graph's links fit in memory, an
inverted file (IVF) with compressed codes below that, the code the largest that fits:

- ``flat``: exact inner product (``IndexFlatIP``) while ``count * dim`` is at most
  :data:`EXACT_MAX_ELEMENTS`. Up to there one exact query, scanning every vector on one
  thread, takes a couple of milliseconds on two cores (``scripts/bench_search.py`` prints
  exact search's latency at several sizes), with no build, no tuning and recall 1.
- ``hnsw``: ``IndexHNSWFlat``, full vectors and ``2 * M`` links each on its bottom layer
  (inside ``IndexIDMap``, see ``index_build.py``); ``M`` the largest up to 32 that fits, and
  no graph below ``M = 8`` (autofaiss's bounds).
- ``ivf-sq8``: ``IndexIVFScalarQuantizer``, one byte per dimension: a quarter of the
  vectors' memory at nearly their recall.
- ``ivf-pq``: ``IndexIVFPQ``, ``m`` bytes per vector (8-bit codes of ``dim / m``-wide
  sub-vectors), ``m`` the largest divisor of ``dim`` that fits, at most ``dim / 4``.

Inverted files get ``nlist`` lists, the power of two nearest ``2 * sqrt(count)`` and no
more than k-means can train with 39 points per list: fewer lists than faiss's guideline
(``4..16 * sqrt(count)``), since k-means costs grow with the square of ``nlist`` (its
training sample grows with it) and builds here run on a few cores; a larger ``nprobe``
makes up for it at search time. The search-time parameter (``efSearch``, ``nprobe``) is
tuned on the collection itself against exact search (``index_tuning.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# count * dim up to which exact search is chosen: 12,288 vectors of 512-d (24 MiB of float32)
EXACT_MAX_ELEMENTS = 12_288 * 512
KINDS = ("flat", "hnsw", "ivf-sq8", "ivf-pq")

HNSW_M_MAX = 32  # links per vector and layer (2 * M on the bottom layer)
HNSW_M_MIN = 8  # below this, an inverted file instead
HNSW_EF_CONSTRUCTION = 40  # candidates kept while inserting
IVF_MIN_POINTS_PER_LIST = 39  # faiss's k-means warns below this many training points per list
PQ_MAX_BYTES_FRACTION = 4  # PQ codes at most dim / 4 bytes: narrower sub-vectors train slowly
ID_BYTES = 8  # an int64 id per vector: in IVF lists, and in the IDMap around HNSW
MIB = 2**20


@dataclass(frozen=True)
class IndexPlan:
    """An index to build, before it is built and tuned.

    Attributes:
        kind: One of :data:`KINDS`.
        factory: The faiss ``index_factory`` description (with ``METRIC_INNER_PRODUCT``).
        parameters: Build parameters (``M``, ``ef_construction``, ``nlist``, ``pq_m``...).
        estimated_mb: The index's expected memory in MiB (vectors, codes, links, ids,
            centroids).
    """

    kind: str
    factory: str
    parameters: dict[str, int] = field(default_factory=dict)
    estimated_mb: float = 0.0


def plan_index(
    count: int, dim: int, memory_budget_mb: float | None = None, kind: str | None = None
) -> IndexPlan:
    """The index for ``count`` vectors of ``dim`` floats within ``memory_budget_mb``.

    Args:
        count: Vectors in the collection.
        dim: Their dimension.
        memory_budget_mb: Memory the index may take in MiB; ``None`` for no limit.
        kind: Force a kind of :data:`KINDS` (tests, comparisons); ``None`` chooses.

    Returns:
        The plan: exact below the size threshold, else the most accurate kind that fits.

    Raises:
        ValueError: ``kind`` is unknown, or no kind fits the budget (the message gives the
            smallest budget that would do).
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}: choose one of {', '.join(KINDS)}")
    budget = math.inf if memory_budget_mb is None else memory_budget_mb * MIB
    if kind == "flat" or (
        kind is None and count * dim <= EXACT_MAX_ELEMENTS and flat_bytes(count, dim) <= budget
    ):
        return IndexPlan("flat", "Flat", {}, flat_bytes(count, dim) / MIB)
    m = hnsw_m_for(count, dim, budget)
    if kind == "hnsw" or (kind is None and m is not None):
        m = m or HNSW_M_MIN
        parameters = {"M": m, "ef_construction": HNSW_EF_CONSTRUCTION}
        return IndexPlan("hnsw", f"IDMap,HNSW{m},Flat", parameters, hnsw_bytes(count, dim, m) / MIB)
    nlist = nlist_for(count)
    sq8 = ivf_bytes(count, dim, nlist, dim)
    if kind == "ivf-sq8" or (kind is None and sq8 <= budget):
        return IndexPlan("ivf-sq8", f"IVF{nlist},SQ8", {"nlist": nlist}, sq8 / MIB)
    pq_m = pq_bytes_for(count, dim, nlist, budget)
    if pq_m is None:
        smallest = ivf_bytes(count, dim, nlist, min(pq_sizes(dim)))
        raise ValueError(
            f"no index of {count} vectors of {dim} dimensions fits in {memory_budget_mb} MiB: "
            f"the smallest (IVF-PQ, {min(pq_sizes(dim))} byte codes) takes about "
            f"{describe_size(smallest)}; raise memory_budget_mb"
        )
    parameters = {"nlist": nlist, "pq_m": pq_m, "pq_bits": 8}
    pq = ivf_bytes(count, dim, nlist, pq_m)
    return IndexPlan("ivf-pq", f"IVF{nlist},PQ{pq_m}x8", parameters, pq / MIB)


def describe_size(size: float) -> str:
    """``size`` bytes in MiB to three significant figures (``"1200 MiB"``, ``"0.312 MiB"``),
    so that a budget can be set from it; in KiB too below 0.1 MiB."""
    mib = size / MIB
    if mib < 0.1:
        return f"{size / 1024:.3g} KiB ({mib:.2g} MiB)"
    return f"{mib:.0f} MiB" if mib >= 100 else f"{mib:.3g} MiB"


def hnsw_m_for(count: int, dim: int, budget: float) -> int | None:
    """The largest HNSW ``M`` from :data:`HNSW_M_MIN` to :data:`HNSW_M_MAX` that fits
    ``budget`` bytes, or ``None``."""
    fits = (m for m in range(HNSW_M_MAX, HNSW_M_MIN - 1, -1) if hnsw_bytes(count, dim, m) <= budget)
    return next(fits, None)


def nlist_for(count: int) -> int:
    """Inverted lists for ``count`` vectors: the power of two nearest ``2 * sqrt(count)``,
    at most ``count / 39``."""
    target = 2 * math.sqrt(max(count, 1))
    nlist = 2 ** round(math.log2(target))
    while nlist > 1 and nlist * IVF_MIN_POINTS_PER_LIST > count:
        nlist //= 2
    return nlist


def pq_sizes(dim: int) -> list[int]:
    """PQ code sizes (bytes, one 8-bit code per sub-vector) for ``dim``, largest first."""
    largest = max(1, dim // PQ_MAX_BYTES_FRACTION)
    return [m for m in range(largest, 0, -1) if dim % m == 0]


def pq_bytes_for(count: int, dim: int, nlist: int, budget: float) -> int | None:
    """The largest PQ code size whose IVF-PQ index fits ``budget`` bytes, or ``None``."""
    return next((m for m in pq_sizes(dim) if ivf_bytes(count, dim, nlist, m) <= budget), None)


def flat_bytes(count: int, dim: int) -> int:
    return count * dim * 4


def hnsw_bytes(count: int, dim: int, m: int) -> int:
    """Vectors, ``2 * M`` int32 links on the bottom layer, ``M`` on each upper layer (a
    vector reaches layer ``l`` with probability ``M ** -l``), a level, an offset and an id
    (``IndexIDMap``) each."""
    upper_layers = 1 / (m - 1)
    links = 4 * (2 * m + m * upper_layers)
    return int(count * (dim * 4 + links + 4 + 8 + ID_BYTES))


def ivf_bytes(count: int, dim: int, nlist: int, code_bytes: int) -> int:
    """Codes and ids in the lists, float32 centroids, and the quantizer's own tables."""
    codebooks = dim * 256 * 4 + 2 * dim * 4  # PQ centroids or SQ8 ranges, whichever is larger
    return count * (code_bytes + ID_BYTES) + nlist * dim * 4 + codebooks
