"""Several positives per row in image-text training: k captions of one image in a batch
(``data.captions_per_image``), ids from a column (``data.id_column``), the ids reaching the
multi-positive losses (``unicl``, ``siglip_multi``), streamed data, FLYP with ``unicl``, and
clear errors where pairs that belong together would become negatives.

Gradient caching and 2 processes against 1 with the whole batch: train/test_grad_cache.py
and train/test_global_negatives.py (their ``unicl`` / ``siglip_multi`` cases).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import COLOURS, SHAPES, draw, tiny_overrides

from mmcontrast.config import DataConfig, load_recipe
from mmcontrast.data.image_text import ImageTextCollator, ImageTextDataset, stable_id
from mmcontrast.data.imagefolder import write_imagefolder
from mmcontrast.data.pairs import load_pairs, open_stream
from mmcontrast.data.streaming import StreamedPairs
from mmcontrast.data.transforms import ImagePreprocess, image_transform
from mmcontrast.losses import ClipLoss, UniClLoss
from mmcontrast.methods import build_method
from mmcontrast.methods.image_text import ImageTextContrastive
from mmcontrast.pipeline import train

CAPTIONS = ["a red circle", "the circle is red", "red round shape", "a small red circle"]


@pytest.fixture(scope="module")
def captions_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An imagefolder whose images have 4, 2 or 1 captions, and an ``image_id`` column
    shared by pairs of rows (one row per caption, as COCO's annotations)."""
    root = tmp_path_factory.mktemp("captions")
    rows = []
    for i, (c, s) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        captions = [t.replace("red", c).replace("circle", s) for t in CAPTIONS][: (4, 2, 1)[i % 3]]
        rows.append({"image": draw(c, s), "text": captions, "image_id": f"img-{i // 2}"})
    rows[5]["image_id"] = None  # no id: skipped when ids are used
    write_imagefolder(rows, root, "train")
    write_imagefolder(rows[:8], root, "test")
    return root


def _dataset(folder: Path, k: int, with_ids: bool = True, **data: object) -> ImageTextDataset:
    cfg = DataConfig(path=str(folder), random_resized_crop=(0.3, 1.0), **data)  # type: ignore[arg-type]
    transform = image_transform(ImagePreprocess(size=16), cfg, train=True)
    return ImageTextDataset(
        load_pairs(cfg, "train"), transform, seed=1, captions_per_image=k, with_ids=with_ids
    )


