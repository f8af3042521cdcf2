"""Losses with ``gather_distributed`` on 2 real processes (gloo, CPU) equal 1 process.

Two processes each see their slice of a batch; every process's loss must equal the loss
of the whole batch in one process, and the gradient of every input slice must equal the
matching slice of the one-process gradient (shared tensors such as the logit scale:
the gradients summed over processes, which is what an all-reduce of gradients sums).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import WORLD, run_in_gloo_processes, run_shares
from torch import Tensor

from mmcontrast import distributed, losses


def _randn(seed: int, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _unit(seed: int, n: int, d: int) -> Tensor:
    return F.normalize(_randn(seed, n, d), dim=-1)


@dataclass
class Case:
    """A loss, a whole batch (``batch`` keys are split by rows), and the rows per process."""

    id: str
    make_loss: Callable[[bool], torch.nn.Module]
    batch: Callable[[], dict[str, Any]]
    shared: Callable[[], dict[str, Any]] = dict
    sizes: tuple[int, int] = (4, 4)
    extra: dict[str, Any] = field(default_factory=dict)


def _image_text(n: int) -> dict[str, Any]:
    return {"image_features": _unit(1, n, 6), "text_features": _unit(2, n, 6)}


def _scale() -> dict[str, Any]:
    return {"logit_scale": torch.tensor(8.0, dtype=torch.float64)}


def _scale_bias() -> dict[str, Any]:
    return {**_scale(), "logit_bias": torch.tensor(-2.0, dtype=torch.float64)}


def _supcon_batch(n: int, labelled: bool) -> Callable[[], dict[str, Any]]:
    def make() -> dict[str, Any]:
        batch: dict[str, Any] = {"features": _randn(3, n, 2, 5)}
        if labelled:
            batch["labels"] = torch.tensor([0, 1, 2, 0, 1, 3, 4, 0])[:n]
        return batch

    return make


def _labelled_image_text(n: int) -> dict[str, Any]:
    return {**_image_text(n), "labels": torch.tensor([0, 1, 2, 0, 1, 3, 0, 2])[:n]}


def _ids_image_text(n: int) -> dict[str, Any]:
    """Pairs with global ids shared across the two processes' slices (and within them)."""
    return {**_image_text(n), "ids": torch.tensor([10, 11, 12, 10, 11, 13, 10, 12])[:n]}


CASES = [
    Case("clip", lambda g: losses.ClipLoss(gather_distributed=g), lambda: _image_text(8), _scale),
    Case(
        "clip-labels",
        lambda g: losses.ClipLoss(gather_distributed=g),
        lambda: _labelled_image_text(8),
        _scale,
    ),
    Case(
        "clip-local-labels-unequal",
        lambda g: losses.ClipLoss(gather_distributed=g, local_loss=True),
        lambda: _labelled_image_text(8),
        _scale,
        sizes=(3, 5),
    ),
    Case(
        "clip-local-unequal",
        lambda g: losses.ClipLoss(gather_distributed=g, local_loss=True),
        lambda: _image_text(8),
        _scale,
        sizes=(3, 5),
    ),
    Case(
        "clip-chunked",
        lambda g: losses.ClipLoss(gather_distributed=g, chunk_size=3),
        lambda: _image_text(8),
        _scale,
    ),
    Case(
        "clip-local-chunked-unequal",
        lambda g: losses.ClipLoss(gather_distributed=g, local_loss=True, chunk_size=2),
        lambda: _image_text(8),
        _scale,
        sizes=(3, 5),
    ),
    Case(
        "clip-local-chunked-empty-rank",
        lambda g: losses.ClipLoss(gather_distributed=g, local_loss=True, chunk_size=3),
        lambda: _image_text(8),
        _scale,
        sizes=(0, 8),
    ),
    Case(
        "siglip",
        lambda g: losses.SigLipLoss(gather_distributed=g),
        lambda: _image_text(8),
        _scale_bias,
    ),
    Case(
        "siglip-chunked-unequal",
        lambda g: losses.SigLipLoss(gather_distributed=g, chunk_size=3),
        lambda: _image_text(8),
        _scale_bias,
        sizes=(5, 3),
    ),
    Case(
        "unicl",
        lambda g: losses.UniClLoss(gather_distributed=g),
        lambda: _ids_image_text(8),
        _scale,
    ),
    Case(
        "unicl-unequal",
        lambda g: losses.UniClLoss(gather_distributed=g),
        lambda: _ids_image_text(8),
        _scale,
        sizes=(3, 5),
    ),
    Case(
        "unicl-empty-rank",
        lambda g: losses.UniClLoss(gather_distributed=g),
        lambda: _ids_image_text(8),
        _scale,
        sizes=(0, 8),
    ),
    Case(
        "siglip-multi",
        lambda g: losses.SigLipMultiPositiveLoss(gather_distributed=g),
        lambda: _ids_image_text(8),
        _scale_bias,
    ),
    Case(
        "siglip-multi-unequal",
        lambda g: losses.SigLipMultiPositiveLoss(gather_distributed=g),
        lambda: _ids_image_text(8),
        _scale_bias,
        sizes=(5, 3),
    ),
    Case(
        "infonce-inbatch",
        lambda g: losses.InfoNCELoss(0.1, gather_distributed=g),
        lambda: {"query": _randn(4, 8, 6), "positive_key": _randn(5, 8, 6)},
    ),
    Case(
        "infonce-queue",
        lambda g: losses.InfoNCELoss(0.2, gather_distributed=g),
        lambda: {"query": _randn(4, 8, 6), "positive_key": _randn(5, 8, 6)},
        lambda: {"negative_keys": _randn(6, 16, 6)},
    ),
    Case(
        "ntxent-unequal",
        lambda g: losses.NTXentLoss(0.5, gather_distributed=g),
        lambda: {"z0": _randn(7, 8, 5), "z1": _randn(8, 8, 5)},
        sizes=(3, 5),
    ),
    Case(
        "supcon-labels", lambda g: losses.SupConLoss(gather_distributed=g), _supcon_batch(8, True)
    ),
    Case(
        "supcon-in-unlabelled-unequal",
        lambda g: losses.SupConLoss(0.2, variant="in", gather_distributed=g),
        _supcon_batch(8, False),
        sizes=(5, 3),
    ),
    Case(
        "supcon-empty-rank",
        lambda g: losses.SupConLoss(gather_distributed=g),
        _supcon_batch(8, True),
        sizes=(0, 8),
    ),
    Case(
        "swav-empty-rank",
        lambda g: losses.SwAVLoss(gather_distributed=g),
        lambda: {"high_res_scores": [_unit(11, 6, 5), _unit(12, 6, 5)]},
        sizes=(6, 0),
    ),
    Case(
        "barlow",
        lambda g: losses.BarlowTwinsLoss(0.1, gather_distributed=g),
        lambda: {"z_a": _randn(9, 8, 5), "z_b": _randn(10, 8, 5)},
    ),
    Case(
        "swav-multicrop",
        lambda g: losses.SwAVLoss(gather_distributed=g),
        lambda: {
            "high_res_scores": [_unit(11, 8, 5), _unit(12, 8, 5)],
            "low_res_scores": [_unit(13, 8, 5), _unit(14, 8, 5)],
        },
    ),
]


