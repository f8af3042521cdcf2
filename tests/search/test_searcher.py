"""embed -> index -> search through the command line and :class:`Searcher`: the nearest
images of a text or an image agree with exact cosine search, and bad queries are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import save_clip, save_siglip

from mmcontrast.cli import main
from mmcontrast.eval.adapters import load_eval_model
from mmcontrast.search import embed_store, read_embeddings
from mmcontrast.search.searcher import Searcher


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path, shapes_dir: Path) -> Path:
    """The shapes' train split embedded with a tiny CLIP and indexed, through the CLI."""
    root = tmp_path_factory.mktemp("collection")
    clip = save_clip(root / "clip", tokenizer_dir)
    folder = root / "shapes"
    argv = ["embed", str(clip), str(shapes_dir), "--output", str(folder), "--split", "train"]
    assert main([*argv, "--batch-size", "8", "--device", "cpu"]) == 0
    assert main(["index", str(folder)]) == 0
    return folder


def exact_top(folder: Path, query: np.ndarray, k: int) -> list[str]:
    images, _, metadata, _ = read_embeddings(folder)
    scores = np.asarray(images) @ (query / np.linalg.norm(query))
    order = np.argsort(-scores, kind="stable")[:k]
    return [metadata["image_path"].to_pylist()[i] for i in order]


