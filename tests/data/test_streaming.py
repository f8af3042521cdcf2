"""Streaming image-text data: tar shards, coverage, shuffling, workers and exact resume."""

from __future__ import annotations

import io
import itertools
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import QUICKSTART, train_stopped_and_resumed
from PIL import Image
from safetensors.torch import load_file

from mmcontrast.cli import main
from mmcontrast.config import DataConfig, load_recipe
from mmcontrast.data.image_text import ImageTextCollator
from mmcontrast.data.pairs import load_pairs, open_stream
from mmcontrast.data.streaming import StreamedPairs, StreamLoader, StreamPosition
from mmcontrast.data.webdataset import expand_braces, shard_files, write_shards
from mmcontrast.pipeline import train


def png(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (value % 256, value // 256, 0)).save(buffer, "PNG")
    return buffer.getvalue()


def numbered_shards(root: Path, count: int, shard_size: int, split: str = "train") -> Path:
    """``count`` pairs whose caption is ``row N`` and whose red channel is N % 256."""
    rows = ({"image": png(i), "text": f"row {i}"} for i in range(count))
    write_shards(rows, root, split, "image", "text", shard_size)
    return root


def stream_of(root: Path, buffer: int = 4, world: int = 1, workers: int = 1) -> StreamedPairs:
    table = open_stream(DataConfig(path=str(root)), "train")
    dataset = StreamedPairs(table, transform=lambda image: torch.zeros(1), shuffle_buffer=buffer)
    dataset.world, dataset.workers = world, workers
    return dataset


def row_ids(items) -> list[int]:
    return [int(row["txt"].split()[1]) for _, row in items]


# --- shard files ---------------------------------------------------------------------------


def test_expand_braces_keeps_padding_and_nests() -> None:
    assert expand_braces("s-{000..002}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar"]
    assert expand_braces("{1..2}/{08..09}.tar") == ["1/08.tar", "1/09.tar", "2/08.tar", "2/09.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_shard_files_by_folder_glob_and_braces(tmp_path: Path) -> None:
    numbered_shards(tmp_path, 6, 2, "train")
    numbered_shards(tmp_path, 2, 2, "test")
    train_files = [str(tmp_path / "train" / f"train-{i:05d}.tar") for i in range(3)]
    assert shard_files(str(tmp_path), "train") == train_files
    assert shard_files(str(tmp_path / "train" / "*.tar"), "x") == train_files
    braces = str(tmp_path / "{split}" / "{split}-{00000..00001}.tar")
    assert shard_files(braces, "train") == train_files[:2]
    with pytest.raises(ValueError, match="splits with shards: test, train"):
        shard_files(str(tmp_path), "validation")
    with pytest.raises(ValueError, match="no \(non-empty\) tar shards match"):
        shard_files(str(tmp_path / "nothing-*.tar"), "train")


def test_write_shards_round_trip_keeps_images_and_every_caption(
    shapes_dir: Path, tmp_path: Path
) -> None:
    assert main(["shards", str(shapes_dir), "--output", str(tmp_path), "--shard-size", "5"]) == 0
    assert len(list((tmp_path / "test").glob("*.tar"))) == 4  # 16 pairs
    source = load_pairs(DataConfig(path=str(shapes_dir)), "test")
    shards = load_pairs(DataConfig(path=str(tmp_path)), "test")  # columns picked: png, txt
    assert (shards.image_column, shards.caption_column) == ("png", "txt")
    assert len(shards) == len(source) == 16
    for i in range(len(source)):
        original = Path(source.image(i)).read_bytes()
        assert shards.image(i)["bytes"] == original  # the file's own bytes, not re-encoded
        assert shards.captions(i) == source.captions(i)[:1]
    every = load_pairs(DataConfig(path=str(tmp_path), caption_column="json.text"), "test")
    assert [every.captions(i) for i in range(16)] == [source.captions(i) for i in range(16)]


# --- streams -------------------------------------------------------------------------------


def one_pass(dataset: StreamedPairs, stream: int) -> list[int]:
    items = dataset.rows(stream, StreamPosition())
    first = list(itertools.takewhile(lambda item: item[0].epoch == 0, items))
    return row_ids(first)


@pytest.mark.parametrize(
    ("count", "shard_size", "streams"),
    [(23, 4, 1), (23, 4, 3), (23, 4, 6), (10, 5, 3)],  # 6 shards (by shard) / 2 shards (stride)
)
def test_a_pass_reads_every_example_once(tmp_path: Path, count, shard_size, streams) -> None:
    dataset = stream_of(numbered_shards(tmp_path, count, shard_size), buffer=3, workers=streams)
    seen = Counter(i for s in range(streams) for i in one_pass(dataset, s))
    assert sorted(seen) == list(range(count)) and set(seen.values()) == {1}


def test_readers_sharing_shards_get_even_shares(tmp_path: Path) -> None:
    """3 shards of 5 for 4 readers (stride mode): pass lengths differ by at most one."""
    dataset = stream_of(numbered_shards(tmp_path, 15, 5), buffer=4, workers=4)
    lengths = [len(one_pass(dataset, s)) for s in range(4)]
    assert sum(lengths) == 15 and max(lengths) - min(lengths) <= 1, lengths


def test_shuffled_within_blocks_and_anew_each_pass(tmp_path: Path) -> None:
    dataset = stream_of(numbered_shards(tmp_path, 40, 10), buffer=8)
    items = list(itertools.islice(dataset.rows(0, StreamPosition()), 80))
    first, second = row_ids(items[:40]), row_ids(items[40:])
    assert sorted(first) == sorted(second) == list(range(40))
    assert first != list(range(40)) and first != second
    assert {p.epoch for p, _ in items[:40]} == {0} and {p.epoch for p, _ in items[40:]} == {1}


def test_resuming_from_any_position_continues_the_same_rows(tmp_path: Path) -> None:
    """Every position (inside blocks, across shards and passes) resumes exactly."""
    dataset = stream_of(numbered_shards(tmp_path, 13, 4), buffer=3, workers=2)
    for stream in (0, 1):
        reference = list(itertools.islice(dataset.rows(stream, StreamPosition()), 30))
        for k in range(len(reference) - 1):
            position = reference[k][0]
            resumed = list(itertools.islice(dataset.rows(stream, position), 30 - k - 1))
            assert row_ids(resumed) == row_ids(reference[k + 1 :]), (stream, k, position)
            assert [p for p, _ in resumed] == [p for p, _ in reference[k + 1 :]]


def test_bad_samples_are_skipped_and_counted(tmp_path: Path) -> None:
    rows = [
        {"image": png(1), "text": "good"},
        {"image": b"not an image", "text": "corrupt"},
        {"image": png(2), "text": "  "},
        {"image": png(3), "text": "good again"},
    ]
    import tarfile

    (tmp_path / "train").mkdir()
    with tarfile.open(tmp_path / "train" / "bad.tar", "w") as tar:  # written by hand
        for key, row in enumerate(rows):
            for name, data in ((f"{key}.png", row["image"]), (f"{key}.txt", row["text"].encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    shards, left_out = write_shards(iter(rows), tmp_path / "written", "train", "image", "text")
    assert left_out == {"unreadable image": 1} and len(shards) == 1
    table = open_stream(DataConfig(path=str(tmp_path)), "train")
    dataset = StreamedPairs(table, transform=lambda image: torch.zeros(1), shuffle_buffer=1)
    samples = list(itertools.islice(dataset.samples(0, StreamPosition()), 4))
    assert Counter(s.get("skip", "ok") for s in samples) == {
        "ok": 2, "unreadable image": 1, "empty caption": 1
    }  # fmt: skip


def collate_ids(samples: list[dict]) -> dict:
    return {"ids": [s["caption"] for s in samples if "caption" in s]}


@pytest.mark.parametrize("workers", [0, 2])
def test_resuming_at_the_end_of_a_one_block_pass(tmp_path: Path, workers: int) -> None:
    """A stream's pass that fits in one shuffle block, stopped exactly at its end (the
    default buffer of 1000 with a small dataset): the next pass follows."""
    root = numbered_shards(tmp_path, 16, 8)

    def loader() -> StreamLoader:
        table = open_stream(DataConfig(path=str(root)), "train")
        return StreamLoader(
            StreamedPairs(table, lambda image: torch.zeros(1)), 4, collate_ids, workers
        )

    batches = [b["ids"] for b in itertools.islice(loader(), 8)]
    for stop in range(1, 7):
        stopped = loader()
        list(itertools.islice(stopped, stop))
        resumed = loader()
        resumed.load_state_dict(stopped.state_dict())
        assert [b["ids"] for b in itertools.islice(resumed, 8 - stop)] == batches[stop:], stop


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_state_resumes_the_same_batches(tmp_path: Path, workers: int) -> None:
    root = numbered_shards(tmp_path, 30, 4)

    def loader() -> StreamLoader:
        table = open_stream(DataConfig(path=str(root)), "train")
        dataset = StreamedPairs(table, transform=lambda image: torch.zeros(1), shuffle_buffer=5)
        return StreamLoader(dataset, 4, collate_ids, num_workers=workers)

    full = loader()
    batches = [b["ids"] for b in itertools.islice(full, 12)]
    assert len({c for b in batches[:7] for c in b}) == 28  # 7 batches, no repeats in a pass
    stopped = loader()
    assert [b["ids"] for b in itertools.islice(stopped, 5)] == batches[:5]
    resumed = loader()
    resumed.load_state_dict(stopped.state_dict())
    assert [b["ids"] for b in itertools.islice(resumed, 7)] == batches[5:]
    other = loader()
    other.dataset.workers = 3
    with pytest.raises(ValueError, match="same process count and data.num_workers"):
        other.load_state_dict(stopped.state_dict())
    reshuffled = loader()
    reshuffled.dataset.shuffle_buffer = 7
    with pytest.raises(ValueError, match="shuffle_buffer 5 -> 7"):
        reshuffled.load_state_dict(stopped.state_dict())


def test_streamed_imagefolder_with_collator(shapes_dir: Path, tokenizer_dir: Path) -> None:
    """An imagefolder streams too (one shard: every reader keeps 1 example in S)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    table = open_stream(DataConfig(path=str(shapes_dir)), "train")
    dataset = StreamedPairs(table, transform=lambda image: torch.ones(3, 2, 2), shuffle_buffer=8)
    loader = StreamLoader(
        dataset, 8, ImageTextCollator(lambda t: tokenizer(t, padding=True, return_tensors="pt"))
    )
    batch = next(iter(loader))
    assert batch["pixel_values"].shape == (8, 3, 2, 2) and batch["input_ids"].shape[0] == 8


# --- training ------------------------------------------------------------------------------


@pytest.mark.slow
def test_streamed_training_resumes_exactly(
    shapes_dir: Path, tiny_run: list[str], tmp_path: Path
) -> None:
    """Stop at step 5 and resume: the same losses and weights as the run never stopped."""
    shards = tmp_path / "shards"
    assert main(["shards", str(shapes_dir), "--output", str(shards), "--shard-size", "6"]) == 0
    common = [
        *tiny_run,
        f"data.path={shards}",
        "data.streaming=true",
        "data.shuffle_buffer=5",
        "data.num_workers=2",
        "data.random_resized_crop=[0.5, 1.0]",
        "model.vision.weights=null",
        "model.vision.lock=false",
        "train.cache_locked_features=false",
        "train.max_steps=9",  # 32 pairs / batch 8: passes over the streams end mid-run
        "train.checkpoint_every=3",
        "eval.at_end=false",
    ]
    full, first, second = train_stopped_and_resumed(QUICKSTART, common, tmp_path)
    split_dir = f"train.output_dir={tmp_path / 'split'}"
    losses = [h["loss"] for h in full["history"]]
    assert len(losses) == 9 and len(set(losses)) > 1
    assert [h["loss"] for h in first["history"] + second["history"]] == losses
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="same process count and data.num_workers"):
        train(load_recipe(QUICKSTART, [*common, split_dir, "data.num_workers=1"]), resume="latest")
    with pytest.raises(ValueError, match="resume it with data.streaming=true"):
        train(load_recipe(QUICKSTART, [*common, split_dir, "data.streaming=false",
                                       "train.max_steps=12"]), resume="latest")  # fmt: skip


def test_streamed_training_evaluates_the_streamed_test_split(
    shapes_dir: Path, tiny_run: list[str]
) -> None:
    cfg = load_recipe(
        QUICKSTART,
        [*tiny_run, "data.streaming=true", "train.max_steps=2", "model.vision.weights=null",
         "train.cache_locked_features=false",
         "data.max_eval_samples=12"],
    )  # fmt: skip
    summary = train(cfg)
    assert summary["step"] == 2 and 0 <= summary["eval"]["image_retrieval_recall@1"] <= 1
    assert (Path(cfg.train.output_dir) / "eval" / "retrieval_grid.png").is_file()


def test_streaming_errors_say_what_to_do(tiny_run: list[str]) -> None:
    streamed = [*tiny_run, "data.streaming=true", "model.vision.weights=null"]
    with pytest.raises(ValueError, match="set train.cache_locked_features=false"):
        train(load_recipe(QUICKSTART, [*streamed, "train.max_steps=1"]))  # the recipe caches
    streamed.append("train.cache_locked_features=false")
    with pytest.raises(ValueError, match="set train.max_steps"):
        train(load_recipe(QUICKSTART, [*streamed, "train.max_steps=null"]))
    with pytest.raises(ValueError, match="bound the run with train.max_steps"):
        train(load_recipe(QUICKSTART, [*streamed, "train.max_steps=1", "data.max_train_samples=4"]))


def test_vision_recipes_refuse_streaming() -> None:
    from mmcontrast.methods import build_method

    recipe = QUICKSTART.parent / "simclr-fashion-mnist.yaml"
    method = build_method(load_recipe(recipe, ["data.streaming=true"]))
    with pytest.raises(ValueError, match="data.streaming is for image-text training"):
        method.train_data()


def test_a_datasets_source_streams_with_image_features(tmp_path: Path) -> None:
    """A ``datasets`` path (parquet files with an Image column, as on the Hub) streams
    shard by shard, images left undecoded until the worker decodes them."""
    import datasets

    root = tmp_path / "parquet"
    (root / "data").mkdir(parents=True)
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    for part in range(3):
        rows = {"image": [{"bytes": png(part * 4 + i), "path": None} for i in range(4)],
                "text": [f"row {part * 4 + i}" for i in range(4)]}  # fmt: skip
        table = datasets.Dataset.from_dict(rows, features=features)
        table.to_parquet(str(root / "data" / f"train-{part:05d}-of-00003.parquet"))
    stream = open_stream(DataConfig(path=str(root)), "train")
    assert stream.dataset.num_shards == 3
    assert isinstance(stream.dataset.features["image"], datasets.Image)
    assert not stream.dataset.features["image"].decode
    dataset = StreamedPairs(stream, transform=lambda image: torch.tensor(image.getpixel((0, 0))))
    dataset.workers = 3
    seen = {}
    for s in range(3):
        for sample in itertools.islice(dataset.samples(s, StreamPosition()), 4):
            seen[sample["caption"]] = int(sample["pixel_values"][0])
    assert seen == {f"row {i}": i for i in range(12)}  # each reader its own file, decoded


def jpeg(value: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (value, 0, 0)).save(buffer, "JPEG")
    return buffer.getvalue()


def test_mixed_image_formats_share_one_column(tmp_path: Path) -> None:
    rows = [{"image": png(i) if i % 3 else jpeg(i), "text": f"row {i}"} for i in range(8)]
    shards, left_out = write_shards(iter(rows), tmp_path, "train", "image", "text", 3)
    assert not left_out and len(shards) == 3
    table = load_pairs(DataConfig(path=str(tmp_path)), "train")
    assert table.image_column == "jpg" and "png" not in table.dataset.column_names  # the first's
    streamed = stream_of(tmp_path, buffer=100)
    samples = list(itertools.islice(streamed.samples(0, StreamPosition()), 8))
    assert all("skip" not in s for s in samples)


def test_shards_command_counts_what_it_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mmcontrast.data.imagefolder import write_imagefolder

    source = tmp_path / "source"
    records = [
        {"image": Image.new("RGB", (4, 4)), "text": [f"row {i}", f"alt {i}"]} for i in range(4)
    ]
    write_imagefolder(records, source, "train")
    for name in ("000000.png", "000001.png"):
        (source / "train" / name).unlink()
    out = tmp_path / "out"
    assert main(["shards", str(source), "--output", str(out), "--splits", "train"]) == 0
    printed = capsys.readouterr().out
    assert "train: 2 pairs in 1 shard(s)" in printed and "'missing image file': 2" in printed
    again = tmp_path / "again"  # shards of shards, captions from the JSON
    args = [
        "shards",
        str(out),
        "--output",
        str(again),
        "--splits",
        "train",
        "--caption-column",
        "json.text",
    ]
    assert main(args) == 0
    table = load_pairs(DataConfig(path=str(again), caption_column="json.text"), "train")
    assert sorted(table.captions(i)[0] for i in range(2)) == ["row 2", "row 3"]
    assert main(["shards", str(source), "--output", str(out), "--splits", "test"]) == 2
    assert "choose the splits to write with --splits" in capsys.readouterr().err


def test_a_mistyped_caption_field_is_an_error(tmp_path: Path) -> None:
    numbered_shards(tmp_path, 4, 2)
    for streaming in (False, True):
        cfg = DataConfig(path=str(tmp_path), caption_column="json.txet", streaming=streaming)
        with pytest.raises(ValueError, match="no such field .*fields of 'json': text"):
            (open_stream if streaming else load_pairs)(cfg, "train")


def test_empty_shards_are_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import tarfile

    numbered_shards(tmp_path, 6, 3)
    tarfile.open(tmp_path / "train" / "train-00000-empty.tar", "w").close()
    with caplog.at_level("WARNING", logger="mmcontrast"):
        files = shard_files(str(tmp_path), "train")
    assert len(files) == 2 and "skipping 1 empty tar shard" in caplog.text
    assert len(load_pairs(DataConfig(path=str(tmp_path)), "train")) == 6


def test_a_streamed_evaluation_split_keeps_captioned_rows_up_to_the_cap(tmp_path: Path) -> None:
    rows = [{"image": png(i), "text": "" if i < 3 else f"row {i}"} for i in range(8)]
    write_shards(iter(rows), tmp_path, "test", "image", "text", 4)
    for streaming in (False, True):
        table = load_pairs(DataConfig(path=str(tmp_path), streaming=streaming), "test", 3)
        assert [table.captions(i) for i in range(len(table))] == [["row 3"], ["row 4"], ["row 5"]]
        assert table.skipped["empty caption"] == 3
