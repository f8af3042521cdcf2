"""DINO's loss against a float64 reference written from the paper's Algorithm 1, its
gradient, the constant teacher, and the center update (in 1 and in 2 real processes)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import run_in_gloo_processes
from torch import Tensor

from mmcontrast import distributed
from mmcontrast.losses.dino import DINOLoss, update_center


def randn(seed: int, *shape: int, scale: float = 1.0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, generator=g, dtype=torch.float64)


def views(count: int, b: int, k: int, seed: int) -> list[Tensor]:
    return [randn(seed + i, b, k, scale=2.0) for i in range(count)]


def H(t: Tensor, s: Tensor, tps: float, tpt: float, center: Tensor) -> Tensor:
    """Algorithm 1's ``H``, sample by sample and prototype by prototype (float64)."""
    t = t.detach()
    total = torch.zeros((), dtype=torch.float64)
    for row_t, row_s in zip(t, s, strict=True):
        q = torch.exp((row_t - center) / tpt)
        q = q / q.sum()  # teacher centering and sharpening
        p = torch.exp(row_s / tps)
        p = p / p.sum()
        total = total - sum(q[k] * torch.log(p[k]) for k in range(len(q)))
    return total / len(t)


def reference(
    student: list[Tensor], teacher: list[Tensor], center: Tensor, tps: float, tpt: float
) -> Tensor:
    """The pseudocode's ``H(t1, s2) / 2 + H(t2, s1) / 2``, extended as the paper's code does
    to every (teacher view i, student view v != i) pair, averaged over the pairs."""
    terms = [
        H(t, s, tps, tpt, center)
        for i, t in enumerate(teacher)
        for v, s in enumerate(student)
        if v != i
    ]
    return sum(terms) / len(terms)


@pytest.mark.parametrize(
    ("globals_", "locals_", "tps", "tpt"),
    [(2, 0, 0.1, 0.04), (2, 3, 0.1, 0.07), (2, 2, 0.2, 0.05), (1, 2, 0.1, 0.04)],
)
def test_matches_the_float64_reference(globals_: int, locals_: int, tps: float, tpt: float) -> None:
    student = views(globals_ + locals_, 5, 7, 0)
    teacher = views(globals_, 5, 7, 50)
    center = randn(99, 7, scale=0.5)
    loss = DINOLoss(student_temperature=tps, teacher_temperature=tpt)
    expected = reference(student, teacher, center, tps, tpt)
    assert loss(student, teacher, center).item() == pytest.approx(expected.item(), rel=1e-12)
    # a temperature given to forward replaces the constructor's (the warm-up schedule)
    other = DINOLoss(student_temperature=tps, teacher_temperature=1.0)
    got = other(student, teacher, center, teacher_temperature=tpt)
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)


def test_two_views_is_algorithm_1() -> None:
    s1, s2, t1, t2 = views(4, 6, 5, 3)
    center = randn(9, 5)
    expected = H(t1, s2, 0.1, 0.04, center) / 2 + H(t2, s1, 0.1, 0.04, center) / 2
    got = DINOLoss()([s1, s2], [t1, t2], center)
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)


def test_student_gradient_matches_reference_and_gradcheck() -> None:
    student = [v.requires_grad_(True) for v in views(4, 3, 5, 1)]
    teacher, center = views(2, 3, 5, 20), randn(30, 5)
    loss = DINOLoss()
    ours = torch.autograd.grad(loss(student, teacher, center), student)
    theirs = torch.autograd.grad(reference(student, teacher, center, 0.1, 0.04), student)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)
    assert torch.autograd.gradcheck(lambda *s: loss(list(s), teacher, center), tuple(student))


def test_the_teacher_and_the_center_get_no_gradient() -> None:
    student = [v.requires_grad_(True) for v in views(3, 4, 6, 0)]
    teacher = [v.requires_grad_(True) for v in views(2, 4, 6, 10)]
    center = randn(5, 6).requires_grad_(True)
    value = DINOLoss()(student, teacher, center)
    grads = torch.autograd.grad(value, [*student, *teacher, center], allow_unused=True)
    assert all(g is not None for g in grads[:3])
    assert all(g is None for g in grads[3:])


