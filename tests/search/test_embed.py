"""embed_collection: clip-retrieval's layout, embeddings equal to the model's own, resumable
shard by shard, refusals, plain folders, bad images, empty data."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import draw, save_clip

from mmcontrast.cli import main
from mmcontrast.data.images import load_image
from mmcontrast.eval.adapters import EvalModel, load_eval_model
from mmcontrast.search import embed_collection, read_embeddings
from mmcontrast.search.embed_store import EmbeddingStore, read_metadata


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return save_clip(tmp_path_factory.mktemp("clip"), tokenizer_dir)


@pytest.fixture(scope="module")
def model(clip_dir: Path) -> EvalModel:
    return load_eval_model(str(clip_dir), "cpu")


def reference_images(model: EvalModel, paths: list[Path]) -> torch.Tensor:
    """The model's own normalised embeddings of ``paths``, one image at a time."""
    transform = model.image_transform()
    rows = [model.encode_images(transform(load_image(str(p)))[None]).float() for p in paths]
    return F.normalize(torch.cat(rows), dim=-1)


def count_encoded(model: EvalModel, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the batch size of every ``encode_images`` call from now on."""
    sizes: list[int] = []
    original = model.encode_images

    def encode(pixels: torch.Tensor) -> torch.Tensor:
        sizes.append(len(pixels))
        return original(pixels)

    monkeypatch.setattr(model, "encode_images", encode)
    return sizes


def shard_files(output: Path) -> list[str]:
    return sorted(
        str(p.relative_to(output)) for p in output.rglob("*") if p.is_file() and p.parent != output
    )


def test_imagefolder_split(
    model: EvalModel, shapes_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = embed_collection(model, shapes_dir, tmp_path / "out", split="train", batch_size=5)
    assert (summary.count, summary.dim, summary.shards, summary.skipped) == (32, 16, 1, {})
    printed = capsys.readouterr().err  # no terminal here: a plain line per shard
    assert "shard 1/1: 32 images (0 skipped)" in printed and "images/s" in printed
    assert shard_files(tmp_path / "out") == [
        "img_emb/img_emb_0000.npy",
        "metadata/metadata_0000.parquet",
        "text_emb/text_emb_0000.npy",
    ]
    images, texts, metadata, manifest = read_embeddings(tmp_path / "out")
    assert images.dtype == np.float32 and images.shape == (32, 16)
    assert texts is not None and texts.shape == (32, 16)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, rtol=1e-5)
    assert metadata.column_names == ["image_path", "caption", "row"]
    assert metadata["row"].to_pylist() == list(range(32))
    captions = {
        row["file_name"]: row["text"]
        for row in map(json.loads, (shapes_dir / "train/metadata.jsonl").read_text().splitlines())
    }
    names = metadata["image_path"].to_pylist()
    assert metadata["caption"].to_pylist() == [captions[name] for name in names]
    expected = reference_images(model, [shapes_dir / "train" / name for name in names])
    torch.testing.assert_close(torch.from_numpy(np.array(images)), expected, rtol=1e-4, atol=1e-5)
    expected_texts = F.normalize(model.encode_texts(list(captions.values())).float(), dim=-1)
    order = [list(captions).index(name) for name in names]
    torch.testing.assert_close(
        torch.from_numpy(np.array(texts)), expected_texts[order], rtol=1e-4, atol=1e-5
    )
    assert manifest["normalised"] is True and manifest["dtype"] == "float32"
    assert manifest["count"] == 32 and manifest["complete"] is True
    assert [entry["count"] for entry in manifest["shards"]] == [32]
    assert manifest["model"]["spec"] == model.spec and manifest["data"]["split"] == "train"


def test_shards_and_resume(
    model: EvalModel, shapes_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options: dict[str, Any] = {"batch_size": 4, "shard_size": 10, "progress": False}
    clean = embed_collection(model, shapes_dir, tmp_path / "clean", **options)
    assert (clean.count, clean.shards) == (32, 4)
    reference = read_embeddings(tmp_path / "clean")
    assert [entry["count"] for entry in reference.manifest["shards"]] == [10, 10, 10, 2]

    # interrupted in the middle of the third shard: two shards done, nothing of the third
    sizes = count_encoded(model, monkeypatch)
    original = model.encode_images

    def fail_in_third_shard(pixels: torch.Tensor) -> torch.Tensor:
        if len(sizes) == 6:  # batches 0-2 and 3-5 made shards 0 and 1: fail in shard 2
            raise KeyboardInterrupt
        return original(pixels)

    monkeypatch.setattr(model, "encode_images", fail_in_third_shard)
    with pytest.raises(KeyboardInterrupt):
        embed_collection(model, shapes_dir, tmp_path / "resumed", **options)
    manifest = json.loads((tmp_path / "resumed/embeddings.json").read_text())
    assert [entry["index"] for entry in manifest["shards"]] == [0, 1]
    assert manifest["complete"] is False and manifest["count"] == 20
    assert shard_files(tmp_path / "resumed") == sorted(
        f"{kind}/{kind}_{i:04d}.{ext}"
        for i in (0, 1)
        for kind, ext in (("img_emb", "npy"), ("text_emb", "npy"), ("metadata", "parquet"))
    )
    with pytest.raises(ValueError, match="unfinished"):
        read_embeddings(tmp_path / "resumed")

    # a stray temporary file and an unrecorded shard file are cleared; shards 0 and 1 are kept
    (tmp_path / "resumed/img_emb/img_emb_0002.npy.tmp").write_bytes(b"half")
    (tmp_path / "resumed/img_emb/img_emb_0003.npy").write_bytes(b"not listed")
    monkeypatch.setattr(model, "encode_images", original)
    sizes = count_encoded(model, monkeypatch)
    resumed = embed_collection(model, shapes_dir, tmp_path / "resumed", **options)
    assert sum(sizes) == 12 and resumed.computed_shards == 2
    assert (resumed.count, resumed.shards) == (32, 4)
    assert shard_files(tmp_path / "resumed") == shard_files(tmp_path / "clean")
    again = read_embeddings(tmp_path / "resumed")
    np.testing.assert_array_equal(again.images, reference.images)
    np.testing.assert_array_equal(again.texts, reference.texts)
    assert again.metadata.equals(reference.metadata)

    # the last shard's files lost: only it is embedded again
    (tmp_path / "resumed/img_emb/img_emb_0003.npy").unlink()
    sizes.clear()
    embed_collection(model, shapes_dir, tmp_path / "resumed", **options)
    assert sizes == [2]
    np.testing.assert_array_equal(read_embeddings(tmp_path / "resumed").images, reference.images)

    # everything done: nothing is embedded
    sizes.clear()
    assert embed_collection(model, shapes_dir, tmp_path / "resumed", **options).count == 32
    assert sizes == []


def test_refuses_other_model_data_or_shard_size(
    clip_dir: Path, shapes_dir: Path, tmp_path: Path, model: EvalModel
) -> None:
    output = tmp_path / "out"
    embed_collection(str(clip_dir), shapes_dir, output, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"different shard size .*--output"):
        embed_collection(str(clip_dir), shapes_dir, output, shard_size=8, progress=False)
    other = shutil.copytree(clip_dir, tmp_path / "other-clip")
    with pytest.raises(ValueError, match=r"different model \(model: .*other-clip"):
        embed_collection(str(other), shapes_dir, output, progress=False)
    with pytest.raises(ValueError, match=r"different data \(data: .*\"test\""):
        embed_collection(str(clip_dir), shapes_dir, output, split="test", progress=False)


def test_plain_folder_of_images(
    model: EvalModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "photos"
    (folder / "b").mkdir(parents=True)
    draw("red", "circle").save(folder / "z.png")
    draw("blue", "star").save(folder / "b" / "a.jpg")
    draw("green", "square").save(folder / "b" / "c.PNG")
    (folder / "notes.txt").write_text("not an image")
    summary = embed_collection(model, folder, tmp_path / "out", progress=False)
    assert summary.count == 3
    images, texts, metadata, manifest = read_embeddings(tmp_path / "out")
    assert texts is None and not (tmp_path / "out/text_emb").exists()
    assert metadata.column_names == ["image_path", "row"]
    names = metadata["image_path"].to_pylist()
    assert names == ["b/a.jpg", "b/c.PNG", "z.png"]
    expected = reference_images(model, [folder / name for name in names])
    torch.testing.assert_close(torch.from_numpy(np.array(images)), expected, rtol=1e-4, atol=1e-5)
    assert manifest["data"]["kind"] == "folder" and manifest["text_emb"] is False

    # the same number of files, one of them another: other data, not a finished collection
    (folder / "z.png").unlink()
    draw("green", "star").save(folder / "y.png")
    with pytest.raises(ValueError, match=r"different data .*--output"):
        embed_collection(model, folder, tmp_path / "out", progress=False)

    # a manifest from before the file digest cannot tell: resumed, with a warning
    path = tmp_path / "out" / "embeddings.json"
    old = json.loads(path.read_text())
    del old["data"]["files"]
    path.write_text(json.dumps(old))
    with caplog.at_level(logging.WARNING, logger="mmcontrast"):
        assert embed_collection(model, folder, tmp_path / "out", progress=False).count == 3
    assert any("does not record its data's files" in r.getMessage() for r in caplog.records)


def test_metadata_without_captions(model: EvalModel, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        draw("red", "star").save(folder / name)
    lines = [json.dumps({"file_name": name, "label": 1}) for name in ("a.png", "b.png")]
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    summary = embed_collection(model, folder, tmp_path / "out", progress=False)
    assert summary.count == 2
    _, texts, metadata, _ = read_embeddings(tmp_path / "out")
    assert texts is None and metadata["image_path"].to_pylist() == ["a.png", "b.png"]
    # an edited metadata file with as many rows is other data
    (folder / "metadata.jsonl").write_text("\n".join(reversed(lines)) + "\n")
    with pytest.raises(ValueError, match=r"different data"):
        embed_collection(model, folder, tmp_path / "out", progress=False)


def test_unreadable_image_skipped_and_named(
    model: EvalModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, colour in enumerate(("red", "green", "blue")):
        draw(colour, "circle").save(folder / f"{i}.png")
    (folder / "1b.png").write_bytes(b"not a png at all")
    with caplog.at_level(logging.WARNING, logger="mmcontrast"):
        summary = embed_collection(model, folder, tmp_path / "out", progress=False)
    assert summary.count == 3 and summary.skipped == {"unreadable image": 1}
    assert "1b.png (unreadable image)" in caplog.text
    images, _, metadata, manifest = read_embeddings(tmp_path / "out")
    assert metadata["image_path"].to_pylist() == ["0.png", "1.png", "2.png"]
    assert metadata["row"].to_pylist() == [0, 1, 3]
    expected = reference_images(model, [folder / "0.png", folder / "1.png", folder / "2.png"])
    torch.testing.assert_close(torch.from_numpy(np.array(images)), expected, rtol=1e-4, atol=1e-5)
    assert manifest["skipped"] == {"unreadable image": 1}
    assert manifest["shards"][0]["skipped_rows"] == [["unreadable image", "row 2", "1b.png"]]


def test_empty_or_unknown_data(model: EvalModel, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images in"):
        embed_collection(model, tmp_path / "empty", tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="no such folder"):
        embed_collection(model, tmp_path / "missing", tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="shard_size must be"):
        embed_collection(model, tmp_path / "empty", tmp_path / "out", shard_size=0)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ damaged folders


@pytest.fixture(scope="module")
def embedded(model: EvalModel, shapes_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shapes' train split in two shards (16 rows each), with captions."""
    output = tmp_path_factory.mktemp("embedded") / "out"
    embed_collection(model, shapes_dir, output, split="train", shard_size=16, progress=False)
    return output


def edited_manifest(embedded: Path, tmp_path: Path, edit: Any) -> Path:
    """A copy of ``embedded`` whose manifest ``edit`` changed in place."""
    copy = shutil.copytree(embedded, tmp_path / "copy")
    manifest = json.loads((copy / "embeddings.json").read_text())
    edit(manifest)
    (copy / "embeddings.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize(
    ("edit", "what"),
    [
        (lambda m: m.update(model="x"), '"model" is not an object'),
        (lambda m: m["model"].update(spec=3), '"model" is not an object with a "spec"'),
        (lambda m: m.update(shards=None), '"shards" is not a list'),
        (lambda m: m.update(shards=["a"]), r'"shards"\[0\] is not an object'),
        (lambda m: m["shards"][1].update(index="a"), r'"shards"\[1\] has no integer "index"'),
        (lambda m: m["shards"][0].update(count=None), r'"shards"\[0\] has no integer'),
        (lambda m: m["shards"][0].update(rows=[0]), r'"shards"\[0\] has no "rows"'),
        (lambda m: m["shards"][1].update(index=0), r"\"shards\"\[1\] repeats shard 0"),
        (lambda m: m.update(num_shards="2"), '"num_shards" is not'),
        (lambda m: m.update(dim="16"), '"dim" is neither'),
        (lambda m: m.update(shard_size=0), '"shard_size" is not a positive'),
        (lambda m: m.update(text_emb="yes"), '"text_emb" is not true or false'),
    ],
)
def test_a_hand_edited_manifest_is_refused_by_what_is_wrong(
    embedded: Path, tmp_path: Path, edit: Any, what: str
) -> None:
    copy = edited_manifest(embedded, tmp_path, edit)
    message = rf"embeddings.json is not a valid embeddings manifest \({what}.*\): embed again"
    with pytest.raises(ValueError, match=message):
        read_embeddings(copy)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda out: truncate(out / "img_emb/img_emb_0001.npy"), "img_emb_0001.npy cannot be read"),
        (
            lambda out: truncate(out / "metadata/metadata_0001.parquet"),
            "metadata_0001.parquet cannot",
        ),
        (lambda out: (out / "text_emb/text_emb_0001.npy").unlink(), "text_emb_0001.npy is missing"),
        (
            lambda out: np.save(out / "img_emb/img_emb_0001.npy", np.zeros((3, 16), np.float32)),
            "img_emb_0001.npy holds 3 rows, not the 16",
        ),
    ],
)
def test_a_damaged_shard_is_named_and_embedding_again_recomputes_it(
    model: EvalModel, shapes_dir: Path, embedded: Path, tmp_path: Path, damage: Any, said: str
) -> None:
    copy = shutil.copytree(embedded, tmp_path / "copy")
    damage(copy)
    message = rf"shard 1 of .*copy is damaged: .*{said}.*rerun the same `mmcontrast embed`"
    with pytest.raises(ValueError, match=message):
        read_embeddings(copy)
    summary = embed_collection(
        model, shapes_dir, copy, split="train", shard_size=16, progress=False
    )
    assert summary.computed_shards == 1 and summary.count == 32
    again, reference = read_embeddings(copy), read_embeddings(embedded)
    np.testing.assert_allclose(again.images, reference.images, rtol=1e-5, atol=1e-6)
    assert again.metadata.equals(reference.metadata)


