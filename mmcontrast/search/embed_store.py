"""An embeddings folder in clip-retrieval's layout, written shard by shard, and read back.

::

    OUTPUT/
        img_emb/img_emb_0000.npy            # [n, d] float32, L2-normalised image embeddings
        text_emb/text_emb_0000.npy          # [n, d] the first caption of each image (if any)
        metadata/metadata_0000.parquet      # image_path, caption (if any), row
        embeddings.json                     # the manifest: settings, shards done, skipped rows

Row ``k`` of a shard's three files describes the same image. Shard ``i`` covers rows
``[i * shard_size, (i + 1) * shard_size)`` of the collection, less its unreadable images.

The manifest is the record of what is finished: a shard counts as done when its entry is in
``embeddings.json`` and its files exist. Every file is written under a temporary name
(``*.tmp``, which no reader globbing ``*.npy`` or ``*.parquet`` picks up) and renamed into
place; the manifest is rewritten the same way after each shard. A killed run leaves at most
the renamed files of the shard it was finishing, with no manifest entry: the next run
deletes them and temporary files before it starts, and :func:`read_embeddings` reads only
the shards the manifest lists.

Embeddings are stored as float32 (clip-retrieval stores float16): exact for the index
builder and for comparing a resumed run with a clean one, at twice the disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["MANIFEST", "EmbeddingStore", "Embeddings", "read_embeddings"]

MANIFEST = "embeddings.json"
SETTINGS = ("model", "data", "shard_size")  # what a rerun into the same folder must repeat
SETTING_NAMES = {"model": "model", "data": "data", "shard_size": "shard size"}


class Embeddings(NamedTuple):
    """What :func:`read_embeddings` returns (unpacks as a 4-tuple)."""

    images: np.ndarray  # [N, d] float32, L2-normalised
    texts: np.ndarray | None  # [N, d], or None without captions (or a text tower)
    metadata: pa.Table  # N rows: image_path, caption (if any), row
    manifest: dict[str, Any]


class EmbeddingStore:
    """The files of one output folder: shard paths, atomic writes and the manifest."""

    def __init__(self, output: str | Path) -> None:
        self.root = Path(output)
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"output {self.root} is a file: pass a folder (--output)")

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def image_path(self, index: int) -> Path:
        return self.root / "img_emb" / f"img_emb_{index:04d}.npy"

    def text_path(self, index: int) -> Path:
        return self.root / "text_emb" / f"text_emb_{index:04d}.npy"

    def metadata_path(self, index: int) -> Path:
        return self.root / "metadata" / f"metadata_{index:04d}.parquet"

    def shard_paths(self, index: int, texts: bool) -> list[Path]:
        paths = [self.image_path(index), self.metadata_path(index)]
        return [*paths, self.text_path(index)] if texts else paths

    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest, or None when the folder has none.

        Raises:
            ValueError: ``embeddings.json`` is not a manifest this module wrote.
        """
        if not self.manifest_path.is_file():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{self.manifest_path} is not valid JSON ({err})") from None
        if not isinstance(manifest, dict) or any(key not in manifest for key in SETTINGS):
            raise ValueError(
                f"{self.manifest_path} is not an embeddings manifest: pass another output "
                "folder (--output)"
            )
        return manifest

    def check_settings(self, manifest: dict[str, Any], settings: dict[str, Any]) -> None:
        """Refuse to continue a folder written with another model, data or shard size.

        Raises:
            ValueError: Naming each setting that differs, with both values.
        """
        differ = [key for key in SETTINGS if manifest.get(key) != settings[key]]
        if differ:
            details = "; ".join(
                f"{SETTING_NAMES[key]}: {json.dumps(manifest.get(key))} there, "
                f"{json.dumps(settings[key])} now"
                for key in differ
            )
            raise ValueError(
                f"{self.root} holds embeddings of a different "
                f"{' and '.join(SETTING_NAMES[key] for key in differ)} ({details}); pass another "
                "output folder (--output), or delete this one to start over"
            )

    def done_shards(self, manifest: dict[str, Any]) -> dict[int, dict[str, Any]]:
        """Manifest entries whose files are all there, by shard index."""
        texts = bool(manifest.get("text_emb"))
        return {
            int(entry["index"]): entry
            for entry in manifest.get("shards", [])
            if all(path.is_file() for path in self.shard_paths(int(entry["index"]), texts))
        }

    def clean(self, keep: set[int]) -> None:
        """Delete temporary files and the files of shards not in ``keep`` (an interrupted run's)."""
        for folder, prefix, suffix in (
            ("img_emb", "img_emb_", ".npy"),
            ("text_emb", "text_emb_", ".npy"),
            ("metadata", "metadata_", ".parquet"),
        ):
            for path in (self.root / folder).glob(f"{prefix}*"):
                number = path.name[len(prefix) :].removesuffix(suffix)
                if path.name.endswith(".tmp"):
                    path.unlink()
                elif path.name.endswith(suffix) and not (number.isdigit() and int(number) in keep):
                    path.unlink()

    def write_shard(
        self, index: int, images: np.ndarray, texts: np.ndarray | None, metadata: pa.Table
    ) -> None:
        """Write one shard's files, each under a temporary name and then renamed."""
        writes: list[tuple[Path, Callable[[IO[bytes]], None]]] = [
            (self.metadata_path(index), lambda f: pq.write_table(metadata, f)),
        ]
        if texts is not None:
            writes.append((self.text_path(index), lambda f: np.save(f, texts)))
        writes.append((self.image_path(index), lambda f: np.save(f, images)))
        staged = [(_write_temporary(path, write), path) for path, write in writes]
        for temporary, path in staged:
            os.replace(temporary, path)

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Rewrite ``embeddings.json`` atomically."""
        text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
        temporary = _write_temporary(self.manifest_path, lambda f: f.write(text.encode("utf-8")))
        os.replace(temporary, self.manifest_path)


def _write_temporary(path: Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """``write`` into ``path`` + ``.tmp``, flushed to disk; returns that temporary path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    return temporary