def test_k_captions_of_one_image_with_its_own_augmentation_each(captions_dir: Path) -> None:
    dataset = _dataset(captions_dir, k=3)
    assert dataset.rows_per_sample == 3
    four, two, one = dataset[0]["group"], dataset[1]["group"], dataset[2]["group"]
    assert len(four) == len(two) == len(one) == 3
    assert len({p["caption"] for p in four}) == 3  # drawn without replacement
    assert {p["caption"] for p in two} == set(dataset.table.captions(1))  # cycled: both used
    assert {p["caption"] for p in one} == set(dataset.table.captions(2))
    assert [p["id"] for p in four] == [0, 0, 0] and [p["id"] for p in two] == [1, 1, 1]
    assert not torch.equal(four[0]["pixel_values"], four[1]["pixel_values"])  # own crops
    assert [p["caption"] for p in dataset[0]["group"]] == [p["caption"] for p in four]  # seeded

    batch = ImageTextCollator(_tokenize)([dataset[0], dataset[1], dataset[2]])
    assert batch["pixel_values"].shape == (9, 3, 16, 16)
    assert batch["ids"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len(batch["input_ids"]) == 9


def test_one_caption_per_image_is_unchanged_and_ids_are_rows(captions_dir: Path) -> None:
    plain, with_ids = _dataset(captions_dir, k=1, with_ids=False), _dataset(captions_dir, k=1)
    for i in (0, 3, 7):
        a, b = plain[i], with_ids[i]
        assert "id" not in a and b["id"] == i
        assert a["caption"] == b["caption"] and torch.equal(a["pixel_values"], b["pixel_values"])


def test_id_column_makes_rows_with_one_value_positives(captions_dir: Path) -> None:
    dataset = _dataset(captions_dir, k=1, id_column="image_id")
    ids = [dataset[i].get("id") for i in range(8)]
    assert ids[0] == ids[1] == stable_id("img-0") and ids[2] == ids[3] == stable_id("img-1")
    assert len({ids[0], ids[2], ids[4], ids[6]}) == 4
    assert ids[5] is None and dataset[5]["skip"] == "missing id"
    assert stable_id(7) == 7 and stable_id("7") != 7  # digests are 63-bit and stable
    assert stable_id("img-0") == stable_id("img-0") < 2**63


def test_streamed_groups_and_ids(captions_dir: Path) -> None:
    table = open_stream(DataConfig(path=str(captions_dir)), "train")
    stream = StreamedPairs(
        table, lambda image: torch.zeros(1), shuffle_buffer=4, captions_per_image=2, with_ids=True
    )
    samples = [s for s, _ in zip(stream.samples(0, _start()), range(12), strict=False)]
    groups = [s["group"] for s in samples]
    assert all(len(g) == 2 and g[0]["id"] == g[1]["id"] for g in groups)
    assert len({g[0]["id"] for g in groups}) == 12  # one id per image, from its file name
    again = [
        s["group"][0]["id"] for s, _ in zip(stream.samples(0, _start()), range(12), strict=False)
    ]
    assert again == [g[0]["id"] for g in groups]  # the same in every pass and run


def _start():  # type: ignore[no-untyped-def]
    from mmcontrast.data.streaming import StreamPosition

    return StreamPosition()


def _tokenize(captions: list[str]) -> dict[str, torch.Tensor]:
    ids = [[1 + hash(w) % 30 for w in c.split()] for c in captions]
    width = max(map(len, ids))
    return {"input_ids": torch.tensor([row + [0] * (width - len(row)) for row in ids])}


def _method(
    shapes_dir: Path, tokenizer_dir: Path, tmp_path: Path, *extra: str
) -> ImageTextContrastive:
    overrides = [*tiny_overrides(shapes_dir, tokenizer_dir, tmp_path / "run"), *extra]
    method = build_method(load_recipe(None, overrides))
    assert isinstance(method, ImageTextContrastive)
    return method


def test_the_ids_reach_the_loss(captions_dir: Path, tokenizer_dir: Path, tmp_path: Path) -> None:
    method = _method(
        captions_dir,
        tokenizer_dir,
        tmp_path,
        "loss.name=unicl",
        "data.captions_per_image=2",
        "data.random_resized_crop=[0.3, 1.0]",  # identical images would make it equal CLIP's
    )
    dataset, collate = method.train_data()
    assert isinstance(dataset, ImageTextDataset) and dataset.with_ids
    batch = collate([dataset[i] for i in range(4)])
    assert batch["ids"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    tokens = batch["input_ids"]
    assert not torch.equal(tokens[0], tokens[1])  # two different captions of image 0
    method.eval()  # the same dropout-free embeddings in both calls
    with torch.no_grad():
        out, emb = method(batch), method(batch, embed_only=True)
    args = (emb["image_features"], emb["text_features"], emb["logit_scale"])
    expected = UniClLoss()(*args, batch["ids"])
    assert float(out["loss"]) == pytest.approx(float(expected), rel=1e-6)
    assert abs(float(out["loss"]) - float(ClipLoss()(*args))) > 1e-4  # ids changed the loss


def test_pairs_that_belong_together_need_a_loss_with_ids(
    shapes_dir: Path, captions_dir: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"captions_per_image=2 .* loss 'clip' .*loss.name=unicl"):
        _method(shapes_dir, tokenizer_dir, tmp_path, "data.captions_per_image=2")
    with pytest.raises(ValueError, match=r"id_column='image_id'.*loss.name=siglip_multi"):
        _method(
            shapes_dir,
            tokenizer_dir,
            tmp_path,
            "loss.name=siglip",
            "model.init_logit_bias=-10",
            "data.id_column=image_id",
        )
    method = _method(
        shapes_dir, tokenizer_dir, tmp_path, "loss.name=unicl", "data.id_column=image_idd"
    )
    with pytest.raises(ValueError, match=r"data.id_column 'image_idd' not found .*columns: "):
        method.train_data()
    overrides = tiny_overrides(captions_dir, tokenizer_dir, tmp_path / "odd")
    recipe = load_recipe(
        None,
        [*overrides, "loss.name=unicl", "data.captions_per_image=3", "train.max_steps=1"],
    )
    with pytest.raises(
        ValueError, match=r"batch_size=8 is not a multiple of .*captions_per_image=3"
    ):
        train(recipe)


def test_siglip_multi_trains_on_ids_from_a_column(
    captions_dir: Path, tokenizer_dir: Path, tmp_path: Path
) -> None:
    overrides = tiny_overrides(captions_dir, tokenizer_dir, tmp_path / "run")
    summary = train(
        load_recipe(
            None,
            [
                *overrides,
                "loss.name=siglip_multi",
                "data.id_column=image_id",
                "data.captions_per_image=2",
                "train.max_steps=2",
                "eval.at_end=false",
            ],
        )
    )
    losses = [h["loss"] for h in summary["history"]]
    assert (
        summary["step"] == 2 and len(losses) == 2 and all(map(torch.isfinite, torch.tensor(losses)))
    )
    assert set(summary["skipped"]) <= {"missing id"}  # row 5 has no id: skipped if drawn
