"""Push an exported model folder to the Hugging Face Hub.

``plan_upload`` lists what would go up (the same filter ``upload_folder`` is given),
``describe_plan`` renders it for ``--dry-run``, and ``push_folder`` creates the repo (and
branch) and uploads. Every failure a user can cause (no export, bad repo id, no network,
no or wrong token, someone else's repo) becomes a one-line ``HubPushError`` that says what
to do. The token is left to ``HfApi`` (``HF_TOKEN`` or the stored login) unless passed in;
it is read here only to scrub it, with anything shaped like ``hf_...``, from every message.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from huggingface_hub import HfApi, constants
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalTokenNotFoundError,
    OfflineModeIsEnabled,
)
from huggingface_hub.utils import filter_repo_objects, validate_repo_id

DEFAULT_COMMIT_MESSAGE = "Upload model with mmcontrast"
DEFAULT_BRANCH = "main"
CARD_FILE = "README.md"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
# fnmatch patterns on repo paths ("*" crosses "/"): hidden files and folders at any depth
# (.git, .cache/huggingface, .DS_Store ...), Python caches and lock files.
IGNORE_PATTERNS = (
    ".*",
    "*/.*",
    "__pycache__",
    "__pycache__/*",
    "*/__pycache__/*",
    "*.pyc",
    "*.lock",
)
LOGIN_HINT = "set HF_TOKEN to a token with write access or run `hf auth login`"
NETWORK_HINT = "check the network (and HF_ENDPOINT or proxy settings), or use --dry-run"
_TOKEN_LIKE = re.compile(r"hf_[A-Za-z0-9_]{8,}")


class HubPushError(ValueError):
    """A push that cannot go ahead, with a message that says what to do."""


@dataclass(frozen=True)
class PlannedFile:
    local_path: Path
    path_in_repo: str
    size: int  # bytes
    url: str  # where the file will be seen on the Hub


@dataclass
class PushResult:
    repo_url: str
    files: list[PlannedFile]
    dry_run: bool
    commit_url: str | None = None
    commit_oid: str | None = None
    text: str | None = None  # the --dry-run description


def plan_upload(
    folder: str | Path, repo_id: str, revision: str | None = None, *, endpoint: str | None = None
) -> list[PlannedFile]:
    """The files of ``folder`` that a push uploads, sorted, with sizes and Hub URLs.

    Raises:
        HubPushError: the folder is missing, empty, or holds no weights.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise HubPushError(f"{root} {what}: {_export_hint(root)}.")
    files = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
    kept = list(filter_repo_objects(files, ignore_patterns=list(IGNORE_PATTERNS)))
    if not kept:
        raise HubPushError(
            f"Nothing to upload in {root} (empty, or only hidden/ignored files): "
            f"{_export_hint(root)}."
        )
    if not any(name.endswith(WEIGHT_SUFFIXES) for name in kept):
        kinds = ", ".join(f"*{s}" for s in WEIGHT_SUFFIXES)
        raise HubPushError(f"No weights ({kinds}) in {root}: {_export_hint(root)}.")
    base = f"{(endpoint or constants.ENDPOINT).rstrip('/')}/{repo_id}/blob/"
    branch = quote(revision or DEFAULT_BRANCH, safe="")
    return [
        PlannedFile(files[name], name, files[name].stat().st_size, f"{base}{branch}/{quote(name)}")
        for name in kept
    ]


def _export_hint(folder: Path) -> str:
    return f"export a model first with `mmcontrast export RUN --output {folder}`"


def human_size(n: int) -> str:
    """Bytes as the Hub shows them: ``512 B``, ``1.5 kB``, ``438.0 MB``."""
    units = ("B", "kB", "MB", "GB", "TB")
    size, unit = float(n), 0
    while round(size, 1) >= 1000 and unit < len(units) - 1:
        size, unit = size / 1000, unit + 1
    return f"{n} B" if unit == 0 else f"{size:.1f} {units[unit]}"


