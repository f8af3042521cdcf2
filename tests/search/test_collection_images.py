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