def test_reading_without_texts_leaves_them_unread(embedded: Path) -> None:
    images, texts, metadata, _ = read_embeddings(embedded, texts=False)
    assert texts is None and images.shape == (32, 16) and len(metadata) == 32
    rows, manifest = read_metadata(embedded)
    assert rows.equals(metadata) and manifest["count"] == 32


def test_no_readable_image_leaves_nothing_behind(
    model: EvalModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="no readable images in .*nothing was written"):
        embed_collection(model, folder, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    (tmp_path / "kept").mkdir()  # a folder that was there before is kept, emptied
    (tmp_path / "kept/notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="no readable images"):
        embed_collection(model, folder, tmp_path / "kept", progress=False)
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["notes.txt"]


def test_index_of_a_collection_without_images_says_so(
    clip_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not a png at all")
    monkeypatch.setattr(EmbeddingStore, "remove", lambda self, remove_root: None)  # as before
    with pytest.raises(ValueError, match="no readable images"):
        embed_collection(str(clip_dir), folder, tmp_path / "out", device="cpu", progress=False)
    capsys.readouterr()
    assert main(["index", str(tmp_path / "out")]) == 2
    assert f"{tmp_path / 'out'} holds no embedded images" in capsys.readouterr().err


def test_a_new_collection_removes_an_index_left_in_its_folder(
    model: EvalModel, shapes_dir: Path, embedded: Path, tmp_path: Path
) -> None:
    copy = shutil.copytree(embedded, tmp_path / "copy")
    (copy / "index").mkdir()
    for name in ("index.faiss", "index.json"):
        (copy / "index" / name).write_text("an index")
    options: dict[str, Any] = {"split": "train", "shard_size": 16, "progress": False}
    embed_collection(model, shapes_dir, copy, **options)  # resumed: the index is kept
    assert (copy / "index/index.json").is_file()
    (copy / "embeddings.json").unlink()  # a new collection in the same folder
    embed_collection(model, shapes_dir, copy, **options)
    assert not (copy / "index").exists()