def describe_plan(
    plan: list[PlannedFile],
    repo_id: str,
    private: bool,
    revision: str | None,
    commit_message: str | None,
    card_text: str | None,
) -> str:
    """The ``--dry-run`` report: repo, branch, commit message, files and the model card."""
    total = sum(f.size for f in plan)
    width = max(len(f.path_in_repo) for f in plan) if plan else 0
    visibility = "private" if private else "public"
    lines = [
        "Dry run: nothing is uploaded and no request is sent to the Hub.",
        f"Repository:     {repo_id} (created {visibility} if it does not exist yet)",
        f"Branch:         {revision or DEFAULT_BRANCH}",
        f"Commit message: {commit_message or DEFAULT_COMMIT_MESSAGE}",
        f"Files ({len(plan)}):",
        *(f"  {f.path_in_repo:<{width}}  {human_size(f.size):>9}  -> {f.url}" for f in plan),
        f"Total: {human_size(total)} in {len(plan)} file{'s' if len(plan) != 1 else ''}",
        "",
    ]
    if card_text is None:
        lines.append(f"No model card ({CARD_FILE}) in the folder: the repo page will have none.")
    else:
        lines += [f"Model card ({CARD_FILE}):", card_text.rstrip("\n")]
    return "\n".join(lines) + "\n"


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
    api: HfApi | None = None,
    token: str | None = None,
) -> PushResult:
    """Upload an export folder to the model repo ``repo_id``, creating it (and the branch).

    Args:
        folder: an export folder (weights, config, tokenizer/processor files, README.md).
        repo_id: ``OWNER/NAME`` on the Hub.
        private: create the repo private (an existing repo keeps its visibility).
        revision: branch to commit to (created from main if missing); ``None`` is main.
        commit_message: defaults to ``DEFAULT_COMMIT_MESSAGE``.
        dry_run: describe the push in ``PushResult.text`` and send nothing.
        api: the client, ``HfApi()`` by default (it finds ``HF_TOKEN`` or the stored login).
        token: a token to use instead of the environment's; never shown.

    Raises:
        HubPushError: a bad folder or repo id, or a push the Hub or the network refused.

    Example:
        >>> push_folder("exports/clip", "me/tiny-clip", dry_run=True).text  # doctest: +SKIP
    """
    check_repo_id(repo_id)
    if revision is not None and not revision.strip():
        raise HubPushError("--revision is empty: give a branch name, or leave it out for main.")
    message = commit_message or DEFAULT_COMMIT_MESSAGE
    endpoint = getattr(api, "endpoint", None)
    endpoint = endpoint if isinstance(endpoint, str) else constants.ENDPOINT
    plan = plan_upload(folder, repo_id, revision, endpoint=endpoint)
    repo_url = f"{endpoint.rstrip('/')}/{repo_id}"
    if dry_run:
        card = next((f.local_path for f in plan if f.path_in_repo == CARD_FILE), None)
        card_text = card.read_text(encoding="utf-8") if card else None
        text = describe_plan(plan, repo_id, private, revision, message, card_text)
        return PushResult(repo_url, plan, dry_run=True, text=text)

    api = api if api is not None else HfApi()
    secrets = [token, getattr(api, "token", None)]
    common: dict[str, Any] = {"repo_id": repo_id, "repo_type": "model"}
    if token is not None:
        common["token"] = token
    created = _call_hub(api.create_repo, secrets, **common, private=private, exist_ok=True)
    if revision not in (None, DEFAULT_BRANCH):
        _call_hub(api.create_branch, secrets, **common, branch=revision, exist_ok=True)
    commit = _call_hub(
        api.upload_folder,
        secrets,
        **common,
        folder_path=str(Path(folder).expanduser()),
        revision=revision,
        commit_message=message,
        ignore_patterns=list(IGNORE_PATTERNS),  # a fresh list: upload_folder extends it in place
    )
    return PushResult(
        str(created or repo_url),
        plan,
        dry_run=False,
        commit_url=getattr(commit, "commit_url", None),
        commit_oid=getattr(commit, "oid", None),
    )


