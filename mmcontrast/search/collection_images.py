"""A collection row's image, read back from the data it was embedded from.

A collection folder holds embeddings and metadata, not images: each metadata row keeps the
key naming its image (``image_path``) and the row of the source it came from (``row``), and
the manifest (``embeddings.json``, key ``data``) records what was read (the identity
:func:`~mmcontrast.search.embed_sources.open_collection` gives). The search page shows the
images of its hits by reading them back from there:

* a plain folder of images: the file ``image_path`` under the recorded folder;
* an imagefolder, tar shards or a ``datasets`` split: the source opened again as
  ``mmcontrast embed`` opened it (once, on the first image asked for) and its row ``row``
  read, whose key must still be ``image_path``, else the source changed since.

A collection that came from elsewhere (shared inside a model folder by ``mmcontrast
share-index``, its manifest's ``shared`` entry, or found in the Hugging Face cache) names its
data as it was on another machine: its source is never opened from that name (a relative
folder name would read whatever folder of that name the server runs in, a dataset name would
start a download). Its images are read only from the folder the user names (``images``,
``mmcontrast serve --images DIR``). Image files are read only inside their folder: a key
that is absolute or leads out of it (``../``) is refused.

An image that cannot be given back (a row the collection does not hold, a file moved or
deleted, a source changed or gone, a shared collection without ``images``) raises
:class:`ImageUnavailable`, whose message says which and what to do.

Example:
    >>> images = CollectionImages(searcher.folder, searcher.rows)  # doctest: +SKIP
    >>> images.thumbnail(hits[0].row)[:3]  # doctest: +SKIP
    b'\\xff\\xd8\\xff'
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import constants
from PIL import Image

from mmcontrast.data.images import BadSample, load_image
from mmcontrast.search.embed_sources import Collection, TableCollection, open_collection
from mmcontrast.search.embed_store import MANIFEST, EmbeddingStore
from mmcontrast.search.locate import SHARED

__all__ = ["THUMBNAIL_SIZE", "CollectionImages", "ImageUnavailable"]

logger = logging.getLogger(__name__)

THUMBNAIL_SIZE = 256  # the longest side of a thumbnail, in pixels
JPEG_QUALITY = 90
NOT_INCLUDED = (
    "images of a shared collection are not included: pass --images DIR (the folder it was "
    "embedded from)"
)


class ImageUnavailable(LookupError):
    """A row's image cannot be given back; the message says why and what to do."""