def read_embeddings(output: str | Path, allow_partial: bool = False) -> Embeddings:
    """The shards of an embeddings folder, concatenated in order.

    A folder of one shard is returned as read-only memory maps; several shards are read through
    memory maps into one array each.

    Args:
        output: A folder written by :func:`~mmcontrast.search.embed.embed_collection`.
        allow_partial: Read the shards done so far of an unfinished run instead of refusing.

    Returns:
        ``(images, texts, metadata, manifest)``: row ``k`` of each describes one image.

    Raises:
        ValueError: No manifest, an unfinished run (unless ``allow_partial``), or a shard
            whose files disagree with the manifest.
    """
    store = EmbeddingStore(output)
    manifest = store.read_manifest()
    if manifest is None:
        raise ValueError(
            f"{store.root} has no {MANIFEST}: embed a collection into it first "
            "(mmcontrast.search.embed_collection)"
        )
    done = store.done_shards(manifest)
    total = int(manifest.get("num_shards", len(done)))
    if len(done) < total and not allow_partial:
        raise ValueError(
            f"{store.root} is unfinished ({len(done)} of {total} shards embedded): run the "
            "same embedding again to finish it, or pass allow_partial=True"
        )
    if not done:
        raise ValueError(f"{store.root} holds no finished shard yet")
    order = sorted(done)
    texts = bool(manifest.get("text_emb"))
    images = _concatenate([store.image_path(i) for i in order], done, order)
    text_array = _concatenate([store.text_path(i) for i in order], done, order) if texts else None
    metadata = pa.concat_tables([pq.read_table(store.metadata_path(i)) for i in order])
    return Embeddings(images, text_array, metadata, manifest)


def _concatenate(paths: list[Path], done: dict[int, dict[str, Any]], order: list[int]) -> Any:
    arrays = [np.load(path, mmap_mode="r") for path in paths]
    for array, index, path in zip(arrays, order, paths, strict=True):
        if array.shape[0] != done[index]["count"]:
            raise ValueError(
                f"{path} holds {array.shape[0]} rows but the manifest says "
                f"{done[index]['count']}: embed the collection into a new output folder"
            )
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
