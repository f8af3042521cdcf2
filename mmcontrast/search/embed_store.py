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
``embeddings.json`` and its files exist and hold the rows it lists (read from the arrays'
headers and the parquet footer); a rerun embeds a damaged shard again, and
:func:`read_embeddings` names it. Every file is written under a temporary name
(``*.tmp``, which no reader globbing ``*.npy`` or ``*.parquet`` picks up) and renamed into
place; the manifest is rewritten the same way after each shard. A killed run leaves at most
the renamed files of the shard it was finishing, with no manifest entry: the next run
deletes them and temporary files before it starts, and :func:`read_embeddings` reads only
the shards the manifest lists.

Embeddings are stored as float32 (clip-retrieval stores float16): exact for the index
builder and for comparing a resumed run with a clean one, at twice the disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "INDEX_DIR",
    "MANIFEST",
    "EmbeddedRows",
    "EmbeddingStore",
    "Embeddings",
    "embeddings_fingerprint",
    "read_embeddings",
    "read_metadata",
]

MANIFEST = "embeddings.json"
INDEX_DIR = "index"  # where ``mmcontrast index`` writes a collection's index
EMBED_AGAIN = "embed again into a new folder"
RECOMPUTE = "rerun the same `mmcontrast embed` command to recompute it"
SETTINGS = ("model", "data", "shard_size")  # what a rerun into the same folder must repeat
SETTING_NAMES = {"model": "model", "data": "data", "shard_size": "shard size"}
DATA_DIGESTS = ("files", "metadata")  # of the data's identity, not recorded by earlier versions

logger = logging.getLogger(__name__)


class Embeddings(NamedTuple):
    """What :func:`read_embeddings` returns (unpacks as a 4-tuple)."""

    images: np.ndarray  # [N, d] float32, L2-normalised
    texts: np.ndarray | None  # [N, d], or None without captions (or a text tower)
    metadata: pa.Table  # N rows: image_path, caption (if any), row
    manifest: dict[str, Any]


class EmbeddedRows(NamedTuple):
    """What :func:`read_metadata` returns: the rows' metadata without their embeddings."""

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
        problem = _manifest_problem(manifest)
        if problem:
            raise ValueError(
                f"{self.manifest_path} is not a valid embeddings manifest ({problem}): "
                f"{EMBED_AGAIN}"
            )
        return manifest

    def check_settings(self, manifest: dict[str, Any], settings: dict[str, Any]) -> None:
        """Refuse to continue a folder written with another model, data or shard size.

        Raises:
            ValueError: Naming each setting that differs, with both values.
        """
        recorded = manifest
        data = manifest.get("data")
        added = [
            key
            for key in DATA_DIGESTS
            if isinstance(data, dict) and key in settings["data"] and key not in data
        ]
        if added and isinstance(data, dict):  # written before the digests were recorded
            recorded = {**manifest, "data": {**data, **{k: settings["data"][k] for k in added}}}
        differ = [key for key in SETTINGS if recorded.get(key) != settings[key]]
        if added and not differ:
            logger.warning(
                "%s does not record its data's %s (an earlier version wrote it): resuming "
                "without checking that the images are the ones it embedded",
                self.manifest_path, " or ".join(added),
            )  # fmt: skip
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
        """Manifest entries whose files are all there and hold the rows listed, by shard index."""
        return {
            int(entry["index"]): entry
            for entry in manifest.get("shards", [])
            if self.shard_problem(manifest, entry) is None
        }

    def shard_problem(self, manifest: dict[str, Any], entry: dict[str, Any]) -> str | None:
        """What is wrong with a listed shard's files (missing, unreadable, or holding another
        number of rows or width than the manifest says), or ``None``.

        Reads only the arrays' headers and the parquet footer.
        """
        index, count = int(entry["index"]), int(entry["count"])
        dim = manifest.get("dim")
        paths = self.shard_paths(index, bool(manifest.get("text_emb")))
        for path in paths:
            if not path.is_file():
                return f"{path} is missing"
            try:
                if path.suffix == ".npy":
                    shape = np.load(path, mmap_mode="r").shape
                else:
                    shape = (pq.read_metadata(path).num_rows,)
            except (OSError, ValueError, pa.ArrowException) as err:
                return f"{path} cannot be read ({err})"
            if shape[0] != count:
                return f"{path} holds {shape[0]} rows, not the {count} the manifest lists"
            if len(shape) > 1 and (len(shape) != 2 or (dim is not None and shape[1] != dim)):
                return f"{path} holds arrays of shape {shape}, not ({count}, {dim})"
        return None

    def remove(self, remove_root: bool) -> None:
        """Delete the manifest, every shard file and the empty shard folders; the folder
        itself too when ``remove_root`` and nothing else is left in it."""
        self.manifest_path.unlink(missing_ok=True)
        self.clean(keep=set())
        for folder in ("img_emb", "text_emb", "metadata"):
            path = self.root / folder
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        if remove_root and self.root.is_dir() and not any(self.root.iterdir()):
            self.root.rmdir()

    def remove_index(self) -> None:
        """Delete an index built from earlier embeddings (``index/``'s two files)."""
        folder = self.root / INDEX_DIR
        for name in ("index.faiss", "index.json"):
            (folder / name).unlink(missing_ok=True)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()

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