class CollectionImages:
    """The images of an embedded collection's rows, read from its source.

    Args:
        folder: The collection folder (``mmcontrast embed --output``).
        rows: The metadata of its rows (``Searcher.rows``): ``image_path`` and ``row``.
        images: The data the collection was embedded from (a folder of images, an
            imagefolder or a tar shard file), read instead of the one its manifest records;
            the only source of a shared collection's images.

    Raises:
        ValueError: ``folder`` holds no embeddings manifest, or ``images`` does not exist.
    """

    def __init__(
        self,
        folder: str | Path,
        rows: Sequence[dict[str, Any]],
        images: str | Path | None = None,
    ) -> None:
        self.folder = Path(folder)
        manifest = EmbeddingStore(self.folder).read_manifest()
        if manifest is None:
            raise ValueError(
                f"{self.folder} holds no {MANIFEST}: embed a collection into it first "
                "(mmcontrast embed MODEL DATA --output FOLDER)"
            )
        self.identity: dict[str, Any] = dict(manifest["data"])
        self.foreign = SHARED in manifest or _in_hub_cache(self.folder)
        if images is not None:
            local = Path(images).expanduser()
            if not local.exists():
                raise ValueError(
                    f"--images {images} does not exist: pass the folder of images (or the "
                    f"data folder) that {self.folder} was embedded from"
                )
            self.identity["path"] = str(local.resolve())
            if self.identity.get("kind") == "folder":  # the data folder, or its split in it
                split = self.identity.get("split")
                if split and (local / str(split)).is_dir():
                    self.identity["path"] = str((local / str(split)).resolve())
        self.readable = images is not None or not self.foreign
        self.keys = {
            int(meta.get("row", i)): str(meta["image_path"]) for i, meta in enumerate(rows)
        }
        self._lock = threading.Lock()
        self._source: Collection | None = None
        self._source_error: str | None = None

    def image(self, row: int) -> Image.Image:
        """The image of collection row ``row`` (a hit's ``row``), as 8-bit RGB.

        Raises:
            ImageUnavailable: The collection holds no such row, or its image cannot be read.
        """
        key = self.keys.get(row)
        if key is None:
            span = f"rows {min(self.keys)} to {max(self.keys)}" if self.keys else "no rows"
            raise ImageUnavailable(
                f"row {row} is not in {self.folder} ({len(self.keys)} images, {span})"
            )
        value, where = self._value(row, key)
        try:
            return load_image(value)
        except BadSample as bad:
            raise ImageUnavailable(
                f"the image of row {row} ({key}) cannot be read from {where}: {bad}; was it "
                f"moved or deleted since {self.folder} was embedded?"
            ) from None

    def thumbnail(self, row: int, size: int = THUMBNAIL_SIZE) -> bytes:
        """:meth:`image` as JPEG bytes, shrunk to at most ``size`` pixels a side."""
        image = self.image(row)
        image.thumbnail((size, size))
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=JPEG_QUALITY, subsampling=0)  # no colour fringes
        return out.getvalue()

    def _value(self, row: int, key: str) -> tuple[Any, str]:
        """Row ``row``'s raw image value for ``load_image``, and how messages name its source."""
        if not self.readable:
            raise ImageUnavailable(NOT_INCLUDED)
        if self.identity.get("kind") == "folder":
            root = Path(self.identity["path"])
            return _inside(root, key, row), str(root)
        with self._lock:
            source = self._open()
            entry = source.entry(row) if row < len(source) else None
        if entry is None or entry.key != key:
            now = f"is {entry.key!r}" if entry is not None else "is gone"
            raise ImageUnavailable(
                f"{source.source} changed since {self.folder} was embedded: its row {row} "
                f"{now}, the collection's is {key!r}; embed it again (mmcontrast embed)"
            )
        base = source.table.base_dir if isinstance(source, TableCollection) else None
        if base is not None and isinstance(entry.image, str):  # a file of an imagefolder
            _within(base, Path(entry.image), key, row)
        return entry.image, source.source

    def _open(self) -> Collection:
        """The source, opened on first use as ``mmcontrast embed`` opened it (hold the lock)."""
        if self._source is not None:
            return self._source
        if self._source_error is None:
            identity = self.identity
            caption = "" if identity.get("kind") == "images" else identity.get("caption_column")
            logger.info("reading the images of %s from %s", self.folder, identity["path"])
            try:
                source = open_collection(
                    identity["path"], identity.get("split"), identity.get("image_column"), caption
                )
            except (ValueError, OSError) as err:
                self._source_error = str(err)
            else:
                if len(source) == identity.get("rows", len(source)):
                    self._source = source
                    return source
                self._source_error = (
                    f"it has {len(source)} rows now, {identity['rows']} when it was embedded"
                )
        raise ImageUnavailable(
            f"the images of {self.folder} cannot be read back from {self.identity.get('path')}: "
            f"{self._source_error}; restore the data there, or embed the collection again"
        )


def _inside(root: Path, key: str, row: int) -> str:
    """The file ``key`` (relative) names under ``root``, refused unless it lies inside it."""
    if Path(key).is_absolute():
        raise ImageUnavailable(
            f"the image of row {row} ({key}) is an absolute path: only files under the folder "
            "the collection was embedded from are served"
        )
    return _within(root, root / key, key, row)


def _within(root: Path, path: Path, key: str, row: int) -> str:
    """``path``, refused unless it lies inside ``root`` once ``..`` is resolved.

    Links inside ``root`` are followed as they are (a folder of links to photos is the
    user's own): what is refused is a key that names a path outside it.
    """
    normal = Path(os.path.normpath(os.path.abspath(path)))
    if not normal.is_relative_to(os.path.normpath(os.path.abspath(root))):
        raise ImageUnavailable(
            f"the image of row {row} ({key}) is not inside {root}: only files under the "
            "folder the collection was embedded from are served"
        )
    return str(path)


def _in_hub_cache(folder: Path) -> bool:
    """Whether ``folder`` lies in the Hugging Face cache (a downloaded repository)."""
    return folder.resolve().is_relative_to(Path(constants.HF_HUB_CACHE).expanduser().resolve())
