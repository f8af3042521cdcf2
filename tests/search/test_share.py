"""Sharing an index with its model: ``share-index`` copies an indexed collection into the model
folder, ``push`` uploads it with the model, and :meth:`Searcher.from_pretrained` finds it in a
model folder, a moved copy of one, or a Hub repository (``snapshot_download`` replaced by a
local cache, no network)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pytest
from helpers import draw, save_clip, save_siglip
from huggingface_hub import constants
from huggingface_hub.errors import RepositoryNotFoundError
from PIL import Image

from mmcontrast.cli import main
from mmcontrast.eval.adapters import load_eval_model
from mmcontrast.hub import download
from mmcontrast.hub.push import push_folder
from mmcontrast.search import share
from mmcontrast.search.index import build_index
from mmcontrast.search.searcher import Hit, Searcher
from mmcontrast.search.share import add_collection
from mmcontrast.search.share_card import BEGIN, END

REPO = "alice/tiny-clip"
CARD = (
    "---\nlicense: apache-2.0\nlibrary_name: transformers\n---\n# tiny-clip\n\n## How to use\n\n"
    f'```python\nmodel = AutoModel.from_pretrained("{REPO}").eval()\n```\n'
)
QUERIES = ["a red circle", "a blue star", "the green square"]


def embed(model: Path, shapes_dir: Path, output: Path) -> Path:
    argv = ["embed", str(model), str(shapes_dir), "--output", str(output), "--split", "train"]
    assert main([*argv, "--batch-size", "8", "--device", "cpu", "--shard-size", "20"]) == 0
    return output


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path, shapes_dir: Path) -> Path:
    """A tiny CLIP export (weights, processor, card) with the shapes collection shared in it."""
    root = tmp_path_factory.mktemp("share")
    export = save_clip(root / "export", tokenizer_dir)
    (export / "README.md").write_text(CARD)
    collection = embed(export, shapes_dir, root / "shapes")
    assert main(["index", str(collection)]) == 0
    assert main(["share-index", str(collection), str(export)]) == 0
    return export


@pytest.fixture(scope="module")
def original(shared: Path) -> Searcher:
    return Searcher.from_pretrained(shared.parent / "shapes", device="cpu")


def answers(searcher: Searcher, shapes_dir: Path) -> list[list[Hit]]:
    image = shapes_dir / "train" / searcher.rows[5]["image_path"]
    return [*(searcher.search_text(q, k=6) for q in QUERIES), searcher.search_image(image, k=6)]


def test_the_shared_copy_holds_what_search_needs_and_no_local_path(shared: Path) -> None:
    folder = shared / "search" / "shapes"
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == [
        "embeddings.json",
        "img_emb/img_emb_0000.npy",
        "img_emb/img_emb_0001.npy",
        "index/index.faiss",
        "index/index.json",
        "metadata/metadata_0000.parquet",
        "metadata/metadata_0001.parquet",
        "text_emb/text_emb_0000.npy",
        "text_emb/text_emb_0001.npy",
    ]
    manifest = json.loads((folder / "embeddings.json").read_text())
    assert manifest["model"]["spec"] == "../.." and manifest["shared"]["model"] == "../.."
    assert manifest["data"]["path"] == Path(manifest["data"]["path"]).name  # no local path
    for name in ("embeddings.json", "index/index.json"):
        assert str(shared.parent) not in (folder / name).read_text()
    assert not [p for p in (shared / "search").iterdir() if p.name.startswith(".")]


def test_a_model_folder_searches_its_collection_like_the_original(
    shared: Path, original: Searcher, shapes_dir: Path
) -> None:
    searcher = Searcher.from_pretrained(shared, device="cpu")
    assert searcher.folder == shared / "search" / "shapes"
    assert Path(searcher.model.spec) == shared.resolve()
    assert answers(searcher, shapes_dir) == answers(original, shapes_dir)
    same = Searcher.from_pretrained(shared / "search" / "shapes", model=str(shared), device="cpu")
    assert same.search_text(QUERIES[0]) == original.search_text(QUERIES[0])


def test_a_moved_model_folder_searches_with_its_own_model(
    shared: Path, original: Searcher, shapes_dir: Path, tmp_path: Path, tokenizer_dir: Path
) -> None:
    moved = tmp_path / "elsewhere" / "model"
    shutil.copytree(shared, moved)
    searcher = Searcher.from_pretrained(moved, device="cpu")
    assert Path(searcher.model.spec) == moved.resolve()  # not the folder it was shared from
    assert answers(searcher, shapes_dir) == answers(original, shapes_dir)
    for other in (
        str(shared),
        load_eval_model(str(save_siglip(tmp_path / "s", tokenizer_dir)), "cpu"),
    ):
        with pytest.raises(ValueError, match="not comparable"):
            Searcher.from_pretrained(moved, model=other, device="cpu")
    lost = tmp_path / "lost"
    shutil.copytree(moved / "search" / "shapes", lost)
    with pytest.raises(ValueError, match="moved out of it"):
        Searcher.from_pretrained(lost, device="cpu")


def fake_hub_cache(export: Path, cache: Path) -> Path:
    """A snapshot laid out as huggingface_hub's cache: files are symlinks to blobs."""
    snapshot = cache / "models--alice--tiny-clip" / "snapshots" / "abc123"
    for path in sorted(p for p in export.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = cache / "models--alice--tiny-clip" / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path.relative_to(export)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def test_a_hub_repo_id_downloads_the_model_and_its_index(
    shared: Path,
    original: Searcher,
    shapes_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    snapshot = fake_hub_cache(shared, tmp_path / "cache")
    calls: list[tuple[str, dict[str, Any]]] = []

    def snapshot_download(repo_id: str, **kwargs: Any) -> str:
        calls.append((repo_id, kwargs))
        return str(snapshot)

    monkeypatch.setattr(download, "snapshot_download", snapshot_download)
    searcher = Searcher.from_pretrained(REPO, device="cpu")
    assert searcher.folder == snapshot / "search" / "shapes"
    assert Path(searcher.model.spec) == snapshot.resolve()
    assert answers(searcher, shapes_dir) == answers(original, shapes_dir)
    pinned = Searcher.from_pretrained(f"hf-hub:{REPO}", model=REPO, revision="v1", device="cpu")
    assert pinned.search_text(QUERIES[1]) == original.search_text(QUERIES[1])
    assert calls == [(REPO, {"revision": None}), (REPO, {"revision": "v1"})]
    capsys.readouterr()
    assert main(["search", REPO, QUERIES[2], "--json", "--device", "cpu", "-k", "3"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits == [hit.to_dict() for hit in original.search_text(QUERIES[2], k=3)]


def test_hub_failures_say_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tokenizer_dir: Path
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set and alice/none is not in the"):
        Searcher.from_pretrained("alice/none")  # the real snapshot_download, offline

    response = httpx2.Response(404, request=httpx2.Request("GET", "https://huggingface.co/api"))

    def missing(repo_id: str, **kwargs: Any) -> str:
        raise RepositoryNotFoundError("404 Client Error: Repository Not Found", response=response)

    monkeypatch.setattr(download, "snapshot_download", missing)
    with pytest.raises(ValueError, match="no model repository alice/none on the Hub") as info:
        Searcher.from_pretrained("alice/none")
    assert info.value.__cause__ is None and info.value.__context__ is None

    plain = save_clip(tmp_path / "plain", tokenizer_dir)  # a model repo without a collection
    monkeypatch.setattr(download, "snapshot_download", lambda repo_id, **kwargs: str(plain))
    with pytest.raises(ValueError, match="no collection in search/.*share-index"):
        Searcher.from_pretrained("alice/plain")
    with pytest.raises(ValueError, match="embed a collection into it first"):
        Searcher.from_pretrained(tmp_path / "nothing")  # a local path is never tried on the Hub


def test_push_uploads_the_index_with_the_model(shared: Path) -> None:
    plan = push_folder(shared, REPO, dry_run=True)
    paths = {f.path_in_repo for f in plan.files}
    local = {
        p.relative_to(shared).as_posix() for p in (shared / "search").rglob("*") if p.is_file()
    }
    assert len(local) == 9 and local <= paths
    assert "model.safetensors" in paths
    assert "## Search index" in (plan.text or "")


def test_the_card_describes_the_collection(shared: Path) -> None:
    card = (shared / "README.md").read_text()
    assert card.startswith(CARD.rstrip())  # the export's card is kept, front matter first
    section = card[card.index(BEGIN) : card.index(END)]
    assert "| `shapes` | 32 | yes | flat | 1.000 |" in section
    assert f'Searcher.from_pretrained("{REPO}")' in section  # the id the card's usage loads
    assert f'mmcontrast search {REPO} "a ' in section  # a caption of the collection


def test_several_collections_are_named(shared: Path, tmp_path: Path, shapes_dir: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(shared, model)
    copy = model / "search" / "shapes"
    add_collection(model, copy, "again", repo_id="bob/two")
    card = (model / "README.md").read_text()
    assert card.count(BEGIN) == 1 and "2 collections of images (64 in all)" in card
    assert 'Searcher.from_pretrained("bob/two", collection="again")' in card
    with pytest.raises(ValueError, match=r"holds 2 collections \(again, shapes\): name one"):
        Searcher.from_pretrained(model, device="cpu")
    with pytest.raises(ValueError, match="no collection 'other'"):
        Searcher.from_pretrained(model, collection="other", device="cpu")
    searcher = Searcher.from_pretrained(model, collection="again", device="cpu")
    assert searcher.folder == model / "search" / "again"
    add_collection(model, copy, "third")  # the section keeps the id it was given
    assert 'Searcher.from_pretrained("bob/two"' in (model / "README.md").read_text()


def test_refuses_incomplete_unindexed_stale_or_foreign_collections(
    shared: Path, tmp_path: Path, shapes_dir: Path, tokenizer_dir: Path
) -> None:
    source = shared.parent / "shapes"
    model = tmp_path / "model"
    shutil.copytree(shared, model, ignore=shutil.ignore_patterns("search"))

    unindexed = tmp_path / "unindexed"
    shutil.copytree(source, unindexed, ignore=shutil.ignore_patterns("index"))
    with pytest.raises(ValueError, match="not indexed yet: run `mmcontrast index"):
        add_collection(model, unindexed)

    unfinished = tmp_path / "unfinished"
    shutil.copytree(source, unfinished)
    (unfinished / "img_emb" / "img_emb_0001.npy").unlink()
    with pytest.raises(ValueError, match="unfinished"):
        add_collection(model, unfinished)

    stale = tmp_path / "stale"
    shutil.copytree(source, stale)
    images = Searcher.from_pretrained(source, device="cpu").index.reconstruct_n(0, 5)
    build_index(images, stale / "index")
    with pytest.raises(ValueError, match="indexes 5 rows but"):
        add_collection(model, stale)

    siglip = save_siglip(tmp_path / "siglip", tokenizer_dir)
    foreign = embed(siglip, shapes_dir, tmp_path / "foreign")
    assert main(["index", str(foreign)]) == 0
    with pytest.raises(ValueError, match="embedded with .*siglip, not .*model"):
        add_collection(model, foreign)
    swapped = tmp_path / "swapped"  # the right row count, another model's index
    shutil.copytree(source, swapped, ignore=shutil.ignore_patterns("index"))
    shutil.copytree(foreign / "index", swapped / "index")
    with pytest.raises(ValueError, match="built from other embeddings"):
        add_collection(model, swapped)

    with pytest.raises(ValueError, match="not a collection"):
        add_collection(model, tmp_path / "nothing")
    with pytest.raises(ValueError, match="not a plain folder name"):
        add_collection(model, source, "../up")
    with pytest.raises(ValueError, match="export the model first"):
        add_collection(tmp_path / "no-model", source)
    assert not (model / "search").exists() or not any((model / "search").iterdir())


def test_an_existing_collection_is_replaced_only_when_asked_and_never_half(
    shared: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = tmp_path / "model"
    shutil.copytree(shared, model)
    source = model / "search" / "shapes"  # embedded with this model, wherever it is
    add_collection(model, source, "copy")
    target = model / "search" / "copy"
    capsys.readouterr()
    assert main(["share-index", str(source), str(model), "--name", "copy"]) == 2
    assert "exists: pass --overwrite" in capsys.readouterr().err

    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    copied: list[str] = []
    real_copy = shutil.copyfile

    def fail_on_third(src: Any, dst: Any) -> Any:
        copied.append(str(src))
        if len(copied) == 3:
            raise OSError("disk full")
        return real_copy(src, dst)

    monkeypatch.setattr(share.shutil, "copyfile", fail_on_third)
    with pytest.raises(OSError, match="disk full"):
        add_collection(model, source, "copy", overwrite=True)
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in (model / "search").iterdir()) == ["copy", "shapes"]  # no tmp

    (target / "img_emb" / "img_emb_0000.npy").write_bytes(b"damaged")
    argv = ["share-index", str(source), str(model), "--name", "copy", "--overwrite"]
    assert main(argv) == 0
    assert "shared 32 images (flat index" in capsys.readouterr().out
    searcher = Searcher.from_pretrained(model, collection="copy", device="cpu")
    assert searcher.search_text(QUERIES[0]) == Searcher.from_pretrained(
        model, collection="shapes", device="cpu"
    ).search_text(QUERIES[0])
    assert (model / "README.md").read_text().count(BEGIN) == 1
    assert sorted(p.name for p in (model / "search").iterdir()) == ["copy", "shapes"]


def test_the_shared_copy_is_readable_as_the_umask_allows(shared: Path, tmp_path: Path) -> None:
    """mkdtemp makes its folder 0700: the copy would be hidden from a shared disk's users."""
    model = tmp_path / "model"
    shutil.copytree(shared, model)
    old = os.umask(0o022)
    try:
        copy = add_collection(model, model / "search" / "shapes", "open").folder
    finally:
        os.umask(old)
    modes = {p.relative_to(model).as_posix(): p.stat().st_mode & 0o777 for p in copy.rglob("*")}
    assert copy.stat().st_mode & 0o777 == 0o755
    assert modes["search/open/index"] == 0o755 and modes["search/open/embeddings.json"] == 0o644
    assert set(modes.values()) == {0o755, 0o644}, modes


def test_a_card_without_a_repo_id_names_a_placeholder_not_a_local_path(
    shared: Path, tmp_path: Path
) -> None:
    model = tmp_path / "my-clip"
    shutil.copytree(shared, model, ignore=shutil.ignore_patterns("README.md"))
    source = model / "search" / "shapes"
    add_collection(model, source, "first")
    card = (model / "README.md").read_text()
    assert str(tmp_path) not in card  # the card is pushed: no path of this machine
    assert 'Searcher.from_pretrained("OWNER/my-clip"' in card
    assert "`OWNER/my-clip` above stands for this repository's Hub id: replace it" in card
    add_collection(model, source, "again")  # still no id: still the note
    assert "stands for this repository's Hub id" in (model / "README.md").read_text()
    add_collection(model, source, "third", repo_id="carol/my-clip")
    card = (model / "README.md").read_text()
    assert 'Searcher.from_pretrained("carol/my-clip"' in card and "OWNER/" not in card


def test_serving_a_shared_collection_shows_only_the_images_it_is_given(
    shared: Path, shapes_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shared manifest names its data by its last component only: a folder of that name
    where the server runs is someone else's pictures, not the collection's."""
    from mmcontrast.search.serve_app import Problem, SearchApp

    searcher = Searcher.from_pretrained(shared, device="cpu")
    manifest = json.loads((searcher.folder / "embeddings.json").read_text())
    impostor = tmp_path / manifest["data"]["path"]
    shutil.copytree(shapes_dir, impostor)
    for image in (impostor / "train").glob("*.png"):  # same names, other pictures
        draw("yellow", "triangle").save(image)
    monkeypatch.chdir(tmp_path)
    app = SearchApp(searcher, k=3)
    with pytest.raises(Problem, match="shared collection are not included: pass --images DIR"):
        app.thumbnail(searcher.rows[0]["row"])
    given = SearchApp(searcher, k=3, images=shapes_dir)
    row = searcher.rows[5]
    thumbnail = Image.open(io.BytesIO(given.thumbnail(row["row"]))).convert("RGB")
    original = Image.open(shapes_dir / "train" / row["image_path"]).convert("RGB")
    assert np.abs(np.asarray(thumbnail, float) - np.asarray(original, float)).mean() < 8


def test_serve_images_must_exist(
    shared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", str(shared), "--port", "0", "--device", "cpu"]
    assert main([*argv, "--images", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nowhere does not exist: pass the folder of images" in err and "Traceback" not in err
