"""Fixtures of the search page's tests: a tiny model, a collection embedded and indexed with
it through the command line, and a search server over that collection in a thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import save_clip

from mmcontrast.cli import main
from mmcontrast.search.searcher import Searcher
from mmcontrast.search.serve import SearchServer, make_server


@pytest.fixture(scope="session")
def search_clip(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A tiny random CLIPModel folder."""
    return save_clip(tmp_path_factory.mktemp("search-clip"), tokenizer_dir)


@pytest.fixture(scope="session")
def indexed_collection(
    tmp_path_factory: pytest.TempPathFactory, search_clip: Path, shapes_dir: Path
) -> Path:
    """The shapes' train split (32 captioned images) embedded and indexed, through the CLI."""
    folder = tmp_path_factory.mktemp("served") / "shapes"
    argv = ["embed", str(search_clip), str(shapes_dir), "--output", str(folder), "--split", "train"]
    assert main([*argv, "--batch-size", "8", "--device", "cpu"]) == 0
    assert main(["index", str(folder)]) == 0
    return folder


@pytest.fixture(scope="session")
def served(indexed_collection: Path) -> Iterator[SearchServer]:
    """:func:`make_server` on a free port with 5 results per query, serving in a thread
    until the session ends (``served.url``; ``served.app.searcher`` answers its queries)."""
    searcher = Searcher.from_pretrained(indexed_collection, device="cpu")
    server = make_server(searcher, port=0, k=5)
    thread = threading.Thread(target=server.serve_forever, name="search-server", daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)
