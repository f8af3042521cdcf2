"""CollectionImages: a row's image read back from a plain folder or an imagefolder, shrunk
to a thumbnail; rows not held, files gone and sources changed or gone are named clearly."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import draw
from PIL import Image

from mmcontrast.search import embed_collection, read_embeddings
from mmcontrast.search.collection_images import CollectionImages, ImageUnavailable


def embedded(model: Path, data: Path, output: Path, **options: Any) -> list[dict[str, Any]]:
    embed_collection(str(model), data, output, device="cpu", progress=False, **options)
    return read_embeddings(output).metadata.to_pylist()


def test_a_plain_folder(search_clip: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "birds").mkdir(parents=True)
    draw("red", "circle", size=300).save(photos / "a.png")
    draw("blue", "star", size=40).save(photos / "birds" / "b.jpg", quality=95)
    rows = embedded(search_clip, photos, tmp_path / "collection")
    images = CollectionImages(tmp_path / "collection", rows)
    by_key = {meta["image_path"]: meta["row"] for meta in rows}
    assert set(by_key) == {"a.png", "birds/b.jpg"}
    big = images.image(by_key["a.png"])
    assert big.mode == "RGB" and np.array_equal(
        np.asarray(big), np.asarray(draw("red", "circle", 300))
    )
    thumbnail = Image.open(io.BytesIO(images.thumbnail(by_key["a.png"])))
    assert thumbnail.format == "JPEG" and thumbnail.size == (256, 256)
    assert Image.open(io.BytesIO(images.thumbnail(by_key["birds/b.jpg"]))).size == (40, 40)
    with pytest.raises(ImageUnavailable, match=r"row 7 is not in .* \(2 images, rows 0 to 1\)"):
        images.image(7)
    (photos / "birds" / "b.jpg").unlink()
    with pytest.raises(
        ImageUnavailable, match=r"row 1 \(birds/b.jpg\) cannot be read .* moved or deleted"
    ):
        images.image(by_key["birds/b.jpg"])


def test_an_imagefolder_changed_or_gone(
    search_clip: Path, shapes_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "shapes"
    shutil.copytree(shapes_dir, source)
    output = tmp_path / "collection"
    rows = embedded(search_clip, source, output, split="train")
    meta = rows[4]
    image = CollectionImages(output, rows).image(meta["row"])
    assert np.array_equal(
        np.asarray(image),
        np.asarray(Image.open(source / "train" / meta["image_path"]).convert("RGB")),
    )

    metadata = source / "train" / "metadata.jsonl"
    lines = metadata.read_text().splitlines()
    metadata.write_text("\n".join(reversed(lines)) + "\n")  # same rows, another order
    with pytest.raises(ImageUnavailable, match=r"changed since .* embedded: its row 4 is '0000"):
        CollectionImages(output, rows).image(meta["row"])
    metadata.write_text("\n".join(lines[:10]) + "\n")
    with pytest.raises(ImageUnavailable, match="it has 10 rows now, 32 when it was embedded"):
        CollectionImages(output, rows).image(meta["row"])
    shutil.rmtree(source)
    with pytest.raises(
        ImageUnavailable, match="cannot be read back from .*shapes.*embed the collection again"
    ):
        CollectionImages(output, rows).image(meta["row"])


def test_a_folder_without_embeddings_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="holds no embeddings.json: embed a collection"):
        CollectionImages(tmp_path, [])
    (tmp_path / "embeddings.json").write_text(json.dumps({"nothing": 1}))
    with pytest.raises(ValueError, match="is not an embeddings manifest"):
        CollectionImages(tmp_path, [])


def shared_copy(output: Path, path: str, **data: Any) -> None:
    """Mark ``output`` as ``share-index`` leaves it: a ``shared`` entry, the data named by
    ``path`` only (no local folder), ``data`` changed."""
    manifest_path = output / "embeddings.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["data"] = {**manifest["data"], "path": path, **data}
    manifest["shared"] = {"model": "../..", "name": output.name}
    manifest_path.write_text(json.dumps(manifest))


def test_a_shared_collection_reads_only_the_images_it_is_given(
    search_clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = tmp_path / "data" / "photos"
    photos.mkdir(parents=True)
    draw("red", "circle").save(photos / "a.png")
    rows = embedded(search_clip, photos, tmp_path / "collection")
    shared_copy(tmp_path / "collection", "photos")
    elsewhere = tmp_path / "elsewhere"  # another "photos" where the server happens to run
    (elsewhere / "photos").mkdir(parents=True)
    draw("blue", "star").save(elsewhere / "photos" / "a.png")
    monkeypatch.chdir(elsewhere)
    with pytest.raises(
        ImageUnavailable, match=r"shared collection are not included: pass --images"
    ):
        CollectionImages(tmp_path / "collection", rows).image(0)
    given = CollectionImages(tmp_path / "collection", rows, images=photos).image(0)
    assert np.array_equal(np.asarray(given), np.asarray(draw("red", "circle")))
    with pytest.raises(ValueError, match=r"--images .*nowhere does not exist: pass the folder"):
        CollectionImages(tmp_path / "collection", rows, images=tmp_path / "nowhere")


def test_a_shared_dataset_name_is_never_opened(
    search_clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    draw("red", "circle").save(photos / "a.png")
    rows = embedded(search_clip, photos, tmp_path / "collection")
    shared_copy(tmp_path / "collection", "cifar10", kind="pairs", split="train")

    def no_download(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a shared collection's source was opened: {args}")

    monkeypatch.setattr("mmcontrast.search.collection_images.open_collection", no_download)
    monkeypatch.setattr("datasets.load_dataset", no_download)
    with pytest.raises(ImageUnavailable, match="not included: pass --images DIR"):
        CollectionImages(tmp_path / "collection", rows).thumbnail(0)


def test_keys_outside_the_folder_are_refused(search_clip: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    draw("red", "circle").save(photos / "a.png")
    draw("blue", "star").save(tmp_path / "secret.png")  # beside the folder, not in it
    embedded(search_clip, photos, tmp_path / "collection")
    hostile = [
        {"row": 0, "image_path": "../secret.png"},
        {"row": 1, "image_path": str(tmp_path / "secret.png")},
        {"row": 2, "image_path": "sub/../../secret.png"},
    ]
    images = CollectionImages(tmp_path / "collection", hostile)
    with pytest.raises(ImageUnavailable, match=r"row 0 \(\.\./secret.png\) is not inside"):
        images.image(0)
    with pytest.raises(ImageUnavailable, match="row 1 .* is an absolute path"):
        images.image(1)
    with pytest.raises(ImageUnavailable, match="row 2 .* is not inside"):
        images.image(2)
