"""Distillation losses with ``gather_distributed`` on 2 real processes (gloo, CPU) equal 1.

Each process sees its slice of the student's and the teacher's features; every process's
loss must equal the loss of the whole batch in one process, the gradient of each student
feature slice the matching slice of the one-process gradient, and the student's logit
scale, summed over processes, its one-process gradient. The teacher gets no gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import WORLD, run_in_gloo_processes, run_shares
from torch import Tensor

from mmcontrast import distributed, losses

STUDENT = ("image_features", "text_features")
TEACHER = ("teacher_image_features", "teacher_text_features")


def _unit(seed: int, n: int, d: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


@dataclass
class Case:
    """A loss, the sizes of the student's and teacher's embeddings, and the rows per process."""

    id: str
    make_loss: Callable[[bool], torch.nn.Module]
    d: int = 6
    d_teacher: int = 6
    sizes: tuple[int, int] = (4, 4)
    teacher_scale_as_float: bool = False


CASES = [
    Case("relational", lambda g: losses.RelationalDistillLoss(gather_distributed=g), d_teacher=9),
    Case(
        "relational-unequal",
        lambda g: losses.RelationalDistillLoss(gather_distributed=g),
        sizes=(3, 5),
        teacher_scale_as_float=True,
    ),
    Case(
        "relational-empty-rank",
        lambda g: losses.RelationalDistillLoss(gather_distributed=g),
        sizes=(0, 8),
    ),
    Case("clip-kd", lambda g: losses.ClipDistillLoss(gather_distributed=g), d_teacher=10),
    Case(
        "clip-kd-all-terms-unequal",
        lambda g: losses.ClipDistillLoss(0.5, 2.0, 1.5, gather_distributed=g),
        sizes=(5, 3),
    ),
    Case(
        "clip-kd-features-only-unequal",
        lambda g: losses.ClipDistillLoss(0.0, 1.0, 0.0, gather_distributed=g),
        sizes=(2, 6),
    ),
    Case(
        "clip-kd-all-terms-empty-rank",
        lambda g: losses.ClipDistillLoss(1.0, 3.0, 1.0, gather_distributed=g),
        sizes=(8, 0),
        teacher_scale_as_float=True,
    ),
]


def _batch(case: Case) -> dict[str, Tensor]:
    n = sum(case.sizes)
    return {
        "image_features": _unit(1, n, case.d),
        "text_features": _unit(2, n, case.d),
        "teacher_image_features": _unit(3, n, case.d_teacher),
        "teacher_text_features": _unit(4, n, case.d_teacher),
    }


def run_case(case: Case, dtype: torch.dtype, start: int, stop: int, gather: bool) -> dict[str, Any]:
    """Loss value and gradients of this process's rows (all rows when start=0, stop=N)."""
    rows = {k: v[start:stop].to(dtype) for k, v in _batch(case).items()}
    for key in (*STUDENT, *TEACHER):  # the teacher asks for gradient too: it must get none
        rows[key].requires_grad_(True)
    scale = torch.tensor(8.0, dtype=dtype, requires_grad=True)
    teacher_scale: Tensor | float = 30.0
    if not case.teacher_scale_as_float:
        teacher_scale = torch.tensor(30.0, dtype=dtype, requires_grad=True)
    loss = case.make_loss(gather)(**rows, logit_scale=scale, teacher_logit_scale=teacher_scale)
    loss.backward()
    teacher_grads = [rows[k].grad for k in TEACHER]
    if isinstance(teacher_scale, Tensor):
        teacher_grads.append(teacher_scale.grad)
    return {
        "value": loss.detach(),
        "student_grads": [rows[k].grad for k in STUDENT],
        "scale_grad": scale.grad,
        "teacher_grads": teacher_grads,
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
    assert whole["value"].item() > 0.1  # a loss worth comparing
    for part in parts:
        torch.testing.assert_close(part["value"], whole["value"], atol=0, rtol=tol)
        assert all(g is None for g in part["teacher_grads"])
    for i, expected in enumerate(whole["student_grads"]):
        got = torch.cat([part["student_grads"][i] for part in parts])
        scale = expected.abs().max().item()
        assert scale > 1e-3
        torch.testing.assert_close(got, expected, atol=tol * scale, rtol=tol)
    if whole["scale_grad"] is None:  # feature distillation alone does not use the scale
        assert all(part["scale_grad"] is None for part in parts)
        return
    got_scale = sum(part["scale_grad"] for part in parts if part["scale_grad"] is not None)
    torch.testing.assert_close(got_scale, whole["scale_grad"], atol=0, rtol=tol)
