"""Pushing an export folder to the Hub, with the network replaced at the ``HfApi`` boundary."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2  # the HTTP client huggingface_hub 2.x uses (1.x used httpx, 0.x requests)
import pytest
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError
from huggingface_hub.utils import filter_repo_objects

from mmcontrast.hub import push
from mmcontrast.hub.push import (
    IGNORE_PATTERNS,
    HubPushError,
    describe_plan,
    human_size,
    plan_upload,
    push_folder,
)

REPO = "alice/tiny-clip"
SECRET = "hf_testSECRETtoken123"
CARD = "---\nlicense: apache-2.0\n---\n# tiny-clip\n\nA CLIP model trained with mmcontrast.\n"
EXPORTED = {  # path in the export folder -> size in bytes
    "model.safetensors": 2048,
    "config.json": 120,
    "tokenizer.json": 300,
    "preprocessor_config.json": 80,
    "README.md": len(CARD.encode()),
    "text/vocab.txt": 40,
}
SKIPPED = [
    ".git/config",
    ".cache/huggingface/upload/model.safetensors.metadata",
    ".DS_Store",
    "text/.hidden",
    "__pycache__/x.cpython-311.pyc",
    "text/__pycache__/y.pyc",
    "model.safetensors.lock",
]


class FakeHfApi:
    """Records every call; raises ``fail[method]`` when set. Sends nothing anywhere."""

    endpoint = "https://huggingface.co"
    token = None

    def __init__(self, fail: dict[str, BaseException] | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail or {}

    def _record(self, name: str, kwargs: dict[str, Any]) -> None:
        self.calls.append((name, kwargs))
        if name in self.fail:
            raise self.fail[name]

    def create_repo(self, **kwargs: Any) -> str:
        self._record("create_repo", kwargs)
        return f"{self.endpoint}/{kwargs['repo_id']}"

    def create_branch(self, **kwargs: Any) -> None:
        self._record("create_branch", kwargs)

    def upload_folder(self, **kwargs: Any) -> SimpleNamespace:
        self._record("upload_folder", kwargs)
        return SimpleNamespace(
            commit_url=f"{self.endpoint}/{kwargs['repo_id']}/commit/abc123", oid="abc123"
        )

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def kwargs(self, name: str) -> dict[str, Any]:
        return next(kw for n, kw in self.calls if n == name)


def write_files(root: Path, files: dict[str, int] | list[str]) -> None:
    for name in files:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name == "README.md":
            path.write_text(CARD, encoding="utf-8")
        else:
            path.write_bytes(b"x" * (files[name] if isinstance(files, dict) else 3))


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "export"
    write_files(folder, EXPORTED)
    write_files(folder, SKIPPED)
    return folder


@pytest.fixture(autouse=True)
def no_default_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that forgets ``api=`` must not build a real client."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("HfApi() was constructed")

    monkeypatch.setattr(push, "HfApi", refuse)


def http_error(status: int, message: str = "", server_message: str | None = None) -> HfHubHTTPError:
    request = httpx2.Request("POST", "https://huggingface.co/api/repos/create")
    response = httpx2.Response(status, request=request)
    return HfHubHTTPError(
        message or f"{status} Client Error", response=response, server_message=server_message
    )


def test_plan_lists_export_files_and_skips_hidden_caches_and_locks(export_dir: Path) -> None:
    plan = plan_upload(export_dir, REPO)
    assert [f.path_in_repo for f in plan] == sorted(EXPORTED)
    for f in plan:
        assert f.size == EXPORTED[f.path_in_repo]
        assert f.local_path == export_dir / f.path_in_repo
        assert f.url == f"https://huggingface.co/{REPO}/blob/main/{f.path_in_repo}"
    on_branch = plan_upload(export_dir, REPO, "exp/v2")
    assert on_branch[0].url.startswith(f"https://huggingface.co/{REPO}/blob/exp%2Fv2/")


def test_plan_is_what_upload_folder_uploads(export_dir: Path) -> None:
    """upload_folder filters with our patterns plus its own defaults (.git, .cache/huggingface)."""
    from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

    on_disk = [p.relative_to(export_dir).as_posix() for p in export_dir.rglob("*") if p.is_file()]
    patterns = [*IGNORE_PATTERNS, *DEFAULT_IGNORE_PATTERNS]
    uploaded = sorted(filter_repo_objects(on_disk, ignore_patterns=patterns))
    assert uploaded == [f.path_in_repo for f in plan_upload(export_dir, REPO)]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (None, "does not exist"),
        ([], "Nothing to upload"),
        ([".git/HEAD", "__pycache__/a.pyc"], "Nothing to upload"),
        (["config.json", "README.md"], "No weights"),
    ],
)
def test_plan_rejects_missing_empty_or_weightless_folder(
    tmp_path: Path, files: list[str] | None, expected: str
) -> None:
    folder = tmp_path / "export"
    if files is not None:
        folder.mkdir()
        write_files(folder, files)
    api = FakeHfApi()
    with pytest.raises(HubPushError, match=expected) as info:
        push_folder(folder, REPO, api=api)
    assert f"mmcontrast export RUN --output {folder}" in str(info.value)
    assert api.calls == []


def test_push_creates_repo_and_uploads_to_main(export_dir: Path) -> None:
    api = FakeHfApi()
    result = push_folder(export_dir, REPO, api=api)
    assert api.names() == ["create_repo", "upload_folder"]  # no branch for main
    assert api.kwargs("create_repo") == {
        "repo_id": REPO,
        "repo_type": "model",
        "private": False,
        "exist_ok": True,
    }
    upload = api.kwargs("upload_folder")
    assert upload["repo_id"] == REPO and upload["repo_type"] == "model"
    assert Path(upload["folder_path"]) == export_dir
    assert upload["revision"] is None
    assert upload["commit_message"] == "Upload model with mmcontrast"
    assert upload["ignore_patterns"] == list(IGNORE_PATTERNS)
    assert "token" not in upload  # HfApi finds HF_TOKEN / the stored login itself
    assert result.repo_url == f"https://huggingface.co/{REPO}"
    assert result.commit_oid == "abc123" and result.commit_url.endswith("/commit/abc123")
    assert [f.path_in_repo for f in result.files] == sorted(EXPORTED)
    assert not result.dry_run and result.text is None


def test_push_to_branch_creates_it_first_and_private_repo(export_dir: Path) -> None:
    api = FakeHfApi()
    push_folder(export_dir, REPO, private=True, revision="exp-1", commit_message="Epoch 3", api=api)
    assert api.names() == ["create_repo", "create_branch", "upload_folder"]
    assert api.kwargs("create_repo")["private"] is True
    assert api.kwargs("create_branch") == {
        "repo_id": REPO,
        "repo_type": "model",
        "branch": "exp-1",
        "exist_ok": True,
    }
    upload = api.kwargs("upload_folder")
    assert upload["revision"] == "exp-1" and upload["commit_message"] == "Epoch 3"


def test_push_explicit_main_makes_no_branch(export_dir: Path) -> None:
    api = FakeHfApi()
    push_folder(export_dir, REPO, revision="main", api=api)
    assert api.names() == ["create_repo", "upload_folder"]
    assert api.kwargs("upload_folder")["revision"] == "main"


def test_push_builds_default_hfapi(export_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[FakeHfApi] = []

    def factory(*args: Any, **kwargs: Any) -> FakeHfApi:
        assert args == () and kwargs == {}  # no token handed around
        made.append(FakeHfApi())
        return made[-1]

    monkeypatch.setattr(push, "HfApi", factory)
    push_folder(export_dir, REPO)
    assert len(made) == 1 and made[0].names() == ["create_repo", "upload_folder"]


def test_dry_run_lists_every_file_and_the_card_without_any_call(export_dir: Path) -> None:
    api = FakeHfApi()
    result = push_folder(
        export_dir, REPO, private=True, revision="exp-1", dry_run=True, api=api
    )  # the autouse fixture also makes any HfApi() construction fail
    assert api.calls == [] and result.dry_run and result.commit_url is None
    text = result.text
    assert text is not None
    assert f"{REPO} (created private" in text
    assert "Branch:         exp-1" in text
    assert "Commit message: Upload model with mmcontrast" in text
    for name, size in EXPORTED.items():
        line = next(line for line in text.splitlines() if line.strip().startswith(name + " "))
        assert human_size(size) in line
        assert line.endswith(f"-> https://huggingface.co/{REPO}/blob/exp-1/{name}")
    for name in SKIPPED:
        assert name not in text
    assert f"Total: {human_size(sum(EXPORTED.values()))} in {len(EXPORTED)} files" in text
    assert CARD.rstrip() in text


def test_dry_run_without_card_says_so(export_dir: Path) -> None:
    (export_dir / "README.md").unlink()
    text = push_folder(export_dir, REPO, dry_run=True, api=FakeHfApi()).text
    assert text is not None and "No model card (README.md)" in text
    assert "created public" in text and "Branch:         main" in text


def test_describe_plan_of_a_single_file(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 1_500_000)
    plan = plan_upload(tmp_path, REPO)
    text = describe_plan(plan, REPO, False, None, None, None)
    assert re.search(r"^  model\.safetensors +1\.5 MB  -> https://\S+$", text, re.MULTILINE)
    assert "Total: 1.5 MB in 1 file\n" in text


def test_human_size() -> None:
    sizes = (0, 999, 1000, 999_999, 1_234_567, 5 * 10**9, 3 * 10**12, 10**16)
    assert [human_size(n) for n in sizes] == [
        "0 B",
        "999 B",
        "1.0 kB",
        "1.0 MB",
        "1.2 MB",
        "5.0 GB",
        "3.0 TB",
        "10000.0 TB",
    ]


@pytest.mark.parametrize(
    "repo_id",
    ["", "alice/bad--name", "a/b/c", "-alice/x", "alice/x.", "alice/has space", "noowner"],
)
def test_invalid_repo_id_rejected_before_any_call(export_dir: Path, repo_id: str) -> None:
    api = FakeHfApi()
    with pytest.raises(HubPushError, match="OWNER/"):
        push_folder(export_dir, repo_id, api=api)
    with pytest.raises(HubPushError):
        push_folder(export_dir, repo_id, api=api, dry_run=True)
    assert api.calls == []


def test_connection_error_gives_network_hint(export_dir: Path) -> None:
    api = FakeHfApi(fail={"upload_folder": httpx2.ConnectError("[Errno 111] Connection refused")})
    with pytest.raises(HubPushError, match="Cannot reach the Hugging Face Hub") as info:
        push_folder(export_dir, REPO, api=api)
    assert "check the network" in str(info.value) and "--dry-run" in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_unreachable_endpoint_with_real_hfapi(
    export_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A real client against a closed local port (HF_ENDPOINT is read at import: pass endpoint=)."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest sets HF_HUB_OFFLINE=1
    monkeypatch.setenv("HF_TOKEN", SECRET)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(HubPushError, match="Cannot reach the Hugging Face Hub") as info:
        push_folder(export_dir, REPO, api=HfApi(endpoint="http://127.0.0.1:9"))
    assert "ConnectError" in str(info.value)
    output = capsys.readouterr()
    for text in (str(info.value), output.out, output.err, caplog.text):
        assert SECRET not in text


def test_offline_mode_with_real_hfapi(export_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubPushError, match="HF_HUB_OFFLINE .* unset it .* --dry-run"):
        push_folder(export_dir, REPO, api=HfApi(endpoint="http://127.0.0.1:9"))


@pytest.mark.parametrize(
    "error",
    [
        http_error(
            401, "401 Client Error: Unauthorized", "Invalid credentials in Authorization header"
        ),
        LocalTokenNotFoundError("Token is required, but no token found."),
    ],
)
def test_missing_or_invalid_token_gives_login_hint(export_dir: Path, error: Exception) -> None:
    api = FakeHfApi(fail={"create_repo": error})
    with pytest.raises(HubPushError, match="set HF_TOKEN .* run `hf auth login`"):
        push_folder(export_dir, REPO, api=api)
    assert api.names() == ["create_repo"]  # nothing uploaded after a failed step


def test_someone_elses_repo_is_explained(export_dir: Path) -> None:
    refused = http_error(
        403, server_message='You don\'t have the rights to create a model under the namespace "bob"'
    )
    api = FakeHfApi(fail={"upload_folder": refused})
    with pytest.raises(HubPushError) as info:
        push_folder(export_dir, "bob/model", api=api)
    message = str(info.value)
    assert "No write access to bob/model" in message and "belongs to someone else" in message
    assert "don't have the rights" in message and "hf auth login" in message


@pytest.mark.parametrize(
    "error",
    [
        http_error(401, f"401 Client Error for token {SECRET}"),
        http_error(403, server_message=f"token {SECRET} is read-only"),
        httpx2.ConnectError(f"proxy rejected Authorization: Bearer {SECRET}"),
        RuntimeError(f"xet upload failed with {SECRET}"),
        LocalTokenNotFoundError(f"bad token file: {SECRET}"),
    ],
)
def test_token_never_leaks(
    export_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    error: Exception,
) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    caplog.set_level(logging.DEBUG)
    dry = push_folder(export_dir, REPO, dry_run=True, api=FakeHfApi()).text
    with pytest.raises(HubPushError) as info:
        push_folder(export_dir, REPO, api=FakeHfApi(fail={"upload_folder": error}))
    assert info.value.__cause__ is None and info.value.__context__ is None
    output = capsys.readouterr()
    for text in (dry, str(info.value), repr(info.value), output.out, output.err, caplog.text):
        assert text is not None and SECRET not in text and "SECRET" not in text


def test_explicit_token_is_passed_on_and_scrubbed(export_dir: Path) -> None:
    token = "my-own-token-value"  # not hf_-shaped: scrubbed because it is the token in use
    api = FakeHfApi(fail={"upload_folder": RuntimeError(f"rejected {token}")})
    with pytest.raises(HubPushError) as info:
        push_folder(export_dir, REPO, api=api, token=token)
    assert all(kwargs["token"] == token for _, kwargs in api.calls)
    assert token not in str(info.value) and "***" in str(info.value)
