"""MoCo's shuffling BN across 2 gloo processes (``distributed.shuffled_forward``)."""

from __future__ import annotations

import pytest
import torch
from helpers import WORLD, run_in_gloo_processes
from torch import nn

from mmcontrast import distributed

BATCH = 6  # rows per process


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))


def inputs() -> torch.Tensor:
    return torch.randn(WORLD * BATCH, 4, generator=torch.Generator().manual_seed(1))


def _job(rank: int) -> dict[str, torch.Tensor]:
    assert distributed.world_size() == WORLD
    model, x = network().train(), inputs()[rank * BATCH : (rank + 1) * BATCH]
    torch.manual_seed(10 + rank)  # rank 0's generator draws the permutation
    shuffled = distributed.shuffled_forward(model, x)
    evaluated = distributed.shuffled_forward(network().eval(), x)
    torch.manual_seed(10)
    expected_order = torch.randperm(WORLD * BATCH)  # what rank 0 drew
    return {"train": shuffled, "eval": evaluated, "order": expected_order}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    root = tmp_path_factory.mktemp("shuffle_bn")
    return run_in_gloo_processes(_job, root)


@pytest.mark.slow
def test_each_row_gets_the_output_of_the_process_its_share_went_to(results: list[dict]) -> None:
    """Training mode: BatchNorm statistics come from the rank's share of the permuted
    batch, and each output returns to its own process and row."""
    x, model = inputs(), network().train()
    order = results[0]["order"]
    expected = torch.empty(WORLD * BATCH, 3)
    for share in range(WORLD):
        rows = order[share * BATCH : (share + 1) * BATCH]
        expected[rows] = model(x[rows]).detach()
    got = torch.cat([r["train"] for r in results])
    torch.testing.assert_close(got, expected)
    plain = torch.cat([model(x[r * BATCH : (r + 1) * BATCH]).detach() for r in range(WORLD)])
    assert not torch.allclose(got, plain, atol=1e-3)  # other statistics than its own batch's


@pytest.mark.slow
def test_in_eval_mode_the_shuffle_changes_nothing(results: list[dict]) -> None:
    model = network().eval()
    torch.testing.assert_close(torch.cat([r["eval"] for r in results]), model(inputs()).detach())


def test_one_process_is_a_plain_call() -> None:
    model, x = network().train(), inputs()
    torch.testing.assert_close(distributed.shuffled_forward(model, x), model(x).detach())
