"""The memory bank: its update rule, seeded draws, sizing and loading; 2 gloo processes keep
equal banks, equal to 1 process with the whole batch; training resumes exactly with it."""

from __future__ import annotations

import doctest
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import (
    WORLD,
    assert_resume_is_exact,
    run_in_gloo_processes,
    run_result,
    tiny_vision_overrides,
    train_in_one_process,
    train_worker,
)

from mmcontrast import distributed
from mmcontrast.losses.nce import NCELoss
from mmcontrast.models import memory_bank
from mmcontrast.models.memory_bank import MemoryBank

# ------------------------------------------------------------------ the module


def test_update_moves_rows_towards_the_features_with_momentum() -> None:
    bank = MemoryBank(6, 4, momentum=0.5, seed=0)
    before = bank.features.clone()
    features = torch.tensor([[3.0, 0.0, 0.0, 4.0], [0.0, 1.0, 1.0, 0.0]])
    bank.update(torch.tensor([1, 4]), features)
    for row, f in zip([1, 4], features, strict=True):
        expected = F.normalize(0.5 * before[row] + 0.5 * F.normalize(f, dim=0), dim=0)
        torch.testing.assert_close(bank.features[row], expected)
    untouched = [0, 2, 3, 5]
    assert torch.equal(bank.features[untouched], before[untouched])
    assert bank.written.tolist() == [False, True, False, False, True, False]
    torch.testing.assert_close(bank.features.norm(dim=1), torch.ones(6))


def test_momentum_zero_replaces_and_a_repeated_index_takes_its_last_feature() -> None:
    bank = MemoryBank(4, 2, momentum=0.0)
    bank.update(torch.tensor([2, 0, 2]), torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, -3.0]]))
    assert bank.features[2].tolist() == [0.0, -1.0] and bank.features[0].tolist() == [0.0, 1.0]


def test_fill_unwritten_sets_new_rows_and_keeps_written_ones() -> None:
    bank = MemoryBank(5, 2, momentum=0.5, seed=0)
    bank.update(torch.tensor([1]), torch.tensor([[0.0, 2.0]]))
    before = bank.features.clone()
    features = torch.tensor([[3.0, 4.0], [5.0, 0.0], [0.0, -2.0], [-1.0, 0.0]])
    bank.fill_unwritten(torch.tensor([3, 1, 4, 3]), features)
    assert bank.features[3].tolist() == [-1.0, 0.0]  # a repeated new row: its last feature
    assert bank.features[4].tolist() == [0.0, -1.0]
    assert torch.equal(bank.features[[0, 1, 2]], before[[0, 1, 2]])  # written or not given
    assert bank.written.tolist() == [False, True, False, True, True]
    bank.update(torch.tensor([4]), torch.tensor([[0.0, -7.0]]))  # momentum from its own row
    assert bank.features[4].tolist() == [0.0, -1.0]


def test_starts_as_seeded_random_unit_vectors() -> None:
    a, b, c = MemoryBank(50, 16, seed=1), MemoryBank(50, 16, seed=1), MemoryBank(50, 16, seed=2)
    assert torch.equal(a.features, b.features) and not torch.equal(a.features, c.features)
    torch.testing.assert_close(a.features.norm(dim=1), torch.ones(50))
    assert a.features.mean(0).abs().max() < 0.3  # no common direction
    assert not a.written.any() and (a.labels == -1).all()


def test_draws_are_uniform_seeded_and_restored_by_the_state() -> None:
    bank = MemoryBank(10, 4, seed=3)
    first = bank.sample(200, 50)
    assert first.shape == (200, 50) and int(first.min()) == 0 and int(first.max()) == 9
    counts = torch.bincount(first.flatten(), minlength=10).float()
    assert (counts / counts.mean() - 1).abs().max() < 0.1  # 10,000 draws per row
    assert int(bank.draws) == 1 and not torch.equal(bank.sample(200, 50), first)
    again = MemoryBank(10, 4, seed=3)
    assert torch.equal(again.sample(200, 50), first)  # same seed, same draw number
    restored = MemoryBank(0, 4, seed=3)
    restored.load_state_dict(bank.state_dict())
    assert torch.equal(restored.sample(3, 5), bank.sample(3, 5))


