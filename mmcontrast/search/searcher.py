"""Text and image queries against an embedded, indexed collection.

A collection folder is what ``mmcontrast embed`` and ``mmcontrast index`` write::

    COLLECTION/
        embeddings.json, img_emb/, text_emb/, metadata/   # mmcontrast.search.embed
        index/index.faiss, index/index.json               # mmcontrast.search.index

:class:`Searcher` loads the index, the rows' metadata and the model that embedded the
collection (any model the evaluation suite loads), embeds a query with that model and returns
the nearest images by cosine similarity. It also finds a collection shared inside a model
folder (``MODEL/search/NAME``, ``mmcontrast share-index``) or a Hub repository holding one
(:mod:`mmcontrast.search.locate`), and then searches with that model.

Example:
    >>> searcher = Searcher.from_pretrained("collections/emoji")  # doctest: +SKIP
    >>> searcher = Searcher.from_pretrained("me/emoji-clip")  # doctest: +SKIP
    >>> [hit.image_path for hit in searcher.search_text("a red heart", k=3)]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mmcontrast.data.images import BadSample, load_image
from mmcontrast.eval.adapters import EvalModel, load_eval_model
from mmcontrast.search.embed_store import INDEX_DIR, embeddings_fingerprint, read_metadata
from mmcontrast.search.index import IndexInfo, load_index, search
from mmcontrast.search.locate import (
    locate_collection,
    model_folder_gone,
    recorded_model,
    same_model,
)

__all__ = ["INDEX_DIR", "Hit", "Searcher"]

logger = logging.getLogger(__name__)


@dataclass
class Hit:
    """One result: its rank (1 first), cosine similarity, row of the collection and metadata."""

    rank: int
    score: float
    row: int
    image_path: str
    caption: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Searcher:
    """Nearest images of a collection for a text or an image.

    Args:
        model: The model that embedded the collection (its text and image towers).
        index: The collection's index (:func:`mmcontrast.search.index.load_index`).
        rows: Metadata of every indexed row, in index order (``image_path``, ``caption``,
            ``row``).
        folder: The collection folder.
    """

    def __init__(
        self, model: EvalModel, index: Any, rows: list[dict[str, Any]], folder: Path
    ) -> None:
        self.model = model
        self.index = index
        self.rows = rows
        self.folder = folder

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        model: str | EvalModel | None = None,
        device: torch.device | str | None = None,
        *,
        collection: str | None = None,
        revision: str | None = None,
    ) -> Searcher:
        """Load a collection and the model that embedded it.

        Args:
            folder: A collection folder (``mmcontrast embed`` then ``mmcontrast index``); a
                model folder with a collection in ``search/`` (``mmcontrast share-index``);
                or the Hub id of a model repository holding one (downloaded with its model).
            model: The model to embed queries with; by default the one recorded in the
                collection (for a shared collection, the model folder holding it). Another
                model is refused: its embeddings are not comparable. When the recorded model
                folder no longer exists, this names where it went (taken on trust, warned).
            device: Where the model runs (default: CUDA if available).
            collection: Which collection of a model folder's ``search/`` (when it has several).
            revision: Branch, tag or commit of a Hub repository.

        Raises:
            ValueError: No collection is found there, it holds no index, the index and the
                embeddings disagree, or ``model`` is not the collection's.
        """
        located = locate_collection(folder, collection, revision)
        folder = located.folder
        index, info = load_index(folder / INDEX_DIR)
        embedded = read_metadata(folder)
        rows = embedded.metadata.to_pylist()
        check_index(folder, info, embedded.manifest, len(rows))
        recorded = recorded_model(folder, embedded.manifest)
        gone = model_folder_gone(recorded)
        if model is None or (isinstance(model, str) and model in located.aliases):
            if gone:
                raise ValueError(
                    f"{folder} was embedded with {recorded}, which is no longer there (moved "
                    "or deleted): pass the model's new place (--model DIR on the command line, "
                    "model=DIR in Python); to keep a collection with its model, share it into "
                    "the model folder (mmcontrast share-index COLLECTION MODEL)"
                )
            model = load_eval_model(recorded, device)
        name = model if isinstance(model, str) else model.spec
        if gone and name not in located.aliases:
            logger.warning(
                "%s was embedded with %s, which is no longer there: querying with %s, taken "
                "to be the same model moved (another model's embeddings are not comparable)",
                folder, recorded, name,
            )  # fmt: skip
        elif name not in located.aliases and not same_model(name, recorded):
            raise ValueError(
                f"{folder} was embedded with {recorded}, not {name}: embeddings of another "
                "model are not comparable; query it with the model it was embedded with, or "
                "embed the collection again with this one"
            )
        if isinstance(model, str):
            model = load_eval_model(model, device)
        return cls(model, index, rows, folder)

    @torch.no_grad()
    def search_text(self, text: str, k: int = 10) -> list[Hit]:
        """The ``k`` images nearest to ``text``.

        Raises:
            ValueError: ``text`` is empty or only spaces, or ``k < 1``.
        """
        check_text_query(text)
        _check_k(k)
        return self.search_embedding(self.model.encode_texts([text]), k)

    @torch.no_grad()
    def search_image(self, image: str | Path | Image.Image | bytes, k: int = 10) -> list[Hit]:
        """The ``k`` images nearest to ``image`` (a path, bytes or a PIL image).

        Raises:
            ValueError: The image cannot be read.
        """
        try:
            decoded = load_image(str(image) if isinstance(image, Path) else image)
        except BadSample as bad:
            raise ValueError(f"cannot search with this image: {bad}") from None
        _check_k(k)
        pixels = self.model.image_transform()(decoded)[None]
        return self.search_embedding(self.model.encode_images(pixels), k)

    def search_embedding(self, embedding: torch.Tensor | np.ndarray, k: int = 10) -> list[Hit]:
        """The ``k`` rows nearest to one embedding (normalised here)."""
        _check_k(k)
        vector = torch.as_tensor(embedding, dtype=torch.float32).reshape(1, -1)
        query = torch.nn.functional.normalize(vector, dim=-1).cpu().numpy()
        scores, ids = search(self.index, query, min(k, len(self.rows)))
        return [
            Hit(
                rank=rank,
                score=float(score),
                row=int(self.rows[i].get("row", i)),
                image_path=str(self.rows[i]["image_path"]),
                caption=self.rows[i].get("caption"),
            )
            for rank, (score, i) in enumerate(zip(scores[0], ids[0], strict=True), start=1)
            if i >= 0
        ]


def check_index(folder: Path, info: IndexInfo, manifest: dict[str, Any], count: int) -> None:
    """Refuse an index built from other embeddings than ``folder``'s.

    An index built by ``mmcontrast index`` records the embeddings' fingerprint
    (:func:`~mmcontrast.search.embed_store.embeddings_fingerprint`) and model description;
    an index without them (built in Python) is checked by its row count only.

    Raises:
        ValueError: The index was built from other embeddings or from another model's.
    """
    rebuild = f"rebuild it (mmcontrast index {folder})"
    metadata = info.metadata if isinstance(info.metadata, dict) else {}
    indexed_model, model = metadata.get("model"), manifest.get("model")
    fingerprint = metadata.get("embeddings")
    other_model = isinstance(indexed_model, dict) and indexed_model != model
    if other_model or (fingerprint is not None and fingerprint != embeddings_fingerprint(manifest)):
        spec = indexed_model.get("spec") if isinstance(indexed_model, dict) else indexed_model
        raise ValueError(
            f"{folder / INDEX_DIR} was built from other embeddings (model {spec}): {rebuild}"
        )
    if int(info.count) != count:
        raise ValueError(
            f"{folder / INDEX_DIR} indexes {info.count} rows but {folder} holds {count}: the "
            f"embeddings changed since; {rebuild}"
        )


def check_text_query(text: str) -> None:
    """Refuse an empty or blank text query (the CLI asks before loading the model)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"the text query {text!r} is empty: give some words to search for")


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a whole number of at least 1, got {k!r}")