def read_embeddings(
    output: str | Path, allow_partial: bool = False, *, texts: bool = True
) -> Embeddings:
    """The shards of an embeddings folder, concatenated in order.

    A folder of one shard is returned as read-only memory maps; several shards are read through
    memory maps into one array each.

    Args:
        output: A folder written by :func:`~mmcontrast.search.embed.embed_collection`.
        allow_partial: Read the shards done so far of an unfinished run instead of refusing.
        texts: Read the text embeddings too; False leaves them unread (``texts`` is ``None``),
            for a reader that needs only the images (an index).

    Returns:
        ``(images, texts, metadata, manifest)``: row ``k`` of each describes one image.

    Raises:
        ValueError: No manifest or an invalid one, an unfinished run (unless
            ``allow_partial``), or a listed shard whose files are missing or damaged.
    """
    store, manifest, order = _finished(output, allow_partial)
    images = _concatenate([store.image_path(i) for i in order])
    text_array = None
    if texts and manifest.get("text_emb"):
        text_array = _concatenate([store.text_path(i) for i in order])
    return Embeddings(images, text_array, _read_metadata(store, order), manifest)


def read_metadata(output: str | Path, allow_partial: bool = False) -> EmbeddedRows:
    """The rows' metadata and the manifest of an embeddings folder, without the embeddings.

    Args:
        output: As :func:`read_embeddings`.
        allow_partial: As :func:`read_embeddings`.

    Raises:
        ValueError: As :func:`read_embeddings`.
    """
    store, manifest, order = _finished(output, allow_partial)
    return EmbeddedRows(_read_metadata(store, order), manifest)


def embeddings_fingerprint(manifest: dict[str, Any]) -> dict[str, Any]:
    """What identifies a folder's embeddings, cheaply: their count, width, and a digest of the
    shards the manifest lists (index, rows and count of each).

    An index records it (``mmcontrast index``) and the searcher compares it, so an index
    built from other embeddings is refused. It leaves out the model spec and the data's path,
    which ``mmcontrast share-index`` rewrites in a shared copy.
    """
    shards = sorted(
        [int(e["index"]), [int(r) for r in e["rows"]], int(e["count"])]
        for e in manifest.get("shards", [])
    )
    digest = hashlib.sha256(json.dumps(shards, separators=(",", ":")).encode()).hexdigest()
    return {
        "count": sum(shard[2] for shard in shards),
        "dim": manifest.get("dim"),
        "shards": digest,
    }


