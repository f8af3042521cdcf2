"""The "Search index" section of a model card: the collections shared in the model's folder.

:func:`update_card` renders ``mmcontrast/model_cards/search_index.md`` (a
:class:`string.Template`) from every collection in ``MODEL/search/`` (images, captions,
index kind, recall@10, size) and puts it in ``MODEL/README.md`` between two HTML comments,
so sharing another collection, or the same one again, rewrites the section in place
instead of adding a second one. A folder without a card gets one holding only the section.

The section's usage snippet loads the repository by its Hub id. Where no id is known (no
``repo_id``, and the card's own usage names none) it shows the placeholder
``OWNER/FOLDER`` and a line asking to replace it: never the folder's local path, which
would be pushed to the Hub with the card.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from string import Template
from typing import Any

import pyarrow.parquet as pq

from mmcontrast.hub.push import human_size
from mmcontrast.resources import card_template
from mmcontrast.search.embed_store import MANIFEST, EmbeddingStore
from mmcontrast.search.index_files import INDEX_FILE, MANIFEST_FILE, IndexInfo
from mmcontrast.search.locate import SEARCH_DIR, shared_collections
from mmcontrast.search.searcher import INDEX_DIR

__all__ = ["CARD_FILE", "card_section", "update_card"]

CARD_FILE = "README.md"
TEMPLATE = "search_index.md"
MMCONTRAST_URL = "https://github.com/mmcontrast/mmcontrast"
BEGIN = "<!-- mmcontrast search index: begin (rewritten by mmcontrast share-index) -->"
END = "<!-- mmcontrast search index: end -->"
SECTION = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
# The id a usage snippet loads: `from_pretrained("ID")`, `hf_hub_download("ID"`, "hf-hub:ID".
USAGE_ID = re.compile(
    r"""(?:from_pretrained|hf_hub_download)\(\s*["']([^"']+)["']|["']hf-hub:([^"']+)["']"""
)
DEFAULT_QUERY = "a photo"
PLACEHOLDER_OWNER = "OWNER"  # the usage's repo id is OWNER/FOLDER until one is given
PLACEHOLDER_NOTE = (
    "\n`${repo_id}` above stands for this repository's Hub id: replace it, or write it in with "
    "`mmcontrast share-index COLLECTION MODEL --overwrite --repo-id OWNER/NAME`.\n"
)


def update_card(model_folder: str | Path, repo_id: str | None = None) -> Path:
    """Write the section for the collections in ``model_folder/search/`` into its card.

    Args:
        model_folder: The model folder.
        repo_id: The id the usage snippet loads; by default the one the card's own usage
            snippet loads, else the placeholder ``OWNER/FOLDER`` (FOLDER the folder's name)
            with a line asking to replace it.

    Returns:
        The card's path.
    """
    folder = Path(model_folder)
    card = folder / CARD_FILE
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    placeholder = f"{PLACEHOLDER_OWNER}/{folder.resolve().name}"
    if repo_id is None:  # the id this section loaded last time, else the export's usage
        repo_id = _usage_id(text, placeholder) or placeholder
    body = card_section(folder, repo_id)
    if repo_id == placeholder:
        body += Template(PLACEHOLDER_NOTE).substitute(repo_id=placeholder)
    section = f"{BEGIN}\n{body}{END}"
    if SECTION.search(text):
        text = SECTION.sub(lambda _: section, text, count=1)
    else:
        text = f"{text.rstrip()}\n\n{section}\n" if text.strip() else f"{section}\n"
    temporary = card.with_name(f".{CARD_FILE}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, card)
    return card


def _usage_id(text: str, placeholder: str) -> str | None:
    """The id the card's usage loads: its search section's (unless the placeholder), else
    the rest of the card's."""
    old = SECTION.search(text)
    candidates = [old.group(0)] if old else []
    candidates.append(SECTION.sub("", text))
    for part in candidates:
        found = USAGE_ID.search(part)
        if found and (found.group(1) or found.group(2)) != placeholder:
            return str(found.group(1) or found.group(2))
    return None


def card_section(model_folder: str | Path, repo_id: str) -> str:
    """The Markdown section describing the collections in ``model_folder/search/``."""
    names = shared_collections(model_folder)
    if not names:
        raise ValueError(f"{model_folder} has no collection in {SEARCH_DIR}/ to describe")
    described = [_describe(Path(model_folder) / SEARCH_DIR / name) for name in names]
    total = sum(row["count"] for row in described)
    what = (
        f"a collection of {total} images"
        if len(described) == 1
        else f"{len(described)} collections of images ({total} in all)"
    )
    example = next((row["caption"] for row in described if row["caption"]), DEFAULT_QUERY)
    several = len(names) > 1
    return Template(card_template(TEMPLATE)).substitute(
        what=what,
        mmcontrast_url=MMCONTRAST_URL,
        rows="\n".join(_row(name, row) for name, row in zip(names, described, strict=True)),
        repo_id=repo_id,
        example=example.replace('"', "'").replace("\\", " "),
        collection_argument=f', collection="{names[0]}"' if several else "",
        collection_flag=f" --collection {names[0]}" if several else "",
    )


def _describe(folder: Path) -> dict[str, Any]:
    """Images, captions, index and an example caption of one shared collection."""
    store = EmbeddingStore(folder)
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    index_manifest = json.loads((folder / INDEX_DIR / MANIFEST_FILE).read_text(encoding="utf-8"))
    info = IndexInfo.from_manifest(index_manifest, folder / INDEX_DIR / MANIFEST_FILE)
    caption = None
    if manifest.get("captions") and manifest.get("shards"):
        first = store.metadata_path(min(int(s["index"]) for s in manifest["shards"]))
        column = pq.read_table(first, columns=["caption"])["caption"].to_pylist()
        caption = next((c.strip() for c in column if isinstance(c, str) and c.strip()), None)
    return {
        "count": int(info.count),
        "captions": bool(manifest.get("captions")),
        "info": info,
        "bytes": (folder / INDEX_DIR / INDEX_FILE).stat().st_size,
        "caption": caption[:80] if caption else None,
    }


def _row(name: str, row: dict[str, Any]) -> str:
    info: IndexInfo = row["info"]
    parameters = ", ".join(f"{key} {value}" for key, value in sorted(info.parameters.items()))
    kind = f"{info.kind} ({parameters})" if parameters else info.kind
    cells = [
        f"`{name}`",
        str(row["count"]),
        "yes" if row["captions"] else "no",
        kind,
        f"{info.recall_at_10:.3f}",
        human_size(row["bytes"]),
    ]
    return "| " + " | ".join(cells) + " |"