def test_an_empty_bank_takes_the_loaded_size_and_a_sized_one_must_match() -> None:
    bank = MemoryBank(8, 4)
    bank.update(torch.tensor([5]), torch.ones(1, 4))
    bank.labels.copy_(torch.arange(8))
    empty = MemoryBank(0, 4)
    empty.load_state_dict(bank.state_dict())
    for name in ("features", "written", "labels", "draws"):
        assert torch.equal(getattr(empty, name), getattr(bank, name)), name
    with pytest.raises(RuntimeError, match="checkpoint's memory bank holds"):
        MemoryBank(9, 4).load_state_dict(bank.state_dict())


def test_resize_and_bad_arguments() -> None:
    bank = MemoryBank(0, 3)
    with pytest.raises(ValueError, match="empty"):
        bank.sample(1, 1)
    bank.resize(5)
    assert bank.features.shape == (5, 3) and bank.written.shape == bank.labels.shape == (5,)
    with pytest.raises(ValueError, match="outside"):
        bank.update(torch.tensor([5]), torch.ones(1, 3))
    with pytest.raises(ValueError, match="features"):
        bank.update(torch.tensor([1, 2]), torch.ones(1, 3))
    with pytest.raises(ValueError, match="momentum"):
        MemoryBank(4, 3, momentum=1.0)
    with pytest.raises(ValueError, match="size"):
        MemoryBank(-1, 3)


def test_the_module_example_runs() -> None:
    result = doctest.testmod(memory_bank, extraglobs={"torch": torch})
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------ 2 processes

ROWS = torch.tensor([0, 3, 5, 3, 7, 0, 9, 2])  # 3 and 0 twice, once on each process
FEATURES = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
SECOND = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
NEW_ROWS = torch.tensor([1, 4, 3, 6, 8, 1, 0, 4])  # 1 and 4 on both processes; 3 and 0 written
THIRD = torch.randn(8, 4, generator=torch.Generator().manual_seed(2))


def _bank_job(rank: int) -> dict:
    mine = slice(4 * rank, 4 * rank + 4)
    bank = MemoryBank(10, 4, momentum=0.5, seed=0)
    bank.update(ROWS[mine], FEATURES[mine])
    bank.update(ROWS.flip(0)[mine], SECOND[mine])
    bank.fill_unwritten(NEW_ROWS[mine], THIRD[mine])
    loss_fn = NCELoss(0.1)
    negatives = torch.arange(10).repeat(8, 1)
    log_z = loss_fn.estimate_log_z(FEATURES[mine], bank.features, ROWS[mine], negatives[mine])
    return {
        "state": bank.state_dict(),
        "own": bank.sample(2, 3),
        "shared": bank.sample(2, 3, shared=True),
        "log_z": log_z,
        "world": distributed.world_size(),
    }


@pytest.fixture(scope="module")
def two_banks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    root = tmp_path_factory.mktemp("banks")
    return run_in_gloo_processes(_bank_job, root)


def test_two_processes_keep_equal_banks_equal_to_one_process(two_banks: list[dict]) -> None:
    one = MemoryBank(10, 4, momentum=0.5, seed=0)
    one.update(ROWS, FEATURES)
    one.update(ROWS.flip(0), SECOND)
    one.fill_unwritten(NEW_ROWS, THIRD)
    assert two_banks[0]["world"] == WORLD
    for result in two_banks:
        for name, value in one.state_dict().items():
            if name != "draws":
                assert torch.equal(result["state"][name], value), name
    assert int(one.written.sum()) == 10  # rows 0, 2, 3, 5, 7, 9, then 1, 4, 6, 8 filled
    # each process draws its own negatives, unless shared by the batch
    assert not torch.equal(two_banks[0]["own"], two_banks[1]["own"])
    assert torch.equal(two_banks[0]["shared"], two_banks[1]["shared"])
    # NCE's Z from both processes' scores: one value, that of the whole batch
    negatives = torch.arange(10).repeat(8, 1)
    expected = NCELoss(0.1).estimate_log_z(FEATURES, one.features, ROWS, negatives)
    for result in two_banks:
        torch.testing.assert_close(result["log_z"], expected)


