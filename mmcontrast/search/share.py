"""Put an indexed collection inside the model folder that embedded it, to share the two as one.

``mmcontrast share-index COLLECTION MODEL`` copies what a search needs (the manifest, the
embeddings, the metadata and the index) into ``MODEL/search/NAME/`` and adds a "Search
index" section to the model card; ``mmcontrast push MODEL --repo-id me/x`` then uploads the
model and its index together, and ``Searcher.from_pretrained("me/x")`` loads both back
(:mod:`mmcontrast.search.locate` has the layout).

The collection must be complete, indexed by an index that matches its embeddings, and
embedded with ``MODEL`` itself: an index of another model's embeddings would answer the
shared model's queries with nonsense. The copy names its model as the folder that holds it
(``"shared": {"model": "../.."}``) instead of a path on this machine, so it finds its model
wherever the folder goes; absolute local paths of the model and the data are left out.

Nothing is written half: the copy is assembled in a hidden folder beside the target (which
``mmcontrast push`` skips) and renamed into place; an existing ``search/NAME`` is replaced
only with ``overwrite``.

Example:
    >>> shared = add_collection("exports/emoji-clip", "collections/emoji")  # doctest: +SKIP
    >>> shared.folder  # doctest: +SKIP
    PosixPath('exports/emoji-clip/search/emoji')
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmcontrast.eval.adapters.base import split_family
from mmcontrast.search.embed_store import MANIFEST, EmbeddingStore, read_metadata
from mmcontrast.search.index_files import INDEX_FILE, MANIFEST_FILE, IndexInfo, load_index
from mmcontrast.search.locate import (
    MODEL_FROM_COLLECTION,
    SEARCH_DIR,
    SHARED,
    recorded_model,
    same_model,
)
from mmcontrast.search.searcher import INDEX_DIR, check_index
from mmcontrast.search.share_card import update_card

__all__ = ["SharedCollection", "add_collection"]

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


@dataclass(frozen=True)
class SharedCollection:
    """What :func:`add_collection` wrote."""

    name: str
    folder: Path  # MODEL/search/NAME
    count: int  # images
    index: IndexInfo
    bytes: int  # size of the copied files
    card: Path  # the model card, with its "Search index" section

    def summary(self) -> str:
        megabytes = self.bytes / 2**20
        return (
            f"shared {self.count} images ({self.index.kind} index, recall@10 "
            f"{self.index.recall_at_10:.3f}, {megabytes:.1f} MiB) as {self.folder}; the "
            f"model card {self.card} describes it. Push the model folder to share both."
        )


def add_collection(
    model_folder: str | Path,
    collection_folder: str | Path,
    name: str | None = None,
    *,
    overwrite: bool = False,
    repo_id: str | None = None,
) -> SharedCollection:
    """Copy an indexed collection into ``model_folder/search/NAME`` and describe it in the card.

    Args:
        model_folder: The model folder (an export) that embedded the collection.
        collection_folder: A collection folder (``mmcontrast embed`` then ``mmcontrast index``).
        name: Its name in ``search/`` (default: the collection folder's name).
        overwrite: Replace a collection of that name already there.
        repo_id: The Hub id the card's usage loads (default: the id the card's usage already
            loads, as ``mmcontrast export --repo-id`` wrote it; else the folder).

    Returns:
        What was written.

    Raises:
        ValueError: The model folder is missing; the collection is unfinished, not indexed,
            indexed from other embeddings, or embedded with another model; the name is not
            a plain folder name; or ``search/NAME`` exists and ``overwrite`` is not set.
    """
    model = Path(model_folder).expanduser()
    source = Path(collection_folder).expanduser()
    if not model.is_dir():
        raise ValueError(
            f"{model} is not a folder: export the model first (mmcontrast export RUN --output "
            f"{model}) and embed the collection with it"
        )
    name = name if name is not None else source.resolve().name
    if not NAME.fullmatch(name):
        raise ValueError(
            f"collection name {name!r} is not a plain folder name: use letters, digits, '.', "
            "'_' or '-', starting with a letter or digit (--name)"
        )
    manifest, info, shards = _checked_collection(source, model)
    target = model / SEARCH_DIR / name
    if target.resolve() == source.resolve():
        raise ValueError(f"{source} is already shared in {model} as {SEARCH_DIR}/{name}")
    if target.exists() and not overwrite:
        raise ValueError(
            f"{target} exists: pass --overwrite (overwrite=True) to replace it, or another --name"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=target.parent))
    try:
        size = _copy(source, staging, manifest, shards, name)
        _set_modes(staging)
        _move_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    card = update_card(model, repo_id)
    return SharedCollection(name, target, int(info.count), info, size, card)


def _checked_collection(source: Path, model: Path) -> tuple[dict[str, Any], IndexInfo, list[Path]]:
    """The collection's manifest, index info and shard files, once it is found complete,
    indexed from its own embeddings and embedded with ``model``."""
    if EmbeddingStore(source).read_manifest() is None:
        raise ValueError(
            f"{source} is not a collection (it has no {MANIFEST}): embed one with the model "
            f"(mmcontrast embed {model} DATA --output {source}), then index it"
        )
    embedded = read_metadata(source)  # refuses an unfinished or damaged one
    manifest = embedded.manifest
    try:
        _, info = load_index(source / INDEX_DIR)
    except FileNotFoundError:
        raise ValueError(
            f"{source} is not indexed yet: run `mmcontrast index {source}` first"
        ) from None
    check_index(source, info, manifest, len(embedded.metadata))  # built from these embeddings
    recorded = recorded_model(source, manifest)
    if not same_model(str(model), recorded):
        raise ValueError(
            f"{source} was embedded with {recorded}, not {model}: a shared index must come "
            f"from the model it is shared with; embed the collection with it (mmcontrast "
            f"embed {model} DATA --output FOLDER, then mmcontrast index FOLDER)"
        )
    store = EmbeddingStore(source)
    texts = bool(manifest.get("text_emb"))
    listed = sorted(int(entry["index"]) for entry in manifest["shards"])  # checked just above
    shards = [path for i in listed for path in store.shard_paths(i, texts)]
    return manifest, info, shards


def _copy(
    source: Path, staging: Path, manifest: dict[str, Any], shards: list[Path], name: str
) -> int:
    """Write the shared copy into ``staging``; returns its size in bytes."""
    model = _portable_model(manifest["model"])
    for path in [*shards, source / INDEX_DIR / INDEX_FILE]:
        copy = staging / path.relative_to(source)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, copy)
    index_manifest = json.loads((source / INDEX_DIR / MANIFEST_FILE).read_text(encoding="utf-8"))
    if isinstance(index_manifest.get("metadata", {}).get("model"), dict):
        index_manifest["metadata"]["model"] = model
    shared = {
        **manifest,
        "model": model,
        "data": _portable_data(manifest.get("data")),
        SHARED: {"model": MODEL_FROM_COLLECTION, "name": name},
    }
    _write_json(staging / INDEX_DIR / MANIFEST_FILE, index_manifest)
    _write_json(staging / MANIFEST, shared)
    load_index(staging / INDEX_DIR)  # the copied index is the one its manifest describes
    read_metadata(staging)  # and the copied shards are the ones the manifest lists
    return sum(path.stat().st_size for path in staging.rglob("*") if path.is_file())


def _portable_model(model: dict[str, Any]) -> dict[str, Any]:
    """The model's description with its local path replaced by the folder holding the copy."""
    spec = str(model["spec"])
    family, path = split_family(spec)
    portable = {
        key: MODEL_FROM_COLLECTION if value in (spec, path) else value
        for key, value in model.items()
    }
    portable["spec"] = f"{family}:{MODEL_FROM_COLLECTION}" if family else MODEL_FROM_COLLECTION
    return portable


def _portable_data(data: Any) -> Any:
    """The data's description without the absolute path it had on this machine."""
    if not isinstance(data, dict) or not isinstance(data.get("path"), str):
        return data
    path = Path(data["path"])
    return {**data, "path": path.name} if path.is_absolute() else data


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _set_modes(staging: Path) -> None:
    """Give ``staging`` and all in it the modes a plain ``mkdir`` and file would get (the
    umask's): ``mkdtemp`` made it 0700, which would hide the copy from a shared disk's other
    users. The umask is read off a probe folder, not set (``os.umask`` is process-wide)."""
    probe = staging / f".mode-{uuid.uuid4().hex[:8]}"
    os.mkdir(probe, 0o777)
    folders = probe.stat().st_mode & 0o777  # 0o777 & ~umask
    probe.rmdir()
    files = folders & 0o666
    for path in staging.rglob("*"):
        os.chmod(path, folders if path.is_dir() else files)
    os.chmod(staging, folders)


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``, replacing a ``target`` already there."""
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    if target.exists():
        os.rename(target, old)
    try:
        os.rename(staging, target)  # fails, rather than merge, if target reappeared meanwhile
    except OSError:
        if old.exists():
            os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
