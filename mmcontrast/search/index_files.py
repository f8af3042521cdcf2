"""The on-disk form of an index: ``index.faiss`` in faiss's own format, ``index.json`` beside it.

::

    FOLDER/index.faiss   faiss.write_index: vectors or codes, graph or lists, and the tuned
                         efSearch / nprobe (faiss stores them); never a pickle
    FOLDER/index.json    IndexInfo: kind, parameters, recall@10, latency, the SHA-256 of
                         index.faiss, and the caller's metadata (model spec...)

Both files are written under temporary names and renamed into place, the index first. A
reader sees the old pair, the new pair, or (between the two renames) a manifest whose
SHA-256 refuses the new index; :func:`load_index` checks the SHA-256 before faiss reads
the file, so a truncated or corrupted index is named instead of crashing faiss.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import faiss

__all__ = ["INDEX_FILE", "MANIFEST_FILE", "IndexInfo", "load_index", "save_index"]

INDEX_FILE = "index.faiss"
MANIFEST_FILE = "index.json"
FORMAT = "mmcontrast-faiss-index"
FORMAT_VERSION = 1
BUILD = "build it with `mmcontrast index {collection}`"
REBUILD = "rebuild it with `mmcontrast index {collection}`"
COLLECTION_MANIFEST = "embeddings.json"  # beside index/ in a collection folder


@dataclass
class IndexInfo:
    """What an index is and how well it searches, as measured when it was built.

    Attributes:
        kind: ``flat`` (exact), ``hnsw``, ``ivf-sq8`` or ``ivf-pq``.
        parameters: Build and tuned search parameters (``M``, ``ef_construction``,
            ``ef_search``; ``nlist``, ``nprobe``, ``pq_m``, ``pq_bits``).
        count: Vectors indexed.
        dim: Their dimension.
        recall_at_10: Fraction of the exact 10 nearest neighbours found, for a sample of the
            collection's vectors held out of the index while it was tuned (1.0 for exact).
        latency_ms: ``p50`` and ``p99`` milliseconds of one query at a time on one thread.
        build_seconds: Training and adding the vectors.
        tuning_seconds: Exact neighbours of the sample, tuning, and timing queries.
        target_recall: The recall@10 the search parameter was tuned to reach.
        memory_budget_mb: The budget the kind was chosen under (``None``: no limit).
        tuning_queries: Collection vectors held out and searched to tune and measure.
        threads: faiss threads while building.
        faiss_version: The faiss that built the index.
        metadata: The caller's description (model spec, collection...).
        memory_mb: Size of ``index.faiss`` in MiB, about what the index takes in memory
            (set by :func:`save_index`).
        sha256: SHA-256 of ``index.faiss`` (set by :func:`save_index`).
    """

    kind: str
    parameters: dict[str, int]
    count: int
    dim: int
    recall_at_10: float
    latency_ms: dict[str, float]
    build_seconds: float
    tuning_seconds: float
    target_recall: float
    memory_budget_mb: float | None
    tuning_queries: int
    threads: int
    faiss_version: str
    metadata: dict[str, Any] = field(default_factory=dict)
    memory_mb: float = 0.0
    sha256: str = ""

    def to_manifest(self) -> dict[str, Any]:
        """The JSON manifest: a format tag and version, then every field."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], path: Path | str = MANIFEST_FILE) -> IndexInfo:
        """Reads :meth:`to_manifest`'s output.

        Raises:
            ValueError: Not an index manifest, a newer format, or fields missing.
        """
        rebuild = _hint(REBUILD, Path(path).parent)
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{path} is not an mmcontrast index manifest; {rebuild}")
        if manifest.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{path} was written by a newer mmcontrast (format "
                f"{manifest['format_version']}); upgrade mmcontrast or {rebuild}"
            )
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in manifest]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)}; {rebuild}")
        return cls(**{name: manifest[name] for name in names})


def save_index(index: Any, info: IndexInfo, output: str | Path) -> IndexInfo:
    """Writes ``index`` and its manifest into ``output`` (created), each file atomically.

    Returns:
        ``info``, its ``sha256`` and ``memory_mb`` set (in place) from the written file.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    index_tmp = _temporary(output, INDEX_FILE)
    manifest_tmp = _temporary(output, MANIFEST_FILE)
    try:
        faiss.write_index(index, str(index_tmp))
        _fsync(index_tmp)
        info.sha256 = _sha256(index_tmp)
        info.memory_mb = round(index_tmp.stat().st_size / 2**20, 2)
        manifest_tmp.write_text(json.dumps(info.to_manifest(), indent=2) + "\n")
        _fsync(manifest_tmp)
        os.replace(index_tmp, output / INDEX_FILE)
        os.replace(manifest_tmp, output / MANIFEST_FILE)
    finally:
        index_tmp.unlink(missing_ok=True)
        manifest_tmp.unlink(missing_ok=True)
    return info


def load_index(folder: str | Path) -> tuple[Any, IndexInfo]:
    """Reads an index written by :func:`save_index`, after checking its SHA-256.

    Args:
        folder: The folder holding ``index.faiss`` and ``index.json``.

    Returns:
        ``(index, info)``: the faiss index, with its tuned search parameter, and its
        :class:`IndexInfo`.

    Raises:
        FileNotFoundError: The folder, ``index.faiss`` or ``index.json`` is missing.
        ValueError: The manifest is unreadable, or ``index.faiss`` is corrupted, truncated
            or not the file the manifest describes.
    """
    folder = Path(folder)
    index_path, manifest_path = folder / INDEX_FILE, folder / MANIFEST_FILE
    build, rebuild = _hint(BUILD, folder), _hint(REBUILD, folder)
    for path in (manifest_path, index_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: {build}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{manifest_path} is not valid JSON ({error}); {rebuild}") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{manifest_path} is not an mmcontrast index manifest; {rebuild}")
    info = IndexInfo.from_manifest(manifest, manifest_path)
    if _sha256(index_path) != info.sha256:
        raise ValueError(
            f"{index_path} is corrupted or truncated: its SHA-256 is not the one recorded in "
            f"{manifest_path}; {rebuild}"
        )
    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as error:
        raise ValueError(f"faiss cannot read {index_path} ({error}); {rebuild}") from None
    if index.d != info.dim or index.ntotal != info.count:
        raise ValueError(
            f"{index_path} holds {index.ntotal} vectors of {index.d} dimensions but "
            f"{manifest_path} records {info.count} of {info.dim}; {rebuild}"
        )
    return index, info


def _hint(template: str, folder: Path) -> str:
    """``template`` naming the collection ``folder`` is the index of, when it is one."""
    is_collection = (folder.parent / COLLECTION_MANIFEST).is_file()
    return template.format(collection=folder.parent if is_collection else "COLLECTION")


def _temporary(folder: Path, name: str) -> Path:
    """A new empty file of a unique hidden name in ``folder``, with the mode ``open`` gives
    (``0o666`` less the umask, as the collection's other files; ``mkstemp`` would make it
    private), without touching the process-wide umask."""
    path = folder / f".{name}.{uuid.uuid4().hex}.tmp"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return path


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(2**20):
            digest.update(chunk)
    return digest.hexdigest()
