"""What the search page's server answers, apart from HTTP: the page, searches, thumbnails.

:class:`SearchApp` turns a request's values into the JSON-ready answer, or refuses it with a
:class:`Problem` (an HTTP status and the message the caller sees); ``serve.py`` carries
both over HTTP. The model answers one query at a time (a lock: the server runs requests
in threads), while thumbnails are read from the collection's source in parallel.
"""

from __future__ import annotations

import threading
import time
from http import HTTPStatus
from importlib.resources import files
from pathlib import Path
from typing import Any

from mmcontrast.data.images import BadSample, load_image
from mmcontrast.search.collection_images import CollectionImages, ImageUnavailable
from mmcontrast.search.searcher import Hit, Searcher

__all__ = ["DEFAULT_K", "MAX_K", "Problem", "SearchApp", "page_html"]

DEFAULT_K = 12
MAX_K = 1000
PAGE = ("search", "static", "index.html")  # under the mmcontrast package


class Problem(Exception):
    """A request the server refuses: the HTTP status and the message the caller sees."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class SearchApp:
    """What the server answers, apart from HTTP: the page, searches and thumbnails.

    Args:
        searcher: The loaded collection.
        k: Results per query when a request does not say (``k=``).
        images: The data the collection was embedded from, read for its thumbnails instead
            of the one its manifest names; the only way to show a shared collection's images
            (:class:`~mmcontrast.search.collection_images.CollectionImages`).

    Raises:
        ValueError: ``k`` is not between 1 and 1000, or ``images`` does not exist.
    """

    def __init__(
        self, searcher: Searcher, k: int = DEFAULT_K, images: str | Path | None = None
    ) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise ValueError(f"k must be a whole number from 1 to {MAX_K}, got {k!r}")
        self.searcher = searcher
        self.k = k
        self.images = CollectionImages(searcher.folder, searcher.rows, images)
        self.page = page_html()
        self._model = threading.Lock()  # one query at a time through the model

    def info(self) -> dict[str, Any]:
        return {
            "collection": Path(self.searcher.folder).name,
            "model": self.searcher.model.spec,
            "count": len(self.searcher.rows),
            "k": self.k,
            "text": bool(self.searcher.model.has_text),
        }

    def search_text(self, query: str, k: int) -> dict[str, Any]:
        if not query.strip():
            raise Problem(HTTPStatus.BAD_REQUEST, "type something to search for (q is empty)")
        if not self.searcher.model.has_text:
            raise Problem(
                HTTPStatus.BAD_REQUEST,
                f"{self.searcher.model.spec} has no text tower: search with an image instead",
            )
        started = time.perf_counter()
        with self._model:
            hits = self.searcher.search_text(query, k)
        return _answer(query, k, hits, started)

    def search_image(self, data: bytes, k: int) -> dict[str, Any]:
        if not data:
            raise Problem(HTTPStatus.BAD_REQUEST, "no image: send the image file as the body")
        started = time.perf_counter()
        try:
            image = load_image(data)
        except BadSample as bad:
            hint = "drop a PNG, JPEG, WebP, GIF or BMP image"
            if bad.reason == "image too large":
                hint = "send a smaller copy"
            raise Problem(
                HTTPStatus.BAD_REQUEST, f"cannot search with this file ({bad.reason}): {hint}"
            ) from None
        with self._model:
            hits = self.searcher.search_image(image, k)
        return _answer(None, k, hits, started)

    def thumbnail(self, row: int) -> bytes:
        try:
            return self.images.thumbnail(row)
        except ImageUnavailable as gone:
            raise Problem(HTTPStatus.NOT_FOUND, str(gone)) from None


def _answer(query: str | None, k: int, hits: list[Hit], started: float) -> dict[str, Any]:
    return {
        "query": query,
        "k": k,
        "took_ms": round((time.perf_counter() - started) * 1000, 1),
        "hits": [{**hit.to_dict(), "image_url": f"/image/{hit.row}"} for hit in hits],
    }


def page_html() -> bytes:
    """The page the server shows (package data)."""
    entry = files("mmcontrast")
    for part in PAGE:
        entry = entry / part
    if not entry.is_file():
        raise FileNotFoundError(
            f"the search page mmcontrast/{'/'.join(PAGE)} is missing: the installed package "
            "is incomplete (reinstall mmcontrast)"
        )
    return entry.read_bytes()
