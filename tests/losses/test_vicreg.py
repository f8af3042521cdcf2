"""VICReg's loss: a float64 reference from the paper's formulas, lightly's definition,
analytic cases, its gradient, bad arguments, and 2 real processes against 1."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import WORLD, run_in_gloo_processes
from torch import Tensor

from mmcontrast import distributed
from mmcontrast.losses.vicreg import VICRegLoss
from mmcontrast.registry import LOSSES


def randn(seed: int, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def views(seed: int, n: int, d: int) -> tuple[Tensor, Tensor]:
    """Two correlated views whose columns spread below and above gamma = 1."""
    scale = torch.linspace(0.3, 3.0, d, dtype=torch.float64)
    z_a = randn(seed, n, d) * scale
    return z_a, z_a + 0.5 * randn(seed + 1, n, d) * scale


# ------------------------------------------------------------------ references


def vicreg_reference(
    z_a: Tensor,
    z_b: Tensor,
    lambda_param: float = 25.0,
    mu_param: float = 25.0,
    nu_param: float = 1.0,
    gamma: float = 1.0,
    eps: float = 1e-4,
) -> Tensor:
    """Bardes, Ponce and LeCun 2022, "VICReg", eq. 1-6, one entry at a time.

    ``s(Z, Z') = 1/n sum_i ||z_i - z'_i||^2`` (eq. 5);
    ``v(Z) = 1/d sum_j max(0, gamma - sqrt(Var(z^j) + eps))`` (eq. 1, Var unbiased as
    ``torch.var`` in Algorithm 1); ``C(Z) = 1/(n-1) sum_i (z_i - zbar)(z_i - zbar)^T`` (eq. 3);
    ``c(Z) = 1/d sum_{i != j} C(Z)_ij^2`` (eq. 4). Combined as the authors' code
    (``main_vicreg.py``), for which the weights were tuned: ``s`` averaged over the d
    dimensions too (``F.mse_loss``) and the two variance terms averaged::

        lambda * s / d + mu * (v(Z) + v(Z')) / 2 + nu * (c(Z) + c(Z'))
    """
    n, d = z_a.shape

    def column_mean(z: Tensor, j: int) -> Tensor:
        return sum(z[i, j] for i in range(n)) / n

    def variance_term(z: Tensor) -> Tensor:
        hinges = []
        for j in range(d):
            mean = column_mean(z, j)
            var = sum((z[i, j] - mean) ** 2 for i in range(n)) / (n - 1)
            hinges.append(torch.clamp(gamma - torch.sqrt(var + eps), min=0.0))
        return sum(hinges) / d

    def covariance_term(z: Tensor) -> Tensor:
        means = [column_mean(z, j) for j in range(d)]
        total = z.new_zeros(())
        for j in range(d):
            for k in range(d):
                if j == k:
                    continue
                cov = sum((z[i, j] - means[j]) * (z[i, k] - means[k]) for i in range(n)) / (n - 1)
                total = total + cov**2
        return total / d

    invariance = sum(((z_a[i] - z_b[i]) ** 2).sum() for i in range(n)) / n
    return (
        lambda_param * invariance / d
        + mu_param * (variance_term(z_a) + variance_term(z_b)) / 2
        + nu_param * (covariance_term(z_a) + covariance_term(z_b))
    )


def lightly_vicreg(z_a: Tensor, z_b: Tensor, lambda_param: float = 25.0) -> Tensor:
    """lightly's ``VICRegLoss`` (lightly/loss/vicreg_loss.py), written from its documented
    definition (lightly is not a dependency): ``F.mse_loss``, the mean of the two branches'
    ``mean(relu(1 - sqrt(var + 1e-4)))``, and the sum of their off-diagonal squared
    covariances (unbiased) over the dimension; mu 25, nu 1."""

    def variance_loss(x: Tensor) -> Tensor:
        x = x - x.mean(dim=0)
        return F.relu(1.0 - torch.sqrt(x.var(dim=0) + 1e-4)).mean()

    def covariance_loss(x: Tensor) -> Tensor:
        x = x - x.mean(dim=0)
        nondiag = ~torch.eye(x.shape[1], dtype=torch.bool)
        cov = torch.einsum("bc,bd->cd", x, x) / (x.shape[0] - 1)
        return cov[nondiag].pow(2).sum() / x.shape[1]

    var_loss = 0.5 * (variance_loss(z_a) + variance_loss(z_b))
    cov_loss = covariance_loss(z_a) + covariance_loss(z_b)
    return lambda_param * F.mse_loss(z_a, z_b) + 25.0 * var_loss + 1.0 * cov_loss


def value_and_grads(fn: Any, z_a: Tensor, z_b: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
    z_a, z_b = z_a.detach().requires_grad_(True), z_b.detach().requires_grad_(True)
    value = fn(z_a, z_b)
    return value.detach(), torch.autograd.grad(value, (z_a, z_b))


# ------------------------------------------------------------------ one process

KWARGS = [
    {},
    {"lambda_param": 5.0, "mu_param": 10.0, "nu_param": 0.5, "gamma": 2.0, "eps": 1e-3},
]


@pytest.mark.parametrize("kwargs", KWARGS, ids=["paper", "other"])
@pytest.mark.parametrize(("seed", "n", "d"), [(0, 8, 5), (7, 12, 6)])
def test_matches_float64_reference(kwargs: dict[str, float], seed: int, n: int, d: int) -> None:
    z_a, z_b = views(seed, n, d)
    ours, our_grads = value_and_grads(VICRegLoss(**kwargs), z_a, z_b)
    theirs, their_grads = value_and_grads(lambda a, b: vicreg_reference(a, b, **kwargs), z_a, z_b)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-10, rel=1e-10)
    for mine, expected in zip(our_grads, their_grads, strict=True):
        torch.testing.assert_close(mine, expected, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("lambda_param", [25.0, 1.0])
def test_matches_lightly(lambda_param: float) -> None:
    z_a, z_b = views(3, 16, 7)
    ours, our_grads = value_and_grads(VICRegLoss(lambda_param=lambda_param), z_a, z_b)
    theirs, their_grads = value_and_grads(lambda a, b: lightly_vicreg(a, b, lambda_param), z_a, z_b)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-12)
    for mine, expected in zip(our_grads, their_grads, strict=True):
        torch.testing.assert_close(mine, expected, atol=1e-12, rtol=1e-10)


def test_float32_and_bfloat16_are_close_to_float64() -> None:
    z_a, z_b = views(5, 32, 16)
    expected = VICRegLoss()(z_a, z_b).item()
    single = VICRegLoss()(z_a.float(), z_b.float())
    assert single.dtype == torch.float32
    assert single.item() == pytest.approx(expected, rel=1e-5)
    half = VICRegLoss()(z_a.bfloat16(), z_b.bfloat16())
    assert torch.isfinite(half) and half.float().item() == pytest.approx(expected, rel=0.05)


def test_a_collapsed_batch_pays_only_the_variance_term() -> None:
    collapsed = torch.full((8, 4), 3.0, dtype=torch.float64)
    loss = VICRegLoss(mu_param=10.0, gamma=2.0, eps=0.04)(collapsed, collapsed)
    assert loss.item() == pytest.approx(10.0 * (2.0 - 0.2))  # mu * (gamma - sqrt(eps))


def test_identical_decorrelated_spread_views_cost_nothing() -> None:
    signs = torch.tensor(
        [[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=torch.float64
    )  # zero-mean, orthogonal columns: no covariance; unbiased std 2 x 2/sqrt(3) > gamma
    z = 2.0 * signs
    assert VICRegLoss()(z, z).item() == pytest.approx(0.0, abs=1e-12)


def test_a_shift_between_the_views_costs_lambda_times_its_square() -> None:
    z_a, _ = views(2, 10, 4)
    loss_fn = VICRegLoss(lambda_param=3.0)
    shifted = loss_fn(z_a, z_a + 0.5) - loss_fn(z_a, z_a)  # spread and covariance unchanged
    assert shifted.item() == pytest.approx(3.0 * 0.25)


def test_gradcheck() -> None:
    z_a, z_b = views(4, 6, 4)
    z_a.requires_grad_(True)
    z_b.requires_grad_(True)
    assert torch.autograd.gradcheck(
        VICRegLoss(lambda_param=2.0, mu_param=3.0, nu_param=0.5), (z_a, z_b)
    )


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lambda_param": -1.0}, "lambda_param"),
        ({"mu_param": float("nan")}, "mu_param"),
        ({"nu_param": -0.1}, "nu_param"),
        ({"gamma": 0.0}, "gamma"),
        ({"eps": 0.0}, "eps"),
    ],
)
def test_bad_hyperparameters_are_value_errors(kwargs: dict[str, float], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        VICRegLoss(**kwargs)


@pytest.mark.parametrize(
    ("z_a", "z_b", "message"),
    [
        (torch.zeros(4, 3), torch.zeros(4, 2), "same shape"),
        (torch.zeros(4, 2, 3), torch.zeros(4, 2, 3), r"\[N, D\]"),
        (torch.zeros(1, 3), torch.zeros(1, 3), "N >= 2"),
    ],
    ids=["shape", "dims", "one-sample"],
)
def test_bad_inputs_are_value_errors(z_a: Tensor, z_b: Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VICRegLoss()(z_a, z_b)


def test_registered_as_vicreg() -> None:
    assert LOSSES.get("vicreg") is VICRegLoss


# ------------------------------------------------------------------ two processes

SIZES = {"equal": (4, 4), "unequal": (3, 5), "empty-rank": (0, 8)}
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-5}


def run(sizes: tuple[int, int], start: int, stop: int, dtype: torch.dtype) -> dict[str, Tensor]:
    """Loss and input gradients of rows ``start:stop`` of an 8 x 5 batch of view pairs."""
    z_a, z_b = views(11, sum(sizes), 5)
    z_a = z_a[start:stop].to(dtype).requires_grad_(True)
    z_b = z_b[start:stop].to(dtype).requires_grad_(True)
    loss = VICRegLoss(lambda_param=5.0, gamma=1.5, gather_distributed=True)(z_a, z_b)
    loss.backward()
    assert z_a.grad is not None and z_b.grad is not None
    return {"value": loss.detach(), "grad_a": z_a.grad, "grad_b": z_b.grad}


def _job(rank: int) -> dict[Any, dict[str, Tensor]]:
    assert distributed.world_size() == WORLD
    results = {}
    for name, sizes in SIZES.items():
        start = sum(sizes[:rank])
        for dtype in TOLERANCE:
            results[(name, str(dtype))] = run(sizes, start, start + sizes[rank], dtype)
    return results


@pytest.fixture(scope="module")
def per_process(tmp_path_factory: pytest.TempPathFactory) -> list[dict[Any, dict[str, Tensor]]]:
    root = tmp_path_factory.mktemp("vicreg_dist")
    return run_in_gloo_processes(_job, root)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=["float64", "float32"])
@pytest.mark.parametrize("name", list(SIZES))
def test_two_processes_equal_one_process(
    per_process: list[dict[Any, dict[str, Tensor]]], name: str, dtype: torch.dtype
) -> None:
    sizes = SIZES[name]
    whole = run(sizes, 0, sum(sizes), dtype)  # no process group here: the whole batch
    parts = [results[(name, str(dtype))] for results in per_process]
    tol = TOLERANCE[dtype]
    for part in parts:
        torch.testing.assert_close(part["value"], whole["value"], atol=tol, rtol=tol)
    for key in ("grad_a", "grad_b"):
        got = torch.cat([part[key] for part in parts])
        torch.testing.assert_close(got, whole[key], atol=tol, rtol=tol)
