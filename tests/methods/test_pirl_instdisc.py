"""Instance discrimination and PIRL: the jigsaw transform, the indexed data, one step of
each, Z, kNN on the bank, a few training steps, exact resume, the recipes."""

from __future__ import annotations

import doctest
import math
from pathlib import Path

import pytest
import torch
from helpers import (
    RECIPES,
    assert_resume_is_exact,
    tiny_vision_overrides,
)

from mmcontrast.config import load_recipe
from mmcontrast.methods import build_method, load_trained, pirl_jigsaw
from mmcontrast.methods.bank_method import MemoryBankMethod
from mmcontrast.methods.pirl_jigsaw import Jigsaw
from mmcontrast.pipeline import train

# ------------------------------------------------------------------ the jigsaw


def coordinates(b: int, size: int) -> torch.Tensor:
    """[B, 3, size, size] views whose channels hold each pixel's row, column and image."""
    rows = torch.arange(size).view(1, size, 1).expand(b, size, size)
    cols = torch.arange(size).view(1, 1, size).expand(b, size, size)
    image = torch.arange(b).view(b, 1, 1).expand(b, size, size)
    return torch.stack([rows, cols, image], dim=1).float()


@pytest.mark.parametrize(("size", "cell", "tile"), [(28, 9, 7), (224, 74, 56), (255, 85, 64)])
def test_jigsaw_tiles_have_the_papers_proportions(size: int, cell: int, tile: int) -> None:
    jigsaw = Jigsaw()
    assert jigsaw.tile_size(size, size) == (cell, cell, tile, tile)
    tiles, order = jigsaw(torch.randn(2, 3, size, size), torch.Generator().manual_seed(0))
    assert tiles.shape == (2, 9, 3, tile, tile) and order.shape == (2, 9)
    resized, _ = Jigsaw(patch_size=16)(torch.randn(2, 3, size, size), torch.Generator())
    assert resized.shape == (2, 9, 3, 16, 16)


def test_each_slot_holds_a_tile_of_the_cell_its_order_names() -> None:
    b, size, grid = 4, 30, 3
    cell = size // grid
    tiles, order = Jigsaw(grid=grid)(coordinates(b, size), torch.Generator().manual_seed(1))
    tile = tiles.shape[-1]
    for i in range(b):
        assert sorted(order[i].tolist()) == list(range(grid * grid))  # a permutation
        for slot in range(grid * grid):
            rows, cols, image = tiles[i, slot]
            assert (image == i).all()  # the image's own tiles
            r, c = divmod(int(order[i, slot]), grid)
            top, left = int(rows[0, 0]), int(cols[0, 0])
            # a contiguous tile inside its cell
            assert torch.equal(rows[:, 0], torch.arange(top, top + tile).float())
            assert torch.equal(cols[0], torch.arange(left, left + tile).float())
            assert r * cell <= top and top + tile <= (r + 1) * cell
            assert c * cell <= left and left + tile <= (c + 1) * cell
    assert len({tuple(o.tolist()) for o in order}) > 1  # a permutation per image


def test_jigsaw_draws_come_from_the_generator_only() -> None:
    views = torch.randn(3, 3, 28, 28)
    a, order_a = Jigsaw()(views, torch.Generator().manual_seed(5))
    b, order_b = Jigsaw()(views, torch.Generator().manual_seed(5))
    _, order_c = Jigsaw()(views, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and torch.equal(order_a, order_b)
    assert not torch.equal(order_a, order_c)
    # rows of a draw for a larger batch serve a share of it alike
    jigsaw = Jigsaw()
    drawn = jigsaw.draw(6, 28, 28, torch.Generator().manual_seed(7))
    whole = jigsaw.apply(torch.cat([views, views]), drawn)
    assert torch.equal(jigsaw.apply(views, drawn.rows(3, 6)), whole[3:])


def test_jigsaw_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="tile_fraction"):
        Jigsaw(tile_fraction=1.5)
    with pytest.raises(ValueError, match="patch_size"):
        Jigsaw(patch_size=0)
    with pytest.raises(ValueError, match="smaller than"):
        Jigsaw(grid=3)(torch.randn(1, 3, 2, 2), torch.Generator())
    result = doctest.testmod(pirl_jigsaw, extraglobs={"torch": torch})
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------ the methods


