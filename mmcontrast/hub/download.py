"""Download a model repository from the Hugging Face Hub, with a message that says what to do.

:func:`download_snapshot` fetches the whole repository with
:func:`huggingface_hub.snapshot_download` (which honours ``HF_HUB_OFFLINE``: offline, only a
repository already in the local cache is found) and turns every failure into one
:class:`HubDownloadError` naming the cause: a gated or missing repository, an unknown
revision, no network, offline mode. Loading an export (``mmcontrast.load``) and locating a
shared search collection both go through it.

Example:
    >>> download_snapshot("me/emoji-clip", None, "pass a local folder")  # doctest: +SKIP
    PosixPath('~/.cache/huggingface/hub/models--me--emoji-clip/snapshots/...')
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

__all__ = ["HubDownloadError", "download_snapshot", "explain_download_error"]


class HubDownloadError(FileNotFoundError, ValueError):
    """A repository that could not be downloaded (a missing file to callers that catch
    ``FileNotFoundError``, bad input to those that catch ``ValueError``)."""


def download_snapshot(repo_id: str, revision: str | None, local_hint: str) -> Path:
    """The local snapshot of the Hub repository ``repo_id`` at ``revision``.

    Raises:
        HubDownloadError: the cause, what to do, and ``local_hint`` (the local alternative,
            e.g. "pass the folder `mmcontrast export` wrote") where a local folder helps.
    """
    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except Exception as error:  # every failure gets a message that says what to do
        message = explain_download_error(error, repo_id, revision, local_hint)
    raise HubDownloadError(message)  # outside ``except``: the HTTP error is not chained


def explain_download_error(
    error: BaseException, repo_id: str, revision: str | None, local_hint: str
) -> str:
    """What went wrong downloading ``repo_id`` and what to do, from ``error``."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    if isinstance(error, GatedRepoError):
        return (
            f"{repo_id} is gated: accept its conditions on the Hub and log in (HF_TOKEN or "
            "`hf auth login`)"
        )
    if isinstance(error, RepositoryNotFoundError):
        return (
            f"no model repository {repo_id} on the Hub, or it is private: check the repo id, "
            f"and log in (HF_TOKEN or `hf auth login`) for a private one; or {local_hint}"
        )
    if isinstance(error, RevisionNotFoundError):
        return f"{repo_id} has no revision {revision!r}: pass a branch, tag or commit it has"
    if isinstance(error, LocalEntryNotFoundError):
        if constants.HF_HUB_OFFLINE:
            return (
                f"HF_HUB_OFFLINE is set and {repo_id} is not in the local Hub cache: unset it "
                f"to download the repository, or {local_hint}"
            )
        return (
            f"cannot reach the Hugging Face Hub to download {repo_id}, and it is not in the "
            f"local cache ({detail}): check the network (HF_ENDPOINT, proxy settings), or "
            f"{local_hint}"
        )
    if isinstance(error, HfHubHTTPError):
        return f"the Hub refused to send {repo_id} ({detail}): try again later"
    return f"downloading {repo_id} failed ({detail}): check the repo id, or {local_hint}"
