"""The nearest-neighbour index: the kind chosen from size and memory budget, recall against
exact search, the files written and checked on loading, and the errors a user can cause.

Collections are small clustered sets (a few thousand 32-d vectors), so every kind builds in
about a second; no assertion depends on timing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path

import faiss
import numpy as np
import pytest

from mmcontrast.search.index import (
    build_index,
    load_index,
    make_index,
    save_index,
    search,
)
from mmcontrast.search.index_choice import (
    EXACT_MAX_ELEMENTS,
    hnsw_bytes,
    ivf_bytes,
    nlist_for,
    plan_index,
)
from mmcontrast.search.index_files import INDEX_FILE, MANIFEST_FILE
from mmcontrast.search.index_tuning import ground_truth

DIM = 32
COUNT = 3000
MIB = 2**20


def clustered(count: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """L2-normalised points around 24 centres in an 8-d subspace, plus noise in every
    dimension: neighbours are close but not trivially separated."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, 8)))[0].T
    centres = rng.standard_normal((24, 8))
    labels = rng.integers(24, size=count)
    points = (centres[labels] + 0.8 * rng.standard_normal((count, 8))) @ basis
    points += 0.2 * rng.standard_normal((count, dim)) / math.sqrt(dim)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def exact_top(embeddings: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ embeddings.T), axis=1, kind="stable")[:, :k]


@pytest.fixture(scope="module")
def embeddings() -> np.ndarray:
    return clustered(COUNT)


@pytest.fixture(scope="module")
def hnsw_folder(embeddings: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hnsw")
    build_index(embeddings, folder, kind="hnsw", metadata={"model": "tiny-clip", "count": COUNT})
    return folder


# ------------------------------------------------------------------ the choice


def test_small_collections_get_exact_search() -> None:
    assert plan_index(1000, 512).kind == "flat"
    assert plan_index(EXACT_MAX_ELEMENTS // 512, 512).kind == "flat"
    assert plan_index(EXACT_MAX_ELEMENTS // 512 + 1, 512).kind == "hnsw"


def test_the_budget_moves_large_collections_to_smaller_codes() -> None:
    count, dim = 1_000_000, 512
    assert plan_index(count, dim).kind == "hnsw"
    assert plan_index(count, dim).parameters["M"] == 32
    assert plan_index(count, dim, hnsw_bytes(count, dim, 32) / MIB).parameters["M"] == 32
    smaller = plan_index(count, dim, hnsw_bytes(count, dim, 20) / MIB + 1)
    assert smaller.kind == "hnsw" and smaller.parameters["M"] == 20
    assert plan_index(count, dim, hnsw_bytes(count, dim, 8) / MIB - 1).kind != "hnsw"
    sq8 = plan_index(count, dim, 1500)
    assert sq8.kind == "ivf-sq8" and sq8.estimated_mb <= 1500
    assert plan_index(count, dim, 300).parameters["pq_m"] == dim // 4  # the largest code
    pq = plan_index(count, dim, 60)
    assert pq.kind == "ivf-pq" and pq.estimated_mb <= 60
    assert dim % pq.parameters["pq_m"] == 0
    larger = plan_index(count, dim, 100)
    assert larger.kind == "ivf-pq" and larger.parameters["pq_m"] > pq.parameters["pq_m"]
    assert larger.parameters["pq_m"] == max(
        m
        for m in range(1, dim // 4 + 1)
        if dim % m == 0 and ivf_bytes(count, dim, larger.parameters["nlist"], m) <= 100 * MIB
    )


def test_a_budget_nothing_fits_is_refused_with_the_smallest_that_would() -> None:
    with pytest.raises(ValueError, match=r"fits in 1 MiB.*about 13\.1 MiB; raise memory_budget_mb"):
        plan_index(1_000_000, 512, 1)


def test_a_small_smallest_index_is_not_rounded_to_zero() -> None:
    with pytest.raises(ValueError, match=r"about 35\.4 KiB \(0\.035 MiB\); raise"):
        plan_index(300, 32, 0.01)


@pytest.mark.parametrize("count", [10_000, 100_000, 1_000_000, 10_000_000])
def test_inverted_lists_follow_the_square_root_of_the_collection(count: int) -> None:
    nlist = nlist_for(count)
    assert nlist & (nlist - 1) == 0  # a power of two
    assert math.sqrt(count) <= nlist <= 4 * math.sqrt(count)


def test_inverted_lists_keep_enough_training_points_in_small_collections() -> None:
    assert nlist_for(1000) * 39 <= 1000
    assert nlist_for(10) == 1


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown index kind 'lsh'"):
        plan_index(100, 8, kind="lsh")


# ------------------------------------------------------------------ measuring


def test_exact_neighbours_leave_the_held_out_rows_out(embeddings: np.ndarray) -> None:
    query_ids = np.array([0, 7, 1500, COUNT - 1])
    truth = ground_truth(embeddings, query_ids, k=10, block=257)  # blocks cut anywhere
    scores = embeddings[query_ids] @ embeddings.T
    scores[:, query_ids] = -np.inf  # neither itself nor another held-out row
    np.testing.assert_allclose(truth.kth_score, np.sort(scores, axis=1)[:, -10], rtol=1e-6)


# ------------------------------------------------------------------ building and searching


def test_exact_search_below_the_threshold(embeddings: np.ndarray, tmp_path: Path) -> None:
    info = build_index(embeddings, tmp_path)
    assert info.kind == "flat" and info.recall_at_10 == 1.0
    index, _ = load_index(tmp_path)
    queries = clustered(50, seed=1)
    scores, ids = search(index, queries, 10)
    similarity = queries @ embeddings.T
    best = -np.sort(-similarity, axis=1)[:, :10]
    np.testing.assert_allclose(scores, best, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(similarity, ids, axis=1), best, atol=1e-5)


@pytest.mark.parametrize("kind", ["hnsw", "ivf-sq8"])
def test_a_forced_approximate_kind_reaches_the_target_recall(
    embeddings: np.ndarray, kind: str, tmp_path: Path
) -> None:
    info = build_index(embeddings, tmp_path, kind=kind, target_recall=0.95)
    assert info.kind == kind
    assert info.recall_at_10 >= 0.95
    index, _ = load_index(tmp_path)
    queries = clustered(300, seed=2)  # new vectors of the same distribution
    _, ids = search(index, queries, 10)
    exact = exact_top(embeddings, queries, 10)
    new = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact, strict=True)])
    assert new >= 0.9  # another sample of queries: the same recall up to sampling noise


def test_compressed_codes_record_the_recall_they_reach(
    embeddings: np.ndarray, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="mmcontrast.search.index"):
        info = build_index(embeddings, tmp_path, kind="ivf-pq", target_recall=0.999)
    assert info.kind == "ivf-pq" and info.parameters["pq_m"] == DIM // 4
    assert 0.3 < info.recall_at_10 < 0.999
    assert "below the target" in caplog.text and "memory_budget_mb" in caplog.text


@pytest.mark.parametrize("kind", ["hnsw", "ivf-pq"])
def test_a_saved_index_finds_what_it_found_before_saving(
    embeddings: np.ndarray, kind: str, tmp_path: Path
) -> None:
    index, info = make_index(embeddings, kind=kind, target_recall=0.9)
    queries = clustered(30, seed=3)
    before = search(index, queries, 5)
    save_index(index, info, tmp_path)
    loaded, loaded_info = load_index(tmp_path)
    after = search(loaded, queries, 5)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0], rtol=1e-6)
    assert loaded_info == info


