"""Embed a collection of images, and their captions, with any model the evaluation loads.

The output is clip-retrieval's layout (``embed_store.py``): image embeddings, text
embeddings of each image's first caption, and a parquet of metadata per shard, plus an
``embeddings.json`` manifest. Embeddings are L2-normalised float32, so a dot product is a
cosine similarity. The collection is an imagefolder, tar shards, a ``datasets`` name or a
plain folder of images (``embed_sources.py``); the model is any spec
:func:`~mmcontrast.eval.adapters.base.load_eval_model` accepts, preprocessed as evaluation
preprocesses it.

The work is split in shards of ``shard_size`` rows, each written whole and recorded in the
manifest as it finishes. Running the same call again after an interruption skips the
finished shards; a call with another model, collection or shard size into the same folder
is refused. Unreadable images are left out of their shard, counted by reason and named in
one warning at the end.

Example:
    >>> summary = embed_collection("openai/clip-vit-base-patch32", "photos/", "photos-emb")  # doctest: +SKIP
    >>> images, texts, metadata, manifest = read_embeddings("photos-emb")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mmcontrast.data.skips import SkippedRows, Skips
from mmcontrast.eval.adapters.base import EvalModel, load_eval_model
from mmcontrast.logs import interactive
from mmcontrast.search.embed_batches import CollectionRows, Sample, ShardBatches, shard_range
from mmcontrast.search.embed_processes import Processes
from mmcontrast.search.embed_sources import Collection, open_collection
from mmcontrast.search.embed_store import Embeddings, EmbeddingStore, read_embeddings

__all__ = ["EmbedSummary", "Embeddings", "embed_collection", "read_embeddings"]

logger = logging.getLogger(__name__)
NAMED_SKIPS = 10  # bad rows named per shard in the manifest (all are counted)


@dataclass
class EmbedSummary:
    """What an embedding run left in its output folder.

    Attributes:
        count: Images embedded, in all shards (this run's and earlier runs').
        skipped: Rows left out, by reason (unreadable images, rows without a caption).
        dim: Embedding width.
        shards: Shards in the output.
        seconds: Wall time of this call.
        images_per_s: Images embedded by this call per second of it.
        output: The output folder.
        computed_shards: Shards this call embedded (the others were done before).
        main_process: False in every process but the first of a launcher's (``torchrun``,
            ``accelerate launch``): all return the same summary, one should report it.
    """

    count: int
    skipped: dict[str, int]
    dim: int
    shards: int
    seconds: float
    images_per_s: float
    output: Path
    computed_shards: int = 0
    main_process: bool = True


def embed_collection(
    model: str | EvalModel,
    data: str | Path,
    output: str | Path,
    *,
    split: str | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    shard_size: int = 10_000,
    device: torch.device | str | None = None,
    image_column: str | None = None,
    caption_column: str | None = None,
    progress: bool = True,
) -> EmbedSummary:
    """Embed every readable image of ``data`` (and its first caption) into ``output``.

    Args:
        model: A model spec for ``load_eval_model`` or a loaded :class:`EvalModel`.
        data: An imagefolder, tar shards, a plain folder of images or a ``datasets`` name.
        output: The folder to write (or to resume).
        split: The split to embed (default ``train``; see ``embed_sources.open_collection``).
        batch_size: Images per forward pass (and captions per text pass).
        num_workers: Data-loading worker processes decoding images.
        shard_size: Rows of the collection per output shard.
        device: Where a model given by spec runs (default: CUDA if available); a loaded
            model stays where it is.
        image_column: The image column of metadata or a dataset.
        caption_column: The caption column (default ``text`` when present); ``""``: none.
        progress: Show a progress bar on a terminal, or without one a line per finished
            shard on stderr (a job's log); False: neither. With several processes only the
            first shows it.

    Returns:
        The :class:`EmbedSummary` of the whole output folder.

    Raises:
        ValueError: Bad sizes, unknown or empty data, no readable image, or an output
            folder holding embeddings of another model, collection or shard size.
    """
    _check_sizes(batch_size, shard_size, num_workers)
    started = time.perf_counter()
    store = EmbeddingStore(output)
    collection = open_collection(data, split, image_column, caption_column)
    if len(collection) == 0:
        dropped = SkippedRows()
        dropped.add_at_load(collection.skipped)
        raise ValueError(
            f"no images in {collection.source}{f' ({dropped.message()})' if dropped else ''}: "
            "give a folder of images, an imagefolder or a dataset with rows"
        )
    processes = Processes.start()
    if not isinstance(model, EvalModel):
        model = load_eval_model(_local_spec(model), device or processes.device)
    created = not store.root.exists()
    started_new = store.read_manifest() is None
    manifest = _open_manifest(store, collection, model, shard_size)
    done = store.done_shards(manifest)
    processes.barrier()  # every process has read the manifest before the first one rewrites it
    manifest["shards"] = [done[i] for i in sorted(done)]
    if processes.main:
        if started_new:
            store.remove_index()  # an index left from embeddings no longer there
        store.clean(set(done))
        store.write_manifest(_totals(manifest))
    processes.barrier()
    todo = [i for i in range(manifest["num_shards"]) if i not in done]
    computed = _embed_shards(
        model, collection, store, manifest, todo, batch_size, num_workers, progress, processes
    )
    seconds = time.perf_counter() - started
    skipped = _skipped_rows(manifest)
    if skipped:
        logger.warning("%s: %s", collection.source, skipped.message("", shown=NAMED_SKIPS))
    if manifest["count"] == 0:
        if processes.main:  # a finished-looking folder of nothing: leave no trace of it
            store.remove(remove_root=created)
        raise ValueError(
            f"no readable images in {collection.source} ({skipped.message('')}): nothing was "
            f"written to {store.root}; give a collection with images that open"
        )
    return EmbedSummary(
        count=manifest["count"],
        skipped=dict(manifest["skipped"]),
        dim=int(manifest["dim"]),
        shards=manifest["num_shards"],
        seconds=seconds,
        images_per_s=computed / seconds if seconds > 0 else 0.0,
        output=store.root,
        computed_shards=len(todo),
        main_process=processes.main,
    )


def _check_sizes(batch_size: int, shard_size: int, num_workers: int) -> None:
    for name, value, least in (
        ("batch_size", batch_size, 1),
        ("shard_size", shard_size, 1),
        ("num_workers", num_workers, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer of at least {least}, got {value!r}")


def _local_spec(spec: str) -> str:
    """An existing local path as an absolute path, so a rerun from elsewhere matches."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def _open_manifest(
    store: EmbeddingStore, collection: Collection, model: EvalModel, shard_size: int
) -> dict[str, Any]:
    """The folder's manifest after checking it matches this run, or a new one."""
    settings = json.loads(
        json.dumps(
            {"model": model.describe(), "data": collection.identity, "shard_size": shard_size}
        )
    )
    manifest = store.read_manifest()
    if manifest is not None:
        store.check_settings(manifest, settings)
        return manifest
    rows = len(collection)
    return {
        "layout": "clip-retrieval",
        **settings,
        "rows": rows,
        "num_shards": -(-rows // shard_size),
        "dim": None,
        "dtype": "float32",
        "normalised": True,
        "captions": collection.captions,
        "text_emb": collection.captions and model.has_text,
        "complete": False,
        "count": 0,
        "skipped": {},
        "skipped_at_load": _state(collection.skipped),
        "shards": [],
    }


@dataclass
class _Shard:
    """One shard being embedded: its rows' embeddings, keys, captions and skipped rows."""

    index: int
    started: float = field(default_factory=time.perf_counter)
    features: list[Tensor] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    captions: list[str | None] = field(default_factory=list)
    skipped: Skips = field(default_factory=Skips)

    def add(self, model: EvalModel, samples: list[Sample]) -> None:
        """Embed a batch's readable images; count and name the others."""
        pixels: list[Tensor] = []
        for row, value, key, caption in samples:
            if isinstance(value, str):
                self.skipped.add(value, key, f"row {row}")
                continue
            pixels.append(value)
            self.rows.append(row)
            self.keys.append(key)
            self.captions.append(caption)
        if pixels:
            self.features.append(model.encode_images(torch.stack(pixels)).float().cpu())


@torch.no_grad()
def _embed_shards(
    model: EvalModel,
    collection: Collection,
    store: EmbeddingStore,
    manifest: dict[str, Any],
    todo: list[int],
    batch_size: int,
    num_workers: int,
    progress: bool,
    processes: Processes,
) -> int:
    """Embed and write the shards ``todo``; returns how many images were embedded.

    With several processes, process ``r`` embeds ``todo[r::world]`` and the shards finish in
    rounds, one per process: each round's manifest entries are gathered and the first
    process writes the manifest, so it only ever lists shards whose files are complete.
    """
    shard_size, rows = manifest["shard_size"], manifest["rows"]
    mine = todo[processes.rank :: processes.world]
    rounds = -(-len(todo) // processes.world)
    loader = DataLoader(
        CollectionRows(collection, model.image_transform()),
        batch_sampler=ShardBatches(mine, shard_size, rows, batch_size),
        num_workers=num_workers,
        collate_fn=list,
        generator=torch.Generator(),  # no draw from the global generator
    )
    done_rows = rows - sum(len(range(*shard_range(i, shard_size, rows))) for i in todo)
    bar = tqdm(
        total=rows,
        initial=done_rows,
        unit="img",
        desc="embedding",
        disable=not (progress and interactive() and processes.main),
    )
    shard: _Shard | None = None
    embedded = finished = 0

    def finish(entry: dict[str, Any] | None) -> None:
        if entry is not None:
            entry["process"] = processes.rank
        nonlocal embedded, finished
        for done in processes.gather(entry):
            manifest["dim"] = manifest["dim"] or done["dim"]
            if done["dim"] != manifest["dim"]:
                raise RuntimeError(
                    f"shard {done['index']} has width {done['dim']}, earlier shards "
                    f"{manifest['dim']}"
                )
            manifest["shards"].append(
                {k: v for k, v in done.items() if k not in ("dim", "seconds", "process")}
            )
            embedded += done["count"]
            if done["process"] != processes.rank:  # another process's rows
                bar.update(done["rows"][1] - done["rows"][0])
            if processes.main and progress and bar.disable:
                _print_shard(done, manifest, processes.world)
        manifest["shards"].sort(key=lambda e: e["index"])
        _totals(manifest)  # on every process: each returns the summary
        if processes.main:
            store.write_manifest(manifest)
        finished += entry is not None

    with bar:
        for samples in loader:
            index = samples[0][0] // shard_size
            if shard is not None and shard.index != index:
                finish(_write(shard, model, store, manifest, batch_size))
            if shard is None or shard.index != index:
                shard = _Shard(index)
            shard.add(model, samples)
            bar.update(len(samples))
        if shard is not None:
            finish(_write(shard, model, store, manifest, batch_size))
        for _ in range(rounds - finished):  # a process with fewer shards joins the last rounds
            finish(None)
    return embedded


def _write(
    shard: _Shard,
    model: EvalModel,
    store: EmbeddingStore,
    manifest: dict[str, Any],
    batch_size: int,
) -> dict[str, Any]:
    """Write a shard's files; returns its manifest entry (with its width, ``dim``)."""
    if shard.features:
        images = F.normalize(torch.cat(shard.features), dim=-1)
    else:
        images = torch.zeros(0, manifest["dim"] or _probe_dim(model))  # no readable image
    dim = images.shape[1]
    texts = None
    if manifest["text_emb"]:
        captions = [str(caption) for caption in shard.captions]
        texts = torch.zeros(0, dim)
        if captions:
            texts = model.embed_texts(captions, batch_size)
    columns: dict[str, Any] = {"image_path": pa.array(shard.keys, pa.string())}
    if manifest["captions"]:
        columns["caption"] = pa.array(shard.captions, pa.string())
    columns["row"] = pa.array(shard.rows, pa.int64())
    store.write_shard(
        shard.index,
        images.numpy().astype(np.float32),
        None if texts is None else texts.numpy().astype(np.float32),
        pa.table(columns),
    )
    start, end = shard_range(shard.index, manifest["shard_size"], manifest["rows"])
    return {
        "index": shard.index,
        "rows": [start, end],
        "count": len(shard.rows),
        "skipped": dict(shard.skipped),
        "skipped_rows": [list(record) for record in shard.skipped.rows[:NAMED_SKIPS]],
        "dim": dim,
        "seconds": time.perf_counter() - shard.started,
    }


def _print_shard(entry: dict[str, Any], manifest: dict[str, Any], world: int) -> None:
    """One line per finished shard where no progress bar shows (a job's log file)."""
    seconds, (start, end) = entry["seconds"], entry["rows"]
    by = f" (process {entry['process']})" if world > 1 else ""
    print(
        f"shard {entry['index'] + 1}/{manifest['num_shards']}{by}: {entry['count']} images "
        f"({sum(entry['skipped'].values())} skipped) in {seconds:.1f} s, "
        f"{(end - start) / max(seconds, 1e-9):.1f} images/s",
        file=sys.stderr,
        flush=True,
    )


def _probe_dim(model: EvalModel) -> int:
    """The embedding width, from one blank image (a shard with no readable image)."""
    pixels = model.image_transform()(Image.new("RGB", (32, 32)))[None]
    return int(model.encode_images(pixels).shape[1])


def _state(skips: Skips) -> dict[str, Any]:
    """A :class:`Skips` as plain data: counts, and the first rows it names."""
    return {"counts": dict(skips), "rows": [list(r) for r in skips.rows[:NAMED_SKIPS]]}


def _skips(counts: dict[str, int], rows: list[list[str]]) -> Skips:
    skips = Skips(counts)
    skips.rows = [(reason, key, name) for reason, key, name in rows]
    return skips


def _skipped_rows(manifest: dict[str, Any]) -> SkippedRows:
    """Every row the output leaves out: dropped at load, and unreadable in each shard."""
    at_load = manifest["skipped_at_load"]
    skipped = SkippedRows()
    skipped.add_at_load(_skips(at_load["counts"], at_load["rows"]))
    for entry in manifest["shards"]:
        skipped.add(_skips(entry["skipped"], entry["skipped_rows"]))
    return skipped


def _totals(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with its count and skipped totals brought up to date."""
    manifest["count"] = sum(entry["count"] for entry in manifest["shards"])
    manifest["skipped"] = _skipped_rows(manifest).by_reason()
    manifest["complete"] = len(manifest["shards"]) == manifest["num_shards"]
    return manifest
