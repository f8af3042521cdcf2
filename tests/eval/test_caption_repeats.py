"""Captions repeated across images: the recall bounds they leave under the pessimistic tie
rule (by hand, and never beaten by real metrics), and the retrieval evaluation's warning
and result fields on a tiny split where two images share a caption."""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import draw
from torch import Tensor
from torchvision.transforms.v2.functional import pil_to_tensor

from mmcontrast.config import DataConfig
from mmcontrast.data.imagefolder import write_imagefolder
from mmcontrast.data.pairs import load_pairs
from mmcontrast.eval.adapters.base import EvalModel, PerImage
from mmcontrast.eval.image_text import evaluate_retrieval
from mmcontrast.eval.retrieval import repeated_captions, retrieval_metrics


def test_no_repeats() -> None:
    repeats = repeated_captions(["a", "b", "a"], [0, 1, 0], ks=(1, 5))
    assert (repeats.captions, repeats.texts) == (0, 0)
    assert set(repeats.max_recall.values()) == {1.0}


def test_bounds_by_hand() -> None:
    # "a" twice on image 0 and once on image 1; "b" on image 2 only
    repeats = repeated_captions(["a", "a", "a", "b"], torch.tensor([0, 0, 1, 2]), ks=(1, 2))
    assert (repeats.captions, repeats.texts) == (3, 1)
    # text -> image: one ranking for all copies of "a"; at best image 0's two copies hit @1
    assert repeats.max_recall["image_retrieval_recall@1"] == 3 / 4
    assert repeats.max_recall["image_retrieval_recall@2"] == 1.0
    # image -> text: image 0 has image 1's copy ahead (rank >= 2), image 1 two (rank >= 3)
    assert repeats.max_recall["text_retrieval_recall@1"] == 1 / 3
    assert repeats.max_recall["text_retrieval_recall@2"] == 2 / 3


def test_metrics_never_beat_the_bounds() -> None:
    generator = torch.Generator().manual_seed(0)
    for trial in range(20):
        n_img = 6
        owners = torch.randint(0, n_img, (14,), generator=generator)
        words = torch.randint(0, 5, (14,), generator=generator)  # few texts: many repeats
        captions = [f"w{int(w)}" for w in words]
        vocab = torch.randn(5, 4, generator=generator)
        text_features = vocab[words]  # identical texts, identical embeddings
        image_features = torch.randn(n_img, 4, generator=generator)
        if trial % 2:  # images at their captions' mean: the best a model can do
            image_features = torch.stack(
                [
                    text_features[owners == i].mean(0) if (owners == i).any() else vocab[0]
                    for i in range(n_img)
                ]
            )
        ks = (1, 2, 3)
        metrics = retrieval_metrics(image_features, text_features, owners, ks=ks)
        bounds = repeated_captions(captions, owners, ks=ks).max_recall
        for key, bound in bounds.items():
            assert metrics[key] <= bound + 1e-12, (trial, key)


class _Colours(EvalModel):
    """Images embed as their mean colour; texts as a fixed random vector of their text."""

    family = "test-colours"

    @classmethod
    def matches(cls, spec: str) -> bool:
        return False

    @classmethod
    def load(cls, spec: str, device: torch.device) -> EvalModel:
        return cls(spec, device)

    def image_transform(self) -> Callable[[Any], Tensor]:
        return PerImage(lambda image: pil_to_tensor(image.convert("RGB")).float() / 255)

    def encode_images(self, pixels: Tensor) -> Tensor:
        return pixels.mean((2, 3))

    def encode_texts(self, texts: list[str]) -> Tensor:
        seeds = [zlib.crc32(text.encode()) for text in texts]
        return torch.stack(
            [torch.randn(3, generator=torch.Generator().manual_seed(s)) for s in seeds]
        )


