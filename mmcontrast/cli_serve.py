"""The ``mmcontrast serve`` command: a local web page to search a collection.

::

    mmcontrast serve collections/emoji              # http://127.0.0.1:8000
    mmcontrast serve collections/emoji --port 0     # any free port, printed

Type a query and see the nearest images with their captions and scores, or drop an image
and see its neighbours (:mod:`mmcontrast.search.serve`, which documents the JSON API).
"""

from __future__ import annotations

import argparse
from typing import Any


def cmd_serve(args: argparse.Namespace) -> int:
    from mmcontrast.search.serve import serve

    serve(
        args.folder,
        host=args.host,
        port=args.port,
        k=args.k,
        device=args.device,
        open_browser=args.open,
        collection=args.collection,
        revision=args.revision,
        images=args.images,
        model=args.model,
        announce=lambda line: print(line, flush=True),  # a log file sees the URL at once
    )
    return 0


def add_collection_argument(p: argparse.ArgumentParser) -> None:
    """FOLDER of ``search`` and ``serve``: whatever :meth:`Searcher.from_pretrained` loads."""
    p.add_argument(
        "folder",
        help="a collection folder (`mmcontrast embed` and `index`), a model folder with a "
        "shared collection, or the Hub id of a model repository holding one",
    )


def add_model_options(p: argparse.ArgumentParser) -> None:
    """``--model``, ``--device``, ``--collection`` and ``--revision`` of ``search`` and
    ``serve``."""
    p.add_argument(
        "--model",
        metavar="DIR",
        help="where the model that embedded the collection is now, if its folder moved",
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument(
        "--collection", help="which collection of a model with several (its search/NAME)"
    )
    p.add_argument("--revision", help="branch, tag or commit of a Hub repository")


def add_serve_command(sub: Any) -> None:
    """Register ``serve`` on the ``mmcontrast`` subparsers."""
    p = sub.add_parser(
        "serve",
        help="a local web page to search an indexed collection",
        description="Serve a web page to search FOLDER: type a query and see the nearest "
        "images with captions and scores, or drop an image and see its neighbours. It "
        "listens on 127.0.0.1 (this machine only) unless --host says otherwise; the page has "
        "no authentication. Ctrl-C stops it.",
    )
    add_collection_argument(p)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0: every address, with a warning)",
    )
    p.add_argument(
        "--port", type=int, default=8000, help="port to listen on (default 8000; 0: any free one)"
    )
    p.add_argument("-k", type=positive_int, default=12, help="results per query (default 12)")
    p.add_argument("--open", action="store_true", help="open the page in the web browser")
    add_model_options(p)
    p.add_argument(
        "--images",
        metavar="DIR",
        help="the data the collection was embedded from, for its thumbnails: needed for a "
        "collection shared in a model folder or downloaded from the Hub (its images are not "
        "included), optional otherwise (the data moved since it was embedded)",
    )
    p.set_defaults(func=cmd_serve)


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (checked before any model loads)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