# ------------------------------------------------------------------ training with a bank


def instdisc_run(data: Path, output: Path, *extra: str) -> list[str]:
    return [
        "method=instdisc",
        "method_args.out_dim=16",
        "method_args.num_negatives=12",
        *tiny_vision_overrides(data, output),
        "train.log_every=1",
        "eval.at_end=false",
        "eval.views_png=false",
        *extra,
    ]


@pytest.mark.slow
def test_resume_is_exact_with_the_bank(labelled_dir: Path, tmp_path: Path) -> None:
    """Stop mid-epoch 2 (the bank full, Z just fixed) and resume: same losses, same weights,
    bank, draws and Z."""
    common = instdisc_run(labelled_dir, tmp_path, "method_args.fix_z=filled_bank")
    _, a = assert_resume_is_exact(common, tmp_path)
    assert bool(a["bank.written"].all()) and int(a["bank.draws"]) == 8
    assert bool(a["log_z_ready"].all())  # fixed at step 5, the first after a full bank


VIT = (
    "{hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64, "
    "image_size: 16, patch_size: 8}"
)


def vit_run(data: Path, batch: int, *extra: str) -> list[str]:
    """A tiny ViT (no BatchNorm): 2 processes x B train as 1 process x 2B, SGD."""
    return [
        *instdisc_run(data, Path("unused")),
        "model.vision.source=hf",
        "model.vision.name=vit",
        "model.vision.pretrained=false",
        f"model.vision.config_overrides={VIT}",
        "data.max_train_samples=16",
        f"train.batch_size={batch}",
        "train.max_steps=3",  # epoch 1 fills the bank; step 3 fixes Z
        "method_args.fix_z=filled_bank",
        "train.optimizer=sgd",
        "train.lr=0.2",
        "train.max_grad_norm=null",
        *extra,
    ]


CASES = {
    "instdisc-shared-nce": ("method_args.shared_negatives=true",),
    "instdisc-softmax": ("method_args.full_softmax=true",),
    "pirl-shared-nce": (
        "method=pirl",
        "method_args.patch_dim=8",
        "method_args.patch_size=16",
        "method_args.shared_negatives=true",
    ),
}


@pytest.fixture(scope="module")
def trained_on_two(labelled_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("two_processes")
    cases = {name: (None, vit_run(labelled_dir, 4, *extra)) for name, extra in CASES.items()}
    mp.spawn(train_worker, args=(cases, str(root)), nprocs=WORLD, join=True)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_train_as_one_with_the_whole_batch(
    case: str, trained_on_two: Path, labelled_dir: Path, tmp_path: Path
) -> None:
    """The banks gather both processes' rows; with negatives shared by the batch (or none:
    the full softmax) and the jigsaw drawn for the whole batch, losses and weights, bank
    included, equal one process with batch 2B."""
    losses, weights = train_in_one_process(None, vit_run(labelled_dir, 8, *CASES[case]), tmp_path)
    got_losses, got_weights = run_result(trained_on_two / case)
    assert len(losses) == 3 and got_losses == pytest.approx(losses, abs=1e-5, rel=1e-5)
    assert bool(got_weights["bank.written"].all())  # rank 0's bank holds rank 1's rows
    assert got_weights.keys() == weights.keys()
    for key, value in weights.items():
        if value.is_floating_point():
            atol = 1e-5 * max(1.0, float(value.abs().max()))
            torch.testing.assert_close(got_weights[key], value, atol=atol, rtol=0, msg=key)
        else:  # written flags, labels, draw and call counts
            assert torch.equal(got_weights[key], value), key