def test_the_tuned_search_parameter_is_saved(hnsw_folder: Path) -> None:
    index, info = load_index(hnsw_folder)
    assert faiss.downcast_index(index.index).hnsw.efSearch == info.parameters["ef_search"]


def test_one_query_and_a_batch_find_the_same(hnsw_folder: Path) -> None:
    index, _ = load_index(hnsw_folder)
    queries = clustered(40, seed=4)  # 40 queries search on every core, one query on one
    _, batch = search(index, queries, 10)
    alone = np.concatenate([search(index, q[None], 10)[1] for q in queries])
    np.testing.assert_array_equal(batch, alone)


def test_the_manifest_describes_the_index(hnsw_folder: Path) -> None:
    manifest = json.loads((hnsw_folder / MANIFEST_FILE).read_text())
    assert manifest["format"] == "mmcontrast-faiss-index" and manifest["format_version"] == 1
    assert manifest["kind"] == "hnsw" and manifest["count"] == COUNT and manifest["dim"] == DIM
    assert manifest["metadata"] == {"model": "tiny-clip", "count": COUNT}
    assert set(manifest["parameters"]) == {"M", "ef_construction", "ef_search"}
    assert manifest["sha256"] == hashlib.sha256((hnsw_folder / INDEX_FILE).read_bytes()).hexdigest()
    assert manifest["memory_mb"] == pytest.approx(
        (hnsw_folder / INDEX_FILE).stat().st_size / MIB, abs=0.01
    )
    assert 0 < manifest["latency_ms"]["p50"] <= manifest["latency_ms"]["p99"]
    assert manifest["target_recall"] == 0.95 and manifest["memory_budget_mb"] is None
    assert manifest["faiss_version"] == faiss.__version__
    assert sorted(p.name for p in hnsw_folder.iterdir()) == [INDEX_FILE, MANIFEST_FILE]