def check_repo_id(repo_id: str) -> None:
    """Reject a malformed or namespace-less repo id before any request."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HubPushError(
            f"Invalid repo id {repo_id!r}: use OWNER/NAME with letters, digits, '-', '_' or '.' "
            f"(no '--' or '..', at most 96 characters). {_first_line(err)}"
        ) from None
    if "/" not in repo_id:
        raise HubPushError(
            f"Repo id {repo_id!r} has no owner: use OWNER/{repo_id}, where OWNER is your user "
            "name or an organisation you can write to."
        )


def _call_hub(call: Any, secrets: list[Any], /, **kwargs: Any) -> Any:
    """Run one Hub request; any failure becomes a scrubbed ``HubPushError`` with no chained cause."""
    try:
        return call(**kwargs)
    except Exception as err:  # every failure gets a message, none a traceback
        failure = HubPushError(scrub_secrets(explain_hub_error(err, kwargs["repo_id"]), secrets))
    raise failure  # raised outside ``except`` so the original (token-bearing?) error is not chained


def explain_hub_error(err: BaseException, repo_id: str) -> str:
    """One line: what went wrong with the push and what to do about it."""
    detail = _first_line(err)
    if isinstance(err, OfflineModeIsEnabled):
        return (
            "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set, so huggingface_hub sends no request: "
            "unset it to push, or use --dry-run to see what would be uploaded."
        )
    if isinstance(err, LocalTokenNotFoundError) or type(err).__name__ == "OIDCError":  # CI login
        return f"Not logged in to the Hugging Face Hub: {LOGIN_HINT}."
    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, HfHubHTTPError) or isinstance(status, int):
        return _explain_status(status, repo_id, getattr(err, "server_message", None) or detail)
    if isinstance(err, _network_error_types()):
        return (
            f"Cannot reach the Hugging Face Hub ({type(err).__name__}: {detail}): {NETWORK_HINT}."
        )
    if isinstance(err, HFValidationError):
        return f"The Hub client rejected an argument: {detail}"
    return f"Push to {repo_id} failed ({type(err).__name__}: {detail})."


def _explain_status(status: int | None, repo_id: str, detail: str) -> str:
    detail = _first_line(detail)
    if status == 401:
        return f"The Hub did not accept the token (401 Unauthorized): {LOGIN_HINT}."
    if status == 403:
        owner = repo_id.split("/")[0]
        return (
            f"No write access to {repo_id} (403 Forbidden: {detail}): the repo or the namespace "
            f"{owner!r} belongs to someone else, or the token is read-only. Push to a namespace you "
            f"own or belong to, or {LOGIN_HINT}."
        )
    if status == 404:
        return (
            f"{repo_id} was not found or is not visible with this token (404): check the repo id, "
            f"and {LOGIN_HINT}."
        )
    if status is not None and status >= 500:
        return f"The Hub had a server error ({status}: {detail}): try again later."
    return f"The Hub refused the push ({status or 'HTTP error'}: {detail})."


def _network_error_types() -> tuple[type[BaseException], ...]:
    """Connection failures of whichever HTTP client huggingface_hub uses (httpx2, httpx, requests)."""
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module, names in (
        ("httpx2", ("TransportError",)),
        ("httpx", ("TransportError",)),
        ("requests", ("ConnectionError", "Timeout")),
    ):
        loaded = sys.modules.get(module)  # a client never imported cannot have raised
        found += [getattr(loaded, name) for name in names if hasattr(loaded, name)]
    return tuple(found)


def scrub_secrets(text: str, secrets: list[Any] | None = None) -> str:
    """``text`` with the given secrets, the environment's token and any ``hf_...`` token hidden."""
    values = [
        *(secrets or []),
        os.environ.get("HF_TOKEN"),
        os.environ.get("HUGGING_FACE_HUB_TOKEN"),
    ]
    for value in values:
        if isinstance(value, str) and len(value.strip()) >= 4:
            text = text.replace(value.strip(), "***")
    return _TOKEN_LIKE.sub("hf_***", text)


def _first_line(err: BaseException | str) -> str:
    text = str(err).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[0] if lines else type(err).__name__
    return line if len(line) <= 300 else line[:297] + "..."