def _rows(value: Any, start: int, stop: int) -> Any:
    if isinstance(value, list):
        return [v[start:stop] for v in value]
    return value[start:stop]


def _float_leaves(inputs: dict[str, Any]) -> list[Tensor]:
    found = []
    for value in inputs.values():
        for t in value if isinstance(value, list) else [value]:
            if t.is_floating_point():
                found.append(t)
    return found


def _prepared(values: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    def convert(t: Tensor) -> Tensor:
        return t.to(dtype).requires_grad_(True) if t.is_floating_point() else t

    return {
        k: [convert(t) for t in v] if isinstance(v, list) else convert(v) for k, v in values.items()
    }


def run_case(case: Case, dtype: torch.dtype, start: int, stop: int, gather: bool) -> dict[str, Any]:
    """Loss value and gradients of this process's rows (all rows when start=0, stop=N)."""
    batch = _prepared({k: _rows(v, start, stop) for k, v in case.batch().items()}, dtype)
    shared = _prepared(case.shared(), dtype)
    loss = case.make_loss(gather)(**batch, **shared)
    loss.backward()
    return {
        "value": loss.detach(),
        "batch_grads": [t.grad for t in _float_leaves(batch)],
        "shared_grads": [t.grad for t in _float_leaves(shared)],
    }


def _job(rank: int) -> dict[tuple[str, str], dict[str, Any]]:
    assert distributed.world_size() == WORLD and distributed.rank() == rank
    return run_shares(rank, CASES, run_case)


@pytest.fixture(scope="module")
def per_process(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    root = tmp_path_factory.mktemp("dist")
    return run_in_gloo_processes(_job, root)


TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-5}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_two_processes_equal_one_process(
    per_process: list[dict[str, Any]], case: Case, dtype: torch.dtype
) -> None:
    whole = run_case(case, dtype, 0, sum(case.sizes), gather=True)  # no process group here
    parts = [results[(case.id, str(dtype))] for results in per_process]
    tol = TOLERANCE[dtype]
    for part in parts:
        torch.testing.assert_close(part["value"], whole["value"], atol=tol, rtol=tol)
    for i, expected in enumerate(whole["batch_grads"]):
        got = torch.cat([part["batch_grads"][i] for part in parts])
        torch.testing.assert_close(got, expected, atol=tol, rtol=tol)
    for i, expected in enumerate(whole["shared_grads"]):
        if expected is None:  # a shared input without gradient (e.g. a queue of keys)
            continue
        got = sum(part["shared_grads"][i] for part in parts)
        torch.testing.assert_close(got, expected, atol=tol, rtol=tol)


def test_without_a_process_group_gathering_is_a_no_op() -> None:
    x = torch.randn(3, 2)
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.gather_with_grad(x) is x and distributed.gather(x) is x
    assert distributed.local_offset(3, x.device) == (0, 3)