def test_rebuilding_replaces_the_index(tmp_path: Path) -> None:
    build_index(clustered(500), tmp_path)
    build_index(clustered(800, seed=5), tmp_path, metadata={"model": "other"})
    index, info = load_index(tmp_path)
    assert index.ntotal == info.count == 800 and info.metadata == {"model": "other"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [INDEX_FILE, MANIFEST_FILE]


# ------------------------------------------------------------------ errors


def copy_index(source: Path, target: Path) -> Path:
    target.mkdir()
    for name in (INDEX_FILE, MANIFEST_FILE):
        (target / name).write_bytes((source / name).read_bytes())
    return target


def test_a_corrupted_index_file_is_refused(hnsw_folder: Path, tmp_path: Path) -> None:
    folder = copy_index(hnsw_folder, tmp_path / "copy")
    data = bytearray((folder / INDEX_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / INDEX_FILE).write_bytes(bytes(data))
    with pytest.raises(
        ValueError, match=r"index.faiss is corrupted or truncated.*mmcontrast index"
    ):
        load_index(folder)


def test_a_truncated_index_file_is_refused(hnsw_folder: Path, tmp_path: Path) -> None:
    folder = copy_index(hnsw_folder, tmp_path / "copy")
    data = (folder / INDEX_FILE).read_bytes()
    (folder / INDEX_FILE).write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=r"corrupted or truncated.*mmcontrast index"):
        load_index(folder)


@pytest.mark.parametrize("missing", [INDEX_FILE, MANIFEST_FILE])
def test_a_missing_file_is_named(hnsw_folder: Path, tmp_path: Path, missing: str) -> None:
    folder = copy_index(hnsw_folder, tmp_path / "copy")
    (folder / missing).unlink()
    with pytest.raises(FileNotFoundError, match=rf"{missing} does not exist: build it with"):
        load_index(folder)


def test_an_unreadable_manifest_is_refused(hnsw_folder: Path, tmp_path: Path) -> None:
    folder = copy_index(hnsw_folder, tmp_path / "copy")
    (folder / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="index.json is not valid JSON"):
        load_index(folder)
    (folder / MANIFEST_FILE).write_text(json.dumps({"format": "mmcontrast-faiss-index"}))
    with pytest.raises(ValueError, match="index.json lacks kind"):
        load_index(folder)


def test_a_query_of_another_dimension_is_refused(hnsw_folder: Path) -> None:
    index, _ = load_index(hnsw_folder)
    with pytest.raises(ValueError, match=f"queries have 64 dimensions.*built from {DIM}-dim"):
        search(index, clustered(2, dim=64), 5)
    with pytest.raises(ValueError, match=r"\(q, d\) array"):
        search(index, clustered(1)[0], 5)
    with pytest.raises(ValueError, match="k must be at least 1"):
        search(index, clustered(1), 0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda x: x * 2, "not L2-normalised"),
        (lambda x: x[0], r"non-empty \(N, d\) array"),
        (lambda x: np.where(x == x.max(), np.nan, x), "not L2-normalised"),
    ],
)
def test_embeddings_that_are_not_normalised_rows_are_refused(
    embeddings: np.ndarray, tmp_path: Path, change, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build_index(change(embeddings), tmp_path)
    assert not any(tmp_path.iterdir())


def test_out_of_range_parameters_are_refused(embeddings: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="target_recall"):
        build_index(embeddings, tmp_path, target_recall=1.5)
    with pytest.raises(ValueError, match="memory_budget_mb"):
        build_index(embeddings, tmp_path, memory_budget_mb=0)
    with pytest.raises(ValueError, match="at least 256 vectors"):
        build_index(embeddings[:300], tmp_path, kind="ivf-pq")  # 75 held out to tune
    with pytest.raises(ValueError, match="at least 100 vectors.*exactly"):
        build_index(embeddings[:50], tmp_path, kind="hnsw")
    with pytest.raises(ValueError, match="JSON-serialisable"):
        build_index(embeddings, tmp_path, metadata={"model": object()})


def test_index_files_are_readable_as_the_umask_allows(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        build_index(clustered(200), tmp_path / "index")
    finally:
        os.umask(previous)
    modes = {path.name: path.stat().st_mode & 0o777 for path in (tmp_path / "index").iterdir()}
    assert modes == {INDEX_FILE: 0o644, MANIFEST_FILE: 0o644}


def test_a_collection_s_index_is_named_in_the_advice(tmp_path: Path) -> None:
    (tmp_path / "embeddings.json").write_text("{}")  # a collection folder
    with pytest.raises(FileNotFoundError, match=rf"build it with `mmcontrast index {tmp_path}`"):
        load_index(tmp_path / "index")
