"""The search commands of ``mmcontrast``: ``embed``, ``index``, ``search``, ``serve``, ``share-index``.

A collection goes from images to answers in three commands::

    mmcontrast embed exports/quickstart emoji --output collections/emoji
    mmcontrast index collections/emoji
    mmcontrast search collections/emoji "a red heart"

``embed`` writes embeddings and metadata in clip-retrieval's layout (resumable),
``index`` builds the nearest-neighbour index beside them, ``search`` answers a text or an
image query (:class:`mmcontrast.search.searcher.Searcher` in Python) and ``serve`` answers them on a
local web page (``cli_serve.py``). To share the index with its
model, ``share-index`` copies it into the model folder, which ``mmcontrast push`` uploads::

    mmcontrast share-index collections/emoji exports/quickstart
    mmcontrast push exports/quickstart --repo-id me/emoji-clip
    mmcontrast search me/emoji-clip "a red heart"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mmcontrast.cli_serve import (
    add_collection_argument,
    add_model_options,
    add_serve_command,
    positive_int,
)


def cmd_embed(args: argparse.Namespace) -> int:
    from mmcontrast.search import embed_collection

    summary = embed_collection(
        args.model,
        args.data,
        args.output,
        split=args.split,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        shard_size=args.shard_size,
        device=args.device,
        image_column=args.image_column,
        caption_column=args.caption_column,
    )
    if not summary.main_process:
        return 0  # several processes: the first one reports
    skipped = sum(summary.skipped.values())
    print(
        f"embedded {summary.count} images ({summary.dim}-d, {summary.shards} shards"
        f"{f', {skipped} skipped' if skipped else ''}) at {summary.images_per_s:.1f} "
        f"images/s into {summary.output}"
    )
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from mmcontrast.search.embed_store import INDEX_DIR, embeddings_fingerprint, read_embeddings
    from mmcontrast.search.index import build_index

    folder = Path(args.folder)
    embedded = read_embeddings(folder, texts=False)  # the index needs only the images
    if len(embedded.images) == 0:
        raise ValueError(
            f"{folder} holds no embedded images (none of its images could be read): embed a "
            "collection with readable images (mmcontrast embed MODEL DATA --output FOLDER)"
        )
    info = build_index(
        embedded.images,
        folder / INDEX_DIR,
        memory_budget_mb=args.memory_budget_mb,
        target_recall=args.target_recall,
        metadata={
            "model": embedded.manifest["model"],
            "count": len(embedded.images),
            "embeddings": embeddings_fingerprint(embedded.manifest),
        },
    )
    print(
        f"indexed {info.count} images ({info.kind}): recall@10 {info.recall_at_10:.3f} "
        f"against exact search, query {info.latency_ms['p50']:.2f} ms; {folder / INDEX_DIR}"
    )
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from mmcontrast.search.searcher import Searcher, check_text_query

    if (args.query is None) == (args.image is None):
        raise ValueError("give a text query or --image PATH (one of them)")
    if args.query is not None:
        check_text_query(args.query)
    searcher = Searcher.from_pretrained(
        args.folder,
        args.model,
        device=args.device,
        collection=args.collection,
        revision=args.revision,
    )
    if args.image is not None:
        hits = searcher.search_image(args.image, k=args.k)
    else:
        hits = searcher.search_text(args.query, k=args.k)
    if args.json:
        print(json.dumps([hit.to_dict() for hit in hits], indent=2))
        return 0
    width = max([len(hit.image_path) for hit in hits] + [5])
    print(f"{'rank':>4}  {'score':>6}  {'image':<{width}}  caption")
    for hit in hits:
        print(f"{hit.rank:>4}  {hit.score:>6.3f}  {hit.image_path:<{width}}  {hit.caption or ''}")
    return 0


def cmd_share_index(args: argparse.Namespace) -> int:
    from mmcontrast.search.share import add_collection

    shared = add_collection(
        args.model, args.collection, args.name, overwrite=args.overwrite, repo_id=args.repo_id
    )
    print(shared.summary())
    return 0


def add_search_commands(sub: Any) -> None:
    """Register ``embed``, ``index``, ``search``, ``share-index`` and ``serve``."""
    p = sub.add_parser(
        "embed",
        help="embed a collection of images (and captions) for search",
        description="Embed every image of DATA (and its caption) with MODEL into OUTPUT: "
        "img_emb/*.npy, text_emb/*.npy and metadata/*.parquet, as clip-retrieval writes "
        "them. A rerun skips the shards already written.",
    )
    p.add_argument("model", help="any model `mmcontrast eval --model` takes")
    p.add_argument(
        "data", help="an imagefolder, a plain folder of images, a datasets name or a built-in"
    )
    p.add_argument("--output", required=True, help="the collection folder to write")
    p.add_argument("--split", help="the split to embed (default train, or the folder itself)")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    p.add_argument("--num-workers", type=int, default=0, help="image decoding processes")
    p.add_argument(
        "--shard-size", type=int, default=10_000, help="images per shard (default 10000)"
    )
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    p.add_argument("--image-column", help="image column (default image)")
    p.add_argument("--caption-column", help="caption column (default text)")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser(
        "index",
        help="build the nearest-neighbour index of an embedded collection",
        description="Build FOLDER/index from FOLDER's image embeddings: exact search for "
        "small collections, an approximate index tuned to the target recall above.",
    )
    p.add_argument("folder", help="a folder written by `mmcontrast embed`")
    p.add_argument(
        "--memory-budget-mb", type=float, help="the most memory the index may take"
    )
    p.add_argument(
        "--target-recall",
        type=float,
        default=0.95,
        help="recall@10 against exact search to reach (default 0.95)",
    )
    p.set_defaults(func=cmd_index)

    p = sub.add_parser(
        "search",
        help="search an indexed collection with a text or an image",
        description="The images of FOLDER nearest to a text query or to --image PATH.",
    )
    add_collection_argument(p)
    p.add_argument("query", nargs="?", help="the text to search for")
    p.add_argument("--image", help="search with this image instead of a text")
    p.add_argument("-k", type=positive_int, default=10, help="results to show (default 10)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    add_model_options(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser(
        "share-index",
        help="copy an indexed collection into its model's folder, to push them together",
        description="Copy COLLECTION's embeddings, metadata and index into MODEL/search/NAME "
        "and describe them in MODEL's model card. COLLECTION must be complete, indexed and "
        "embedded with MODEL. `mmcontrast push MODEL` then uploads the model and its index, "
        "and `mmcontrast search REPO_ID QUERY` (Searcher.from_pretrained) loads both back.",
    )
    p.add_argument("collection", help="a folder written by `mmcontrast embed` and `index`")
    p.add_argument("model", help="the model folder (an export) that embedded it")
    p.add_argument("--name", help="its name in MODEL/search/ (default: the folder's name)")
    p.add_argument(
        "--repo-id",
        help="Hub id the card's usage loads (default: the one the card already names)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace MODEL/search/NAME")
    p.set_defaults(func=cmd_share_index)

    add_serve_command(sub)
