"""Bad data skipped, counted once per row and named, or refused with the file and line."""

from __future__ import annotations

import doctest
import io
import json
import logging
import os
import pickle
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from accelerate.utils import send_to_device
from helpers import bad_folder, draw
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data._utils.pin_memory import pin_memory

from mmcontrast.config import DataConfig
from mmcontrast.data import images, skips
from mmcontrast.data.image_text import ImageTextCollator, ImageTextDataset, image_batches
from mmcontrast.data.images import (
    MAX_IMAGE_PIXELS_ENV,
    BadSample,
    load_image,
    max_image_pixels,
    set_max_image_pixels,
)
from mmcontrast.data.labelled import load_labelled
from mmcontrast.data.metadata import MetadataError
from mmcontrast.data.pairs import caption_problem, load_pairs
from mmcontrast.data.skips import SkippedRows, SkipReason, Skips, skip_sample
from mmcontrast.data.streaming import StreamedPairs
from mmcontrast.data.transforms import ImagePreprocess, image_transform
from mmcontrast.data.views import MultiViewCollator, MultiViewDataset
from mmcontrast.data.webdataset import _encoded_image
from mmcontrast.eval.data import emoji_class_names

TRANSFORM = image_transform(ImagePreprocess(size=8))


@pytest.fixture()
def pixel_limit() -> Iterator[None]:
    """Restore the pixel limit, Pillow's and the environment variable after the test."""
    saved = (max_image_pixels(), Image.MAX_IMAGE_PIXELS, os.environ.get(MAX_IMAGE_PIXELS_ENV))
    yield
    images._max_pixels, Image.MAX_IMAGE_PIXELS = saved[0], saved[1]
    if saved[2] is None:
        os.environ.pop(MAX_IMAGE_PIXELS_ENV, None)
    else:
        os.environ[MAX_IMAGE_PIXELS_ENV] = saved[2]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_rows(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    metadata = folder / "metadata.jsonl"
    metadata.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return metadata


# ------------------------------------------------------------------ images too large


def test_images_over_the_pixel_limit_are_bad_samples(pixel_limit: None) -> None:
    assert max_image_pixels() == images.DEFAULT_MAX_IMAGE_PIXELS
    set_max_image_pixels(100)
    assert Image.MAX_IMAGE_PIXELS == 100 and os.environ[MAX_IMAGE_PIXELS_ENV] == "100"
    assert load_image(png(Image.new("RGB", (10, 10)))).size == (10, 10)  # at the limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing printed between the limit and twice it
        for size in [(15, 10), (40, 40)]:  # Pillow warns for the first, refuses the second
            for _ in range(2):  # the second time too: Pillow's warning registry is not used
                with pytest.raises(BadSample) as bad:
                    load_image(png(Image.new("RGB", size)))
                assert bad.value.reason == "image too large"
    with pytest.raises(BadSample, match="image too large"):
        load_image(Image.new("RGB", (11, 10)))  # an image already decoded


def test_no_pixel_limit_and_pillows_own(pixel_limit: None) -> None:
    set_max_image_pixels(None)
    assert Image.MAX_IMAGE_PIXELS is None and os.environ[MAX_IMAGE_PIXELS_ENV] == "none"
    assert load_image(png(Image.new("RGB", (300, 200)))).size == (300, 200)
    Image.MAX_IMAGE_PIXELS = 1000  # stricter, set by someone else: still a bad sample
    with pytest.raises(BadSample) as bad:
        load_image(png(Image.new("RGB", (100, 100))))
    assert bad.value.reason == "image too large"


@pytest.mark.parametrize("limit", [0, -5, 1.5, True, "100"])
def test_pixel_limit_must_be_a_positive_integer(limit: object, pixel_limit: None) -> None:
    with pytest.raises(ValueError, match="positive integer or null"):
        set_max_image_pixels(limit)  # type: ignore[arg-type]


def test_pixel_limit_reaches_worker_processes(tmp_path: Path, pixel_limit: None) -> None:
    set_max_image_pixels(100)
    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("RGB", (20, 20)).save(folder / "big.png")
    Image.new("RGB", (5, 5)).save(folder / "small.png")
    write_rows(
        folder, [{"file_name": "big.png", "text": "a"}, {"file_name": "small.png", "text": "b"}]
    )
    table = load_pairs(DataConfig(path=str(folder)), "train")
    found = list(image_batches(table, TRANSFORM, batch_size=2, num_workers=1))  # forked
    assert found[0][0] == [1] and found[0][2] == {0: "image too large"}
    spawned = subprocess.run(  # a spawned worker reads the limit from the environment
        [
            sys.executable,
            "-c",
            "from mmcontrast.data import images; print(images.max_image_pixels())",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert spawned.stdout.strip() == "100"
    os.environ[MAX_IMAGE_PIXELS_ENV] = "lots"
    refused = subprocess.run(
        [sys.executable, "-c", "import mmcontrast.data.images"], text=True, capture_output=True
    )
    assert (
        refused.returncode != 0 and "give a positive number of pixels or 'none'" in refused.stderr
    )


def test_webdataset_writer_skips_decompression_bombs(pixel_limit: None) -> None:
    set_max_image_pixels(10)
    with pytest.raises(BadSample) as bad:
        _encoded_image(png(Image.new("RGB", (30, 30))), None)
    assert bad.value.reason == "image too large"


# ------------------------------------------------------------------ pixel formats


def test_16_bit_greyscale_png_stays_grey(tmp_path: Path) -> None:
    path = tmp_path / "grey16.png"
    Image.fromarray(np.full((4, 6), 128 * 257, dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")  # read back as 16-bit
    image = load_image(str(path))
    assert image.mode == "RGB" and image.size == (6, 4)
    assert image.getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize(
    ("image", "grey"),
    [
        (Image.frombytes("I;16B", (2, 2), np.full(4, 257 * 64, dtype=">u2").tobytes()), 64),
        (Image.fromarray(np.full((2, 2), 257 * 200, dtype=np.int32)), 200),  # mode I, 16-bit
        (Image.fromarray(np.full((2, 2), 100, dtype=np.int32)), 100),  # mode I, 8-bit values
        (Image.fromarray(np.full((2, 2), 0.5, dtype=np.float32)), 128),  # F in [0, 1]
        (Image.fromarray(np.full((2, 2), 300.0, dtype=np.float32)), 255),  # F, clipped
        (Image.fromarray(np.full((2, 2), np.nan, dtype=np.float32)), 0),
    ],
)
def test_high_bit_depth_modes_scale_to_8_bits(image: Image.Image, grey: int) -> None:
    assert load_image(image).getpixel((1, 1)) == (grey, grey, grey)


def test_other_modes_convert_to_rgb() -> None:
    palette = Image.new("P", (2, 2), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.info["transparency"] = 1
    assert load_image(png(palette)).getpixel((0, 0)) == (255, 255, 255)  # over white
    assert load_image(Image.new("CMYK", (2, 2), (0, 255, 255, 0))).getpixel((0, 0)) == (
        255,
        0,
        0,
    )
    assert load_image(png(Image.new("1", (2, 2), 1))).getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(BadSample, match="unsupported image mode"):
        load_image(Image.new("La", (2, 2)))


# ------------------------------------------------------------------ metadata lines


def test_malformed_json_line_names_file_and_line(tmp_path: Path) -> None:
    metadata = write_rows(tmp_path / "data", [{"file_name": "a.png", "text": "a"}] * 2)
    metadata.write_text(metadata.read_text() + '{"file_name": "c.png" "text": "c"}\n')
    for streaming in (False, True):
        with pytest.raises(MetadataError, match=rf"{metadata}:3: not valid JSON .*fix or remove"):
            load_pairs(DataConfig(path=str(tmp_path / "data"), streaming=streaming), "train")
    metadata.write_text('{"file_name": "a.png", "text": "a"}\n\n["b.png", "b"]\n')
    with pytest.raises(ValueError, match=rf"{metadata}:3: a JSON list, not an object"):
        load_pairs(DataConfig(path=str(tmp_path / "data")), "train")


def test_non_utf8_line_names_file_and_line(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    metadata = write_rows(folder, [{"file_name": "a.png", "text": "a"}])
    metadata.write_bytes(metadata.read_bytes() + b'{"file_name": "b.png", "text": "caf\xe9"}\n')
    with pytest.raises(MetadataError, match=rf"{metadata}:2: not UTF-8 text \(byte\(s\) e9 "):
        load_pairs(DataConfig(path=str(folder)), "train")
    with pytest.raises(MetadataError, match=rf"{metadata}:2: not UTF-8"):
        load_labelled(DataConfig(path=str(folder), label_column="text"), "train")
    metadata.unlink()
    csv = folder / "metadata.csv"
    csv.write_bytes(b"file_name,text\na.png,a\nb.png,caf\xe9\n")
    with pytest.raises(MetadataError, match=rf"{csv}:3: not UTF-8"):
        load_pairs(DataConfig(path=str(folder)), "train")
    csv.write_bytes(b'file_name,text\na.png,a\nb.png,"b",extra\n')
    with pytest.raises(MetadataError, match=rf"cannot read {csv}: .*line 3"):
        load_pairs(DataConfig(path=str(folder)), "train")


def test_emoji_class_names_name_a_bad_line(tmp_path: Path) -> None:
    metadata = write_rows(tmp_path / "train", [{"file_name": "a.png", "category": "smileys"}])
    metadata.write_text(metadata.read_text() + '{"file_name": "b.png"}\nnot json\n')
    with pytest.raises(MetadataError, match=rf"{metadata}:2: no 'category' field"):
        emoji_class_names(tmp_path, "category")
    metadata.write_text('{"category": "a"}\nnot json\n')
    with pytest.raises(MetadataError, match=rf"{metadata}:2: not valid JSON"):
        emoji_class_names(tmp_path, "category")


# ------------------------------------------------------------------ captions


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("a cat", None),
        (["a cat", None, " "], None),
        (None, "empty caption"),
        ("  ", "empty caption"),
        ([], "empty caption"),
        (float("nan"), "empty caption"),
        (5, "caption not text"),
        (True, "caption not text"),
        ({"text": "a cat"}, "caption not text"),
        (["a cat", 3], "caption not text"),
    ],
)
def test_caption_problem(value: object, problem: str | None) -> None:
    assert caption_problem(value) == problem


def test_captions_of_the_wrong_type_are_skipped_and_named(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    captions = ["a red circle", 42, [1, 2], None, "", {"t": "x"}, ["fine", "too"], "x" * 100_000]
    write_rows(folder, [{"file_name": f"{i}.png", "text": c} for i, c in enumerate(captions)])
    for i in range(len(captions)):
        draw("red", "circle").save(folder / f"{i}.png")
    for streaming in (False, True):  # a streamed source's evaluation split is read whole
        table = load_pairs(DataConfig(path=str(folder), streaming=streaming), "train")
        assert len(table) == 3 and table.captions(1) == ["fine", "too"]
        assert table.skipped == {"caption not text": 3, "empty caption": 2}
        named = {Path(name).name: reason for reason, _, name in table.skipped.rows}
        assert named == {
            "1.png": "caption not text",
            "2.png": "caption not text",
            "5.png": "caption not text",
            "3.png": "empty caption",
            "4.png": "empty caption",
        }


def test_streamed_rows_with_bad_captions_are_named(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    write_rows(folder, [{"file_name": "0.png", "text": 7}, {"file_name": "1.png", "text": "b"}])
    draw("red", "star").save(folder / "0.png")
    from mmcontrast.data.pairs import open_stream

    stream = StreamedPairs(open_stream(DataConfig(path=str(folder)), "train"), TRANSFORM)
    rows = list(stream.table.dataset)
    bad, missing = stream._decode(rows[0], 0, 0), stream._decode(rows[1], 0, 1)
    assert bad == {"skip": "caption not text"} and bad["skip"].name == str(folder / "0.png")
    assert missing == {"skip": "missing image file"}
    assert missing["skip"].key == str(folder / "1.png")


# ------------------------------------------------------------------ counting distinct rows


def test_skips_survive_workers_device_moves_and_pinning() -> None:
    batch = {"skipped": Skips.of_samples([skip_sample("unreadable image", "a.png", "row 1")])}
    for moved in (
        pickle.loads(pickle.dumps(batch)),
        send_to_device(batch, "cpu"),
        pin_memory(batch),
    ):
        assert moved["skipped"] == {"unreadable image": 1}
        assert moved["skipped"].rows == [("unreadable image", "row 1", "a.png")]
    reason = pickle.loads(pickle.dumps(SkipReason("missing image", "b.png", "row 2")))
    assert (reason, reason.name, reason.key) == ("missing image", "b.png", "row 2")


@pytest.mark.parametrize("workers", [0, 1])
def test_a_bad_row_counts_once_over_epochs(
    tmp_path: Path, tokenizer_dir: Path, workers: int
) -> None:
    from transformers import AutoTokenizer

    root = bad_folder(tmp_path)
    table = load_pairs(DataConfig(path=str(root)), "train")
    dataset = ImageTextDataset(table, TRANSFORM)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    collate = ImageTextCollator(lambda c: dict(tok(c, padding=True, return_tensors="pt")))
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate, num_workers=workers)
    skipped = SkippedRows()
    skipped.add_at_load(dataset.skipped_at_load)
    good = 0
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for batch in loader:
            skipped.add(batch.pop("skipped"))
            good += len(batch.get("pixel_values", []))
    assert good == 3 * 2
    assert skipped.total == 4
    assert skipped.by_reason() == {
        "unreadable image": 2,
        "empty caption": 1,
        "missing image file": 1,
    }
    split = root / "train"
    names = dict(skipped.names())
    assert names[str(split / "does_not_exist.png")] == "missing image file"
    assert sorted(n for n, r in names.items() if r == "unreadable image") == [
        str(split / "000002.png"),
        str(split / "000003.png"),
    ]
    message = skipped.message()
    assert message.startswith(
        "skipped 4 bad training rows (unreadable image: 2, empty caption: 1, "
        "missing image file: 1); first: "
    )
    assert f"{split / 'does_not_exist.png'} (missing image file)" in message


def test_skipped_rows_merge_across_processes() -> None:
    first, second = SkippedRows(), SkippedRows()
    first.add(Skips.of_samples([skip_sample("unreadable image", "a.png", "row 1")]))
    first.add_at_load({"empty caption": 2})  # counts without names: the main process only
    second.add(Skips.of_samples([skip_sample("unreadable image", "a.png", "row 1")]))
    second.add(Skips.of_samples([skip_sample("missing image file", "b.png", "row 7")]))
    states = json.loads(json.dumps([first.to_state(), second.to_state()]))  # plain data
    merged = SkippedRows.merge(states)
    assert merged.total == 4
    assert merged.by_reason() == {
        "empty caption": 2,
        "missing image file": 1,
        "unreadable image": 1,
    }
    assert merged.names() == [("a.png", "unreadable image"), ("b.png", "missing image file")]
    assert not SkippedRows() and SkippedRows().total == 0


def test_message_names_the_first_rows_and_how_many_more() -> None:
    skipped = SkippedRows()
    for i in range(7):
        skipped.add_row("unreadable image", f"{i}.png", f"row {i}")
    assert skipped.message("evaluation", shown=2) == (
        "skipped 7 bad evaluation rows (unreadable image: 7); first: 0.png (unreadable image), "
        "1.png (unreadable image), and 5 more"
    )
    assert skipped.message("", shown=0).startswith("skipped 7 bad rows")


def test_skips_doctest() -> None:
    assert doctest.testmod(skips).failed == 0


def test_multi_view_collate_names_rows(tmp_path: Path) -> None:
    from mmcontrast.data.labelled import LabelledImages

    draw("red", "circle").save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    table = LabelledImages(
        "test",
        ["a"],
        torch.tensor([0, 0]),
        dataset=datasets.Dataset.from_dict({"image": ["good.png", "bad.png"]}),
        base_dir=tmp_path,
    )
    dataset = MultiViewDataset(table, [TRANSFORM, TRANSFORM])
    batch = MultiViewCollator()([dataset[0], dataset[1]])
    assert batch["skipped"] == {"unreadable image": 1}
    assert batch["skipped"].rows == [("unreadable image", "row 1", str(tmp_path / "bad.png"))]


def test_evaluation_reading_names_unreadable_images(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    table = load_pairs(DataConfig(path=str(bad_folder(tmp_path))), "train")
    with caplog.at_level(logging.WARNING, logger="mmcontrast"):
        batches = list(image_batches(table, TRANSFORM, batch_size=2))
        list(image_batches(table, TRANSFORM, batch_size=2))  # the same rows: said once
    unreadable = {i: r for _, _, bad in batches for i, r in bad.items()}
    assert unreadable == {2: "unreadable image", 3: "unreadable image", 4: "missing image file"}
    warned = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warned) == 1
    assert "skipped 3 bad rows (unreadable image: 2, missing image file: 1)" in warned[0]
    assert "does_not_exist.png (missing image file)" in warned[0]
