"""NCELoss against float64 references written from Wu et al. 2018, an analytic case, its
gradient, and its errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from mmcontrast.losses import nce
from mmcontrast.losses.nce import NCELoss
from mmcontrast.registry import LOSSES

N, D, B, K = 50, 8, 6, 10


def inputs(seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(B, D, generator=g, dtype=torch.float64)
    bank = F.normalize(torch.randn(N, D, generator=g, dtype=torch.float64), dim=1)
    positives = torch.randint(N, (B,), generator=g)
    negatives = torch.randint(N, (B, K), generator=g)
    return query, bank, positives, negatives


def reference_z(query: Tensor, bank: Tensor, pos: Tensor, neg: Tensor, t: float) -> float:
    """Z = N * mean of exp(v_j . f / t) over the batch's positive and negative pairs."""
    values = []
    for i in range(query.shape[0]):
        f = query[i] / query[i].norm()
        for j in [int(pos[i]), *neg[i].tolist()]:
            values.append(math.exp(float(bank[j] @ f) / t))
    return bank.shape[0] * sum(values) / len(values)


def reference_nce(
    query: Tensor, bank: Tensor, pos: Tensor, neg: Tensor, t: float, z: float
) -> float:
    """Wu et al. eq. 5-7, one query and one pair at a time: P(i|f) = exp(v_i.f/t) / Z,
    h = P / (P + K/N), loss = -log h(positive) - sum log(1 - h(negative))."""
    n, k = bank.shape[0], neg.shape[1]
    total = 0.0
    for i in range(query.shape[0]):
        f = query[i] / query[i].norm()

        def h(j: int, f: Tensor = f) -> float:
            p = math.exp(float(bank[j] @ f) / t) / z
            return p / (p + k / n)

        total -= math.log(h(int(pos[i])))
        total -= sum(math.log(1 - h(j)) for j in neg[i].tolist())
    return total / query.shape[0]


def reference_softmax(query: Tensor, bank: Tensor, pos: Tensor, t: float) -> float:
    """Wu et al. eq. 2 with the bank as the weights: -log exp(v_y.f/t) / sum_j exp(v_j.f/t)."""
    total = 0.0
    for i in range(query.shape[0]):
        f = query[i] / query[i].norm()
        logits = [float(bank[j] @ f) / t for j in range(bank.shape[0])]
        total -= logits[int(pos[i])] - math.log(sum(math.exp(x) for x in logits))
    return total / query.shape[0]


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_nce_matches_the_paper_with_a_given_z(temperature: float) -> None:
    query, bank, pos, neg = inputs()
    z = 3.7 * N
    ours = NCELoss(temperature)(query, bank, pos, neg, torch.tensor(math.log(z), dtype=query.dtype))
    assert float(ours) == pytest.approx(
        reference_nce(query, bank, pos, neg, temperature, z), rel=1e-10
    )


def test_z_is_estimated_as_the_paper_does() -> None:
    query, bank, pos, neg = inputs(1)
    loss_fn = NCELoss(0.1)
    z = reference_z(query, bank, pos, neg, 0.1)
    assert float(loss_fn.estimate_log_z(query, bank, pos, neg)) == pytest.approx(math.log(z))
    # no log_z: the batch's own estimate
    ours = loss_fn(query, bank, pos, neg)
    assert float(ours) == pytest.approx(reference_nce(query, bank, pos, neg, 0.1, z), rel=1e-10)


def test_shared_negatives_equal_the_same_negatives_for_every_query() -> None:
    query, bank, pos, neg = inputs(2)
    shared = neg[0]
    loss_fn = NCELoss(0.2)
    log_z = torch.tensor(4.0, dtype=query.dtype)
    expected = loss_fn(query, bank, pos, shared.expand(B, K), log_z)
    torch.testing.assert_close(loss_fn(query, bank, pos, shared, log_z), expected)


def test_softmax_estimator_matches_the_full_softmax() -> None:
    query, bank, pos, _ = inputs(3)
    ours = NCELoss(0.1, estimator="softmax")(query, bank, pos)
    assert float(ours) == pytest.approx(reference_softmax(query, bank, pos, 0.1), rel=1e-10)


def test_analytic_case() -> None:
    """Bank = the two axes, the query on the first, its negative the second; t = 1, Z = 1:
    P = (e, 1), K/N = 1/2, loss = -log(e / (e + 1/2)) - log((1/2) / (1 + 1/2))."""
    bank = torch.eye(2, dtype=torch.float64)
    query = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    loss = NCELoss(1.0)(query, bank, torch.tensor([0]), torch.tensor([[1]]), torch.zeros(()))
    expected = math.log((math.e + 0.5) / math.e) + math.log(3.0)
    assert float(loss) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("estimator", ["nce", "softmax"])
def test_gradient(estimator: str) -> None:
    query, bank, pos, neg = inputs(4)
    loss_fn = NCELoss(0.3, estimator=estimator)
    if estimator == "nce":
        log_z = torch.tensor(5.0, dtype=torch.float64)

        def fn(q: Tensor) -> Tensor:
            return loss_fn(q, bank, pos, neg, log_z)
    else:

        def fn(q: Tensor) -> Tensor:
            return loss_fn(q, bank, pos)

    assert torch.autograd.gradcheck(fn, (query.requires_grad_(),))
    bank.requires_grad_()
    fn(query).backward()
    assert bank.grad is None, "the bank is a buffer: no gradient reaches it"


def test_large_scores_stay_finite() -> None:
    """t = 0.01 puts exp(s / t) near e^100 (float32 overflows at e^88): log space keeps it."""
    query, bank, pos, neg = (x.float() if x.is_floating_point() else x for x in inputs(5))
    loss_fn = NCELoss(0.01)
    log_z = loss_fn.estimate_log_z(query, bank, pos, neg)
    assert torch.isfinite(log_z) and torch.isfinite(loss_fn(query, bank, pos, neg, log_z))


def test_bad_arguments_are_refused() -> None:
    query, bank, pos, neg = inputs()
    with pytest.raises(ValueError, match="temperature"):
        NCELoss(0.0)
    with pytest.raises(ValueError, match="estimator"):
        NCELoss(0.1, estimator="full")
    with pytest.raises(ValueError, match="needs negative_index"):
        NCELoss(0.1)(query, bank, pos)
    with pytest.raises(ValueError, match="pass no negatives"):
        NCELoss(0.1, estimator="softmax")(query, bank, pos, neg)
    with pytest.raises(ValueError, match=r"\[B, K\] with B = 6"):
        NCELoss(0.1)(query, bank, pos, neg[:3])
    with pytest.raises(ValueError, match="positive_index"):
        NCELoss(0.1)(query, bank, pos[:3], neg)
    with pytest.raises(ValueError, match="bank"):
        NCELoss(0.1)(query, bank[:, :4], pos, neg)


def test_registered() -> None:
    assert LOSSES.get("nce") is nce.NCELoss