def test_a_uniform_student_scores_log_k() -> None:
    """Whatever the teacher's target, a student that spreads evenly pays log K."""
    k = 11
    student = [torch.full((4, k), 3.0, dtype=torch.float64) for _ in range(3)]
    teacher, center = views(2, 4, k, 0), randn(1, k)
    assert DINOLoss()(student, teacher, center).item() == pytest.approx(math.log(k), rel=1e-12)


def test_half_precision_runs_in_float32() -> None:
    student = [v.bfloat16() for v in views(4, 8, 64, 0)]
    teacher = [v.bfloat16() for v in views(2, 8, 64, 10)]
    center = torch.zeros(64)
    value = DINOLoss()(student, teacher, center)
    assert value.dtype == torch.float32 and torch.isfinite(value)
    expected = DINOLoss()([s.double() for s in student], [t.double() for t in teacher], center)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"student_temperature": 0.0}, "student_temperature"),
        ({"teacher_temperature": -0.04}, "teacher_temperature"),
        ({"student_temperature": math.inf}, "student_temperature"),
    ],
)
def test_bad_temperatures_are_value_errors(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        DINOLoss(**kwargs)


def test_bad_inputs_are_value_errors() -> None:
    loss, center = DINOLoss(), torch.zeros(5)
    two = [torch.randn(3, 5) for _ in range(2)]
    with pytest.raises(ValueError, match="two student views"):
        loss(two[:1], two[:1], center)  # no pair of different views
    with pytest.raises(ValueError, match="two student views"):
        loss(two, [*two, two[0]], center)  # a teacher view the student did not see
    with pytest.raises(ValueError, match="at least one teacher view"):
        loss(two, [], center)
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        loss([*two, torch.randn(3, 4)], two, center)
    with pytest.raises(ValueError, match="teacher_temperature"):
        loss([*two, two[0]], two, center, teacher_temperature=0.0)


# ----------------------------------------------------------------- the center


def test_center_update_value() -> None:
    center = randn(0, 6)
    t1, t2 = randn(1, 4, 6), randn(2, 4, 6)
    expected = 0.9 * center + 0.1 * torch.cat([t1, t2]).mean(dim=0)
    torch.testing.assert_close(update_center(center, [t1, t2], 0.9), expected, rtol=0, atol=1e-15)
    mean = torch.cat([t1, t2]).mean(dim=0)
    torch.testing.assert_close(update_center(center, [t1, t2], 0.0), mean, rtol=0, atol=1e-15)


def test_a_non_finite_batch_leaves_the_center() -> None:
    center = randn(0, 6)
    bad = randn(1, 4, 6)
    bad[2, 3] = math.nan
    assert torch.equal(update_center(center, [bad, randn(2, 4, 6)], 0.9), center)


@pytest.mark.parametrize("momentum", [-0.1, 1.0, 1.5])
def test_bad_center_momentum_is_a_value_error(momentum: float) -> None:
    with pytest.raises(ValueError, match="momentum"):
        update_center(torch.zeros(3), [torch.zeros(2, 3)], momentum)


SIZES = (3, 5)  # rows per process: unequal, so the mean must count rows, not processes


def _center_job(rank: int) -> Tensor:
    assert distributed.world_size() == 2
    start = sum(SIZES[:rank])
    rows = [t[start : start + SIZES[rank]] for t in (randn(1, 8, 6), randn(2, 8, 6))]
    return update_center(randn(0, 6), rows, 0.9)


@pytest.mark.slow
def test_two_processes_center_on_the_global_batch_mean(tmp_path: Path) -> None:
    centers = run_in_gloo_processes(_center_job, tmp_path, world=2)
    whole = update_center(randn(0, 6), [randn(1, 8, 6), randn(2, 8, 6)], 0.9)
    for got in centers:
        torch.testing.assert_close(got, whole, rtol=0, atol=1e-12)
    local = update_center(randn(0, 6), [randn(1, 8, 6)[:3], randn(2, 8, 6)[:3]], 0.9)
    assert (local - whole).abs().max() > 1e-3  # one process's rows alone: another center