def _finished(
    output: str | Path, allow_partial: bool
) -> tuple[EmbeddingStore, dict[str, Any], list[int]]:
    """The store, its manifest and the indices of its finished shards, in order."""
    store = EmbeddingStore(output)
    manifest = store.read_manifest()
    if manifest is None:
        raise ValueError(
            f"{store.root} has no {MANIFEST}: embed a collection into it first "
            f"(mmcontrast embed MODEL DATA --output {store.root})"
        )
    for entry in manifest.get("shards", []):
        problem = store.shard_problem(manifest, entry)
        if problem is not None:
            raise ValueError(
                f"shard {entry['index']} of {store.root} is damaged: {problem}; {RECOMPUTE}"
            )
    done = sorted(int(entry["index"]) for entry in manifest.get("shards", []))
    total = int(manifest.get("num_shards", len(done)))
    if len(done) < total and not allow_partial:
        raise ValueError(
            f"{store.root} is unfinished ({len(done)} of {total} shards embedded): rerun the "
            "same `mmcontrast embed` command to finish it"
        )
    if not done:
        raise ValueError(f"{store.root} holds no finished shard yet")
    return store, manifest, done


def _read_metadata(store: EmbeddingStore, order: list[int]) -> pa.Table:
    tables = []
    for index in order:
        path = store.metadata_path(index)
        try:
            tables.append(pq.read_table(path))
        except (OSError, pa.ArrowException) as err:
            raise ValueError(
                f"shard {index} of {store.root} is damaged: {path} cannot be read ({err}); "
                f"{RECOMPUTE}"
            ) from None
    return pa.concat_tables(tables)


def _concatenate(paths: list[Path]) -> Any:
    """The arrays at ``paths`` (checked by :meth:`EmbeddingStore.shard_problem`), as one."""
    arrays = [np.load(path, mmap_mode="r") for path in paths]
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _manifest_problem(manifest: dict[str, Any]) -> str | None:
    """What makes a manifest unusable (a hand edit, a damaged file), or ``None``."""

    def integer(value: Any, least: int = 0) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= least

    model = manifest["model"]
    if not isinstance(model, dict) or not isinstance(model.get("spec"), str):
        return '"model" is not an object with a "spec" string'
    if not integer(manifest["shard_size"], 1):
        return '"shard_size" is not a positive integer'
    for key in ("num_shards", "count", "rows"):
        if key in manifest and not integer(manifest[key]):
            return f'"{key}" is not a non-negative integer'
    if manifest.get("dim") is not None and not integer(manifest["dim"], 1):
        return '"dim" is neither a positive integer nor null'
    shards = manifest.get("shards", [])
    if not isinstance(shards, list):
        return '"shards" is not a list'
    seen: set[int] = set()
    for position, entry in enumerate(shards):
        what = f'"shards"[{position}]'
        if not isinstance(entry, dict):
            return f"{what} is not an object"
        if not integer(entry.get("index")) or not integer(entry.get("count")):
            return f'{what} has no integer "index" and "count"'
        rows = entry.get("rows")
        if not (isinstance(rows, list) and len(rows) == 2 and all(integer(r) for r in rows)):
            return f'{what} has no "rows" [start, end] of integers'
        if entry["index"] in seen:
            return f"{what} repeats shard {entry['index']}"
        seen.add(entry["index"])
        if not isinstance(entry.get("skipped", {}), dict) or not isinstance(
            entry.get("skipped_rows", []), list
        ):
            return f'{what} has a "skipped" that is not an object or "skipped_rows" not a list'
    at_load = manifest.get("skipped_at_load", {"counts": {}, "rows": []})
    if not (
        isinstance(at_load, dict)
        and isinstance(at_load.get("counts"), dict)
        and isinstance(at_load.get("rows"), list)
    ):
        return '"skipped_at_load" is not an object of "counts" and "rows"'
    if not isinstance(manifest.get("text_emb", False), bool):
        return '"text_emb" is not true or false'
    return None
