"""Image-text data: imagefolder and datasets sources, bad samples skipped and counted."""

from pathlib import Path

import pytest
import torch
from helpers import bad_folder, draw

from mmcontrast.config import DataConfig
from mmcontrast.data.image_text import ImageTextCollator, ImageTextDataset
from mmcontrast.data.pairs import load_pairs
from mmcontrast.data.transforms import ImagePreprocess, image_transform


def test_imagefolder_with_several_captions(shapes_dir: Path) -> None:
    table = load_pairs(DataConfig(path=str(shapes_dir)), "test")
    assert len(table) == 16
    assert table.captions(0) == ["a red circle", "the circle red"]
    assert Path(table.image(0)).is_file()


def test_bad_samples_are_skipped_and_counted(tmp_path: Path, tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    table = load_pairs(DataConfig(path=str(bad_folder(tmp_path))), "train")
    assert len(table) == 5 and table.skipped == {"empty caption": 1}
    dataset = ImageTextDataset(table, image_transform(ImagePreprocess(size=16)))
    samples = [dataset[i] for i in range(len(dataset))]
    assert [s.get("skip") for s in samples] == [
        None,
        None,
        "unreadable image",
        "unreadable image",
        "missing image file",
    ]
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    batch = ImageTextCollator(lambda c: dict(tok(c, padding=True, return_tensors="pt")))(samples)
    assert batch["pixel_values"].shape == (2, 3, 16, 16)
    assert batch["skipped"] == {"unreadable image": 2, "missing image file": 1}


def test_sample_randomness_depends_only_on_seed_epoch_index(shapes_dir: Path) -> None:
    cfg = DataConfig(
        path=str(shapes_dir), random_resized_crop=(0.3, 1.0), horizontal_flip=0.5, color_jitter=0.4
    )
    table = load_pairs(cfg, "train")
    dataset = ImageTextDataset(
        table, image_transform(ImagePreprocess(size=16), cfg, train=True), seed=3
    )
    first = dataset[5]["pixel_values"]
    torch.rand(10)  # global RNG activity must not matter
    assert torch.equal(dataset[5]["pixel_values"], first)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[5]["pixel_values"], first)


def test_missing_column_and_split_errors(shapes_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"column .caption. not found .*columns: file_name, text"):
        load_pairs(DataConfig(path=str(shapes_dir), caption_column="caption"), "train")
    with pytest.raises(ValueError, match="split 'validation'.*splits found: test, train"):
        load_pairs(DataConfig(path=str(shapes_dir)), "validation")
    with pytest.raises(ValueError, match="cannot load dataset"):
        load_pairs(DataConfig(path=str(shapes_dir / "nowhere")), "train")


def test_datasets_source_with_image_feature(tmp_path: Path) -> None:
    """A parquet ``datasets`` folder (Image feature with bytes, custom columns) loads by path."""
    import io

    import datasets

    def png(colour: str) -> bytes:
        buffer = io.BytesIO()
        draw(colour, "circle").save(buffer, format="PNG")
        return buffer.getvalue()

    features = datasets.Features({"img": datasets.Image(), "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(
        {
            "img": [{"bytes": png("red"), "path": None}, {"bytes": b"junk", "path": None}],
            "caption": ["red", "junk"],
        },
        features=features,
    )
    (tmp_path / "hub").mkdir()
    ds.to_parquet(str(tmp_path / "hub" / "train.parquet"))
    table = load_pairs(
        DataConfig(path=str(tmp_path / "hub"), image_column="img", caption_column="caption"),
        "train",
    )
    dataset = ImageTextDataset(table, image_transform(ImagePreprocess(size=16)))
    assert dataset[0]["pixel_values"].shape == (3, 16, 16) and dataset[0]["caption"] == "red"
    assert dataset[1] == {"skip": "unreadable image"}