def test_retrieval_warns_once_and_records_repeats(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = [
        {"image": draw("red", "circle"), "text": "a red circle"},
        {"image": draw("blue", "square"), "text": "a shape"},
        {"image": draw("green", "triangle"), "text": "a shape"},
    ]
    write_imagefolder(records, tmp_path / "pairs", "test")
    table = load_pairs(DataConfig(path=str(tmp_path / "pairs")), "test")
    with caplog.at_level(logging.WARNING, logger="mmcontrast"):
        metrics = evaluate_retrieval(
            _Colours("colours", torch.device("cpu")),
            table,
            ks=(1, 5),
            output_dir=tmp_path / "out",
            grid_queries=0,
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "2 of 3 captions" in warnings[0] and "repeat across images" in warnings[0]
    assert "at most 0.667 text->image and 0.333 image->text" in warnings[0]
    assert metrics["text_retrieval_recall@1"] <= 1 / 3
    result = json.loads((tmp_path / "out" / "retrieval.json").read_text())
    assert result["duplicate_captions"] == 2
    assert result["max_recall"]["text_retrieval_recall@1"] == pytest.approx(1 / 3)
    assert "repeat across images" in (tmp_path / "out" / "retrieval.txt").read_text()


def test_rows_repeating_an_image_are_one_image_with_all_their_captions(tmp_path: Path) -> None:
    """One caption per row, an image on several rows (COCO's layout): scored as CLIP_benchmark
    scores one row per image with a list of captions, not as copies that tie and lose."""
    shapes = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("red", "square")]
    captions = [[f"a {c} {s}", f"the {s} is {c}"] for c, s in shapes]
    listed = [
        {"image": draw(c, s), "file_name": f"{c}_{s}.png", "text": texts}
        for (c, s), texts in zip(shapes, captions, strict=True)
    ]
    split = write_imagefolder(listed, tmp_path / "listed", "test")
    rows = [
        {"file_name": f"../../listed/test/{c}_{s}.png", "text": text}
        for (c, s), texts in zip(shapes, captions, strict=True)
        for text in texts
    ]
    (tmp_path / "rows" / "test").mkdir(parents=True)
    (tmp_path / "rows" / "test" / "metadata.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in rows)
    )
    model = _Colours("colours", torch.device("cpu"))
    expected = evaluate_retrieval(
        model, load_pairs(DataConfig(path=str(split.parent)), "test"), ks=(1, 2), grid_queries=0
    )
    one_per_row = load_pairs(DataConfig(path=str(tmp_path / "rows")), "test")
    assert len(one_per_row) == 8
    got = evaluate_retrieval(model, one_per_row, ks=(1, 2), output_dir=tmp_path / "out")
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert expected["image_retrieval_recall@1"] > 0
    # scored as 8 images instead, each caption's image would tie with its copy and lose
    copies = torch.randn(4, 3).repeat_interleave(2, 0)
    as_rows = retrieval_metrics(copies, copies, torch.arange(8), ks=(1,))
    assert as_rows["image_retrieval_recall@1"] == 0.0
    result = json.loads((tmp_path / "out" / "retrieval.json").read_text())
    assert (result["num_images"], result["num_texts"]) == (4, 8)
    assert result["rows_repeating_an_image"] == 4
    keys = one_per_row.image_keys(list(range(8)))
    assert keys[0] == keys[1] != keys[2] and None not in keys


def test_image_keys_from_bytes_and_groups_keep_copies_apart() -> None:
    """An undecoded datasets.Image column is keyed by its bytes (paths inside parquet files can
    repeat for different pictures); a per-language table keeps one image per language."""
    import io

    import datasets

    from mmcontrast.data.pairs import PairTable

    def png(colour: str) -> bytes:
        buffer = io.BytesIO()
        draw(colour, "circle").save(buffer, format="PNG")
        return buffer.getvalue()

    images = [{"bytes": png(c), "path": "image.png"} for c in ("red", "blue", "red")]
    features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
    data = datasets.Dataset.from_dict({"image": images, "text": ["a", "b", "c"]}, features)
    keys = PairTable(data, "image", "text").image_keys([0, 1, 2])
    assert keys[0] == keys[2] != keys[1]
