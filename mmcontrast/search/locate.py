"""Which collection a name means: a collection folder, a model folder carrying one, or a Hub repo.

A collection travels with its model inside the model's folder (``mmcontrast share-index``,
:mod:`mmcontrast.search.share`, puts it there), so one ``mmcontrast push`` uploads both::

    MODEL/
        config.json, model.safetensors, README.md ...    # the export
        search/NAME/                                      # one folder per collection
            embeddings.json, img_emb/, text_emb/, metadata/, index/

A shared collection's manifest does not name its model by the absolute path it was embedded
from but as the folder that holds it (``"shared": {"model": "../.."}``): wherever the model
folder goes (another disk, the Hub cache after a download) the collection is searched with
the model beside it, and :func:`same_model` still tells that model from any other.

:func:`locate_collection` turns what a user passes into a collection folder, downloading a
Hub repository with :func:`huggingface_hub.snapshot_download` (which honours
``HF_HUB_OFFLINE``: offline, only a repository already in the cache is found);
:func:`recorded_model` reads the model spec a collection was embedded with.

Example:
    >>> located = locate_collection("me/emoji-clip")  # doctest: +SKIP
    >>> located.folder  # doctest: +SKIP
    PosixPath('~/.cache/huggingface/hub/models--me--emoji-clip/snapshots/.../search/emoji')
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from mmcontrast.eval.adapters.base import split_family
from mmcontrast.hub.download import download_snapshot
from mmcontrast.models.locations import local_path_reason
from mmcontrast.search.embed_store import MANIFEST

__all__ = [
    "MODEL_FROM_COLLECTION",
    "SEARCH_DIR",
    "SHARED",
    "Located",
    "locate_collection",
    "recorded_model",
    "same_model",
    "shared_collections",
]

SEARCH_DIR = "search"  # MODEL/search/NAME/ holds the collection NAME
SHARED = "shared"  # the manifest key of a collection shared inside a model folder
MODEL_FROM_COLLECTION = "../.."  # MODEL, seen from MODEL/search/NAME
HUB_PREFIX = "hf-hub:"
SHARE_HINT = "share one into a model folder with `mmcontrast share-index COLLECTION MODEL`"


@dataclass(frozen=True)
class Located:
    """A collection folder, and the other names of its recorded model (a Hub repo id)."""

    folder: Path
    aliases: tuple[str, ...] = ()


def locate_collection(
    name: str | Path, collection: str | None = None, revision: str | None = None
) -> Located:
    """The collection folder ``name`` means.

    Args:
        name: A collection folder (``mmcontrast embed`` then ``index``); a model folder with
            collections in ``search/``; or the Hub id ``OWNER/NAME`` (``hf-hub:`` prefix
            allowed) of a model repository holding one, downloaded (or found in the cache).
        collection: Which of a model's collections (``search/COLLECTION``); needed when it
            has several.
        revision: Branch, tag or commit of a Hub repository (default: main).

    Raises:
        ValueError: ``name`` is neither a folder nor a Hub id, holds no collection, holds
            several and ``collection`` names none (or one it lacks), or the download failed.
    """
    text = str(name)
    path = Path(text).expanduser()
    if path.exists():
        if revision is not None:
            raise ValueError(f"{path} is a local folder: a revision only applies to a Hub repo id")
        return Located(_collection_in(path, collection, str(path)))
    repo_id = text.removeprefix(HUB_PREFIX)
    if local_path_reason(repo_id) is not None or "/" not in repo_id:
        raise ValueError(
            f"{text} does not exist: embed a collection into it first (mmcontrast embed MODEL "
            f"DATA --output {text}, then mmcontrast index {text}), or pass a model folder or "
            "the Hub id OWNER/NAME of a model repository with a shared collection"
        )
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise ValueError(
            f"{text} is neither an existing folder nor a Hub repo id (OWNER/NAME with letters, "
            "digits, '-', '_' or '.'): pass a collection folder, a model folder or a repo id"
        ) from None
    hint = "pass a local model or collection folder"
    snapshot = download_snapshot(repo_id, revision, hint)
    return Located(_collection_in(snapshot, collection, repo_id), aliases=(repo_id,))


def shared_collections(model_folder: str | Path) -> list[str]:
    """The names of the collections in ``model_folder/search/``, sorted."""
    root = Path(model_folder) / SEARCH_DIR
    if not root.is_dir():
        return []
    return sorted(
        entry.name
        for entry in root.iterdir()
        if entry.is_dir() and not entry.name.startswith(".") and (entry / MANIFEST).is_file()
    )


def recorded_model(folder: str | Path, manifest: dict[str, Any]) -> str:
    """The spec of the model that embedded the collection in ``folder``.

    A shared collection's model is the folder that holds it, as an absolute path (with the
    family prefix the collection was embedded with, if any).

    Raises:
        ValueError: A shared collection that is no longer inside a model's ``search/``.
    """
    spec = str(manifest["model"]["spec"])
    shared = manifest.get(SHARED)
    if not isinstance(shared, dict):
        return spec
    folder = Path(folder).resolve()
    if folder.parent.name != SEARCH_DIR:
        raise ValueError(
            f"{folder} was shared inside a model folder (as MODEL/{SEARCH_DIR}/{folder.name}) "
            "and has been moved out of it, away from its model: search the model folder it "
            f"came with, or put it back in MODEL/{SEARCH_DIR}/"
        )
    family, _ = split_family(spec)
    root = str((folder / str(shared.get("model", MODEL_FROM_COLLECTION))).resolve())
    return f"{family}:{root}" if family else root


def model_folder_gone(spec: str) -> bool:
    """Whether ``spec`` names a local model folder by its absolute path (as a collection
    records a local model) and nothing is there any more."""
    path = Path(split_family(spec)[1])
    return path.is_absolute() and not path.exists()


def same_model(spec: str, recorded: str) -> bool:
    """Whether two model specs name the same model (local paths compared resolved; a family
    prefix on one of them only is ignored)."""
    if spec == recorded:
        return True
    (family_a, a), (family_b, b) = split_family(spec), split_family(recorded)
    if family_a and family_b and family_a != family_b:
        return False
    path_a, path_b = Path(a).expanduser(), Path(b).expanduser()
    return path_a.exists() and path_b.exists() and path_a.resolve() == path_b.resolve()


def _collection_in(path: Path, collection: str | None, shown: str) -> Path:
    """The collection folder ``path`` is, or the one of its ``search/`` that ``collection`` names."""
    if (path / MANIFEST).is_file():
        if collection is not None:
            raise ValueError(
                f"{shown} is a collection folder itself: leave out the collection name (it "
                f"picks one of a model folder's {SEARCH_DIR}/ collections)"
            )
        return path
    names = shared_collections(path)
    if not names:
        raise ValueError(
            f"{shown} holds no {MANIFEST} and no collection in {SEARCH_DIR}/: pass a collection "
            "folder (mmcontrast embed MODEL DATA --output FOLDER, then mmcontrast index FOLDER), "
            f"or a model folder or Hub repo that carries one ({SHARE_HINT}, then push it)"
        )
    if collection is None:
        if len(names) > 1:
            raise ValueError(
                f"{shown} holds {len(names)} collections ({', '.join(names)}): name one "
                "(collection=NAME in Python, --collection NAME on the command line)"
            )
        return path / SEARCH_DIR / names[0]
    if collection not in names:
        raise ValueError(
            f"{shown} holds no collection {collection!r} in {SEARCH_DIR}/, only "
            f"{', '.join(names)}: pass one of these"
        )
    return path / SEARCH_DIR / collection