def test_text_search_finds_the_exact_nearest(
    collection: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["search", str(collection), "a red circle", "-k", "5", "--json", "--device", "cpu"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert [hit["rank"] for hit in hits] == [1, 2, 3, 4, 5]
    scores = [hit["score"] for hit in hits]
    assert scores == sorted(scores, reverse=True)
    model = load_eval_model(read_embeddings(collection).manifest["model"]["spec"], "cpu")
    query = model.encode_texts(["a red circle"]).float().numpy()[0]
    assert {hit["image_path"] for hit in hits} == set(exact_top(collection, query, 5))
    assert all(hit["caption"].startswith("a ") for hit in hits)


def test_image_search_finds_the_image_itself(collection: Path, shapes_dir: Path) -> None:
    searcher = Searcher.from_pretrained(collection, device="cpu")
    name = read_embeddings(collection).metadata["image_path"].to_pylist()[3]
    hits = searcher.search_image(shapes_dir / "train" / name, k=3)
    assert hits[0].score == pytest.approx(1.0, rel=1e-4)
    same = {h.image_path for h in hits if h.score > 1 - 1e-4}  # identical drawings tie
    assert name in same


def test_table_output(collection: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["search", str(collection), "a blue star", "-k", "2", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "score", "image", "caption"] and len(lines) == 3


def test_bad_queries_are_refused(
    collection: Path, tmp_path: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    searcher = Searcher.from_pretrained(collection, device="cpu")
    with pytest.raises(ValueError, match="cannot search with this image"):
        searcher.search_image(broken)
    other = load_eval_model(str(save_siglip(tmp_path / "siglip", tokenizer_dir)), "cpu")
    with pytest.raises(ValueError, match="not comparable"):
        Searcher.from_pretrained(collection, model=other)
    capsys.readouterr()
    assert main(["search", str(collection)]) == 2  # neither a text nor an image
    assert "give a text query or --image" in capsys.readouterr().err


def test_a_stale_or_missing_index_is_refused(collection: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(collection, copy)
    shutil.rmtree(copy / "index")
    with pytest.raises((ValueError, FileNotFoundError), match="index"):
        Searcher.from_pretrained(copy, device="cpu")
    with pytest.raises(ValueError, match="embed a collection"):
        Searcher.from_pretrained(tmp_path / "nothing", device="cpu")


def test_an_index_of_other_embeddings_is_refused(
    collection: Path, tmp_path: Path, shapes_dir: Path
) -> None:
    # the same images and model in two shards: as many rows, other embeddings
    spec = read_embeddings(collection).manifest["model"]["spec"]
    other = tmp_path / "other"
    argv = ["embed", spec, str(shapes_dir), "--output", str(other), "--split", "train"]
    assert main([*argv, "--shard-size", "16", "--device", "cpu"]) == 0
    shutil.copytree(collection / "index", other / "index")
    with pytest.raises(ValueError, match=rf"{other}/index was built from other embeddings "
                       rf"\(model .*\): rebuild it \(mmcontrast index {other}\)"):
        Searcher.from_pretrained(other, device="cpu")
    assert main(["index", str(other)]) == 0
    Searcher.from_pretrained(other, device="cpu")  # rebuilt: accepted

    index_manifest = other / "index" / "index.json"  # an index recorded for another model
    info = json.loads(index_manifest.read_text())
    info["metadata"]["model"]["spec"] = "other-clip"
    index_manifest.write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"built from other embeddings \(model other-clip\)"):
        Searcher.from_pretrained(other, device="cpu")


def test_empty_queries_and_k_below_one_are_refused(
    collection: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    searcher = Searcher.from_pretrained(collection, device="cpu")
    for query in ("", "   \n"):
        with pytest.raises(ValueError, match="is empty: give some words"):
            searcher.search_text(query)
    with pytest.raises(ValueError, match="k must be a whole number of at least 1"):
        searcher.search_text("a red circle", k=0)
    monkeypatch.setattr(Searcher, "from_pretrained", None)  # refused before loading anything
    capsys.readouterr()
    assert main(["search", str(collection), "  "]) == 2
    assert "is empty: give some words" in capsys.readouterr().err
    for k in ("0", "-3", "two"):
        with pytest.raises(SystemExit) as exit_:
            main(["search", str(collection), "a red circle", "-k", k])
        assert exit_.value.code == 2 and "argument -k" in capsys.readouterr().err


def test_another_model_is_refused_without_naming_an_option_search_lacks(
    collection: Path, tmp_path: Path, tokenizer_dir: Path
) -> None:
    other = load_eval_model(str(save_siglip(tmp_path / "siglip", tokenizer_dir)), "cpu")
    with pytest.raises(ValueError, match="query it with the model it was embedded with") as info:
        Searcher.from_pretrained(collection, model=other)
    assert "--model" not in str(info.value)


def test_loading_and_indexing_read_only_what_they_need(
    collection: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[str] = []
    concatenate = embed_store._concatenate

    def spy(paths: list[Path]) -> object:
        read.extend(path.parent.name for path in paths)
        return concatenate(paths)

    monkeypatch.setattr(embed_store, "_concatenate", spy)
    Searcher.from_pretrained(collection, device="cpu")
    assert read == []  # the searcher reads the metadata only
    copy = shutil.copytree(collection, tmp_path / "copy")
    assert main(["index", str(copy)]) == 0
    assert read == ["img_emb"]  # the index, the images only


def test_a_damaged_collection_is_named_on_the_command_line(
    collection: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = shutil.copytree(collection, tmp_path / "copy")
    manifest = json.loads((copy / "embeddings.json").read_text())
    manifest["model"] = "x"
    (copy / "embeddings.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["search", str(copy), "a red circle", "--device", "cpu"]) == 2
    assert "is not a valid embeddings manifest" in capsys.readouterr().err
    shutil.rmtree(copy)
    copy = shutil.copytree(collection, tmp_path / "copy")
    image = copy / "img_emb" / "img_emb_0000.npy"
    image.write_bytes(image.read_bytes()[:200])
    assert main(["index", str(copy)]) == 2
    err = capsys.readouterr().err
    assert "img_emb_0000.npy cannot be read" in err and "rerun the same `mmcontrast embed`" in err


def test_a_moved_model_folder_is_named_and_found_again_with_model(
    collection: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A collection records its model's absolute path: once the folder moves, search says so
    and takes the new place from --model (model= in Python)."""
    clip = collection.parent / "clip"
    before = Searcher.from_pretrained(collection).search_text("a red circle", k=5)
    moved = tmp_path / "moved-clip"
    shutil.move(clip, moved)
    try:
        assert main(["search", str(collection), "a red circle", "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert "is no longer there" in err and "--model DIR" in err and "share-index" in err
        argv = ["search", str(collection), "a red circle", "-k", "5", "--json"]
        assert main([*argv, "--model", str(moved), "--device", "cpu"]) == 0
        hits = json.loads(capsys.readouterr().out)
        assert [h["image_path"] for h in hits] == [h.image_path for h in before]
    finally:
        shutil.move(moved, clip)
    with pytest.raises(SystemExit):  # checked before the model loads
        main(["serve", str(collection), "-k", "0"])
    assert "must be at least 1, got 0" in capsys.readouterr().err