SMALL = {
    "instdisc": ["method_args.out_dim=16", "method_args.num_negatives=12"],
    "pirl": ["method_args.out_dim=16", "method_args.patch_dim=8", "method_args.num_negatives=12"],
}


def overrides(method: str, data: Path, output: Path, *extra: str) -> list[str]:
    return [
        f"method={method}",
        *SMALL[method],
        *tiny_vision_overrides(data, output),
        "train.log_every=1",
        "eval.knn_k=[3]",
        "eval.batch_size=16",
        *extra,
    ]


def build(method: str, data: Path, output: Path, *extra: str) -> MemoryBankMethod:
    built = build_method(load_recipe(None, overrides(method, data, output, *extra)))
    assert isinstance(built, MemoryBankMethod)
    return built


@pytest.mark.parametrize("name", ["instdisc", "pirl"])
@pytest.mark.parametrize("extra", [(), ("method_args.full_softmax=true",)], ids=["nce", "softmax"])
def test_one_step(name: str, extra: tuple[str, ...], labelled_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    method = build(name, labelled_dir, tmp_path, "method_args.fix_z=first_batch", *extra)
    assert method.bank.size == 0 and method.knn_bank() is None  # sized by the data
    dataset, collate = method.train_data()
    assert method.bank.size == len(dataset) == 32
    samples = [dataset[i] for i in (5, 0, 17, 3, 30, 9, 11, 2)]
    assert [s["index"] for s in samples] == [5, 0, 17, 3, 30, 9, 11, 2]
    batch = collate(samples)
    assert batch["indices"].tolist() == [5, 0, 17, 3, 30, 9, 11, 2]
    before = method.bank.features.clone()
    out = method(batch)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    heads = [p for n, p in method.named_parameters() if not n.startswith("backbone.")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.parameters())
    assert heads and method.bank.written.nonzero().flatten().tolist() == [0, 2, 3, 5, 9, 11, 17, 30]
    moved = (method.bank.features != before).any(dim=1)
    assert torch.equal(moved, method.bank.written)
    nce = not extra
    assert bool(method.log_z_ready.all()) == nce and int(method.bank.draws) == int(nce)
    if name == "pirl":
        assert {"jigsaw_loss", "image_loss"} <= set(out) and int(method.jigsaw_calls) == 1


@pytest.mark.parametrize("name", ["instdisc", "pirl"])
def test_first_visit_rows_start_as_their_images_embedding(
    name: str, labelled_dir: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    method = build(name, labelled_dir, tmp_path, "method_args.bank_init=first_visit")
    dataset, collate = method.train_data()
    random_rows = method.bank.features.clone()
    batch = collate([dataset[i] for i in range(8)])
    method.eval()  # the same embedding twice: no batch statistics, no dropout
    out = method(batch)
    head = method.knn_encoder()
    with torch.no_grad():
        embedding = torch.nn.functional.normalize(head(batch["views"][0]), dim=1)
    # filled before scoring, then moved towards the same embedding: the embedding itself
    torch.testing.assert_close(method.bank.features[:8], embedding, rtol=1e-5, atol=1e-6)
    assert torch.equal(method.bank.features[8:], random_rows[8:])
    # the same model, bank and draws with random rows scores another loss: the positive
    # scored above was the image's own embedding, not the random row
    torch.manual_seed(0)
    paper = build(name, labelled_dir, tmp_path)
    paper.train_data()
    assert torch.equal(paper.bank.features, random_rows)
    paper.eval()
    assert not torch.allclose(paper(batch)["loss"], out["loss"])
    second = method(batch)  # written rows keep their momentum update
    assert torch.isfinite(second["loss"])
    with pytest.raises(ValueError, match="bank_init"):
        build(name, labelled_dir, tmp_path, "method_args.bank_init=zeros")


def test_z_is_fixed_once_the_bank_is_full_or_follows_each_batch(
    labelled_dir: Path, tmp_path: Path
) -> None:
    method = build("instdisc", labelled_dir, tmp_path, "method_args.fix_z=filled_bank")
    dataset, collate = method.train_data()
    for start in range(0, 32, 8):
        method(collate([dataset[i] for i in range(start, start + 8)]))
        assert not bool(method.log_z_ready.any())
    assert bool(method.bank.written.all())
    method(collate([dataset[i] for i in range(8)]))
    assert bool(method.log_z_ready.all()) and float(method.log_z[0]) > math.log(32)
    never = build("instdisc", labelled_dir, tmp_path)  # the default: each batch's Z
    dataset, collate = never.train_data()
    for _ in range(5):
        never(collate([dataset[i] for i in range(8)]))
    assert not bool(never.log_z_ready.any())


def test_knn_bank_holds_the_written_rows_in_the_heads_space(
    labelled_dir: Path, tmp_path: Path
) -> None:
    method = build("pirl", labelled_dir, tmp_path)
    dataset, collate = method.train_data()
    method(collate([dataset[i] for i in range(4, 12)]))
    bank = method.knn_bank()
    assert bank is not None
    assert bank.features.shape == (8, 16) and bank.class_labels == dataset.table.class_names
    assert torch.equal(bank.labels, dataset.table.labels()[4:12])
    method.eval()
    pixels = collate([dataset[i] for i in range(4, 12)])["views"][0]
    assert bank.encoder(pixels).shape == (8, 16)  # f(backbone(x)): the rows' space


def test_bad_settings_are_refused(labelled_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="num_negatives"):
        build("instdisc", labelled_dir, tmp_path, "method_args.num_negatives=0")
    with pytest.raises(ValueError, match="fix_z"):
        build("instdisc", labelled_dir, tmp_path, "method_args.fix_z=sometimes")
    with pytest.raises(ValueError, match="loss_weight"):
        build("pirl", labelled_dir, tmp_path, "method_args.loss_weight=1.5")
    method = build("instdisc", labelled_dir, tmp_path)
    dataset, collate = method.train_data()
    batch = collate([dataset[i] for i in range(8)])
    del batch["indices"]
    with pytest.raises(KeyError, match="indices"):
        method(batch)


@pytest.mark.parametrize("name", ["instdisc", "pirl"])
def test_a_few_training_steps_then_evaluation_on_the_bank(
    name: str, labelled_dir: Path, tmp_path: Path
) -> None:
    summary = train(load_recipe(None, overrides(name, labelled_dir, tmp_path, "train.max_steps=6")))
    losses = [h["loss"] for h in summary["history"]]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert "knn3_acc1" in summary["eval"]
    method = load_trained(tmp_path)  # a bank built empty takes the saved size
    assert isinstance(method, MemoryBankMethod) and method.bank.size == 32
    assert bool(method.bank.written.all()) and method.knn_bank() is None  # no class names here


@pytest.mark.slow
def test_pirl_resume_is_exact(labelled_dir: Path, tmp_path: Path) -> None:
    """Stop mid-epoch 2 and resume: same losses and weights; bank, draws, jigsaw calls, Z."""
    _, a = assert_resume_is_exact(overrides("pirl", labelled_dir, tmp_path), tmp_path)
    assert int(a["jigsaw_calls"]) == 8 and int(a["bank.draws"]) == 8


@pytest.mark.parametrize("name", ["instdisc", "pirl"])
def test_the_recipes_build(name: str, tmp_path: Path) -> None:
    fashion = load_recipe(RECIPES / f"{name}-fashion-mnist.yaml")
    assert fashion.method == name and fashion.model.vision.name == "resnet_small"
    imagenet = load_recipe(
        RECIPES / f"{name}-imagenet-resnet50.yaml", [f"train.output_dir={tmp_path}"]
    )
    method = build_method(imagenet)
    assert isinstance(method, MemoryBankMethod) and method.bank.size == 0  # sized by the data
    assert method.args.temperature == 0.07 and method.args.bank_momentum == 0.5
