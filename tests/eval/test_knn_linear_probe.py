"""Tests for mmcontrast.eval.classification, .knn and .linear_probe."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmcontrast.eval.classification import (
    classification_metrics,
    confusion_matrix,
    true_class_ranks,
)
from mmcontrast.eval.knn import knn_metrics, knn_scores
from mmcontrast.eval.linear_probe import _loss_and_grad, linear_probe

# Six samples, six classes; classes 3 and 5 never occur as labels.
SCORES = torch.tensor(
    [
        [5.0, 1, 0, 0, 0, 0],  # label 0: clear hit                     -> rank 0
        [2.0, 2, 0, 0, 0, 0],  # label 0: tied with class 1 at the top  -> rank 1 (pessimistic)
        [4.0, 0, 0, 0, 0, 0],  # label 0: hit                           -> rank 0
        [0.0, 0, 0, 0, 0, 0],  # label 1: all tied (collapsed)          -> rank 5
        [1.0, 2, 3, 4, 5, 6],  # label 2: classes 3, 4, 5 above         -> rank 3
        [0.0, 0, 0, 0, 9, 1],  # label 4: hit                           -> rank 0
    ]
)
LABELS = torch.tensor([0, 0, 0, 1, 2, 4])


def test_classification_metrics_by_hand() -> None:
    assert true_class_ranks(SCORES, LABELS).tolist() == [0, 1, 0, 5, 3, 0]
    metrics = classification_metrics(SCORES, LABELS, ks=(1, 2, 5, 7))
    assert metrics["acc1"] == pytest.approx(3 / 6)
    assert metrics["acc2"] == pytest.approx(4 / 6)
    assert metrics["acc5"] == pytest.approx(5 / 6)
    assert "acc7" not in metrics  # k > C is skipped
    # Per present class: 0 -> 2/3, 1 -> 0/1, 2 -> 0/1, 4 -> 1/1; classes 3, 5 absent.
    assert metrics["mean_per_class_recall"] == pytest.approx((2 / 3 + 0 + 0 + 1) / 4)
    assert list(classification_metrics(SCORES, LABELS)) == ["acc1", "acc5", "mean_per_class_recall"]


def test_classification_metrics_optimistic_ties() -> None:
    assert true_class_ranks(SCORES, LABELS, ties="optimistic").tolist() == [0, 0, 0, 0, 3, 0]
    metrics = classification_metrics(SCORES, LABELS, ties="optimistic")
    assert metrics["acc1"] == pytest.approx(5 / 6)
    assert metrics["mean_per_class_recall"] == pytest.approx((1 + 1 + 0 + 1) / 4)


def test_classification_metrics_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="lie in"):
        classification_metrics(SCORES, torch.tensor([0, 0, 0, 1, 2, 6]))
    with pytest.raises(ValueError, match="integer"):
        classification_metrics(SCORES, LABELS.float())
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics(torch.full((2, 3), math.nan), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="positive"):
        classification_metrics(SCORES, LABELS, ks=(0,))


def test_confusion_matrix() -> None:
    predictions = torch.tensor([0, 2, 1, 1, 0])
    labels = torch.tensor([0, 2, 2, 1, 1])
    expected = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 1]])
    assert torch.equal(confusion_matrix(predictions, labels, 3), expected)
    with pytest.raises(ValueError, match="predictions"):
        confusion_matrix(torch.tensor([3]), torch.tensor([0]), 3)


def _brute_force_knn(
    bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, k: int, t: float, c: int
) -> torch.Tensor:
    """Weighted kNN votes with Python loops, as written in Wu et al. 2018."""
    out = torch.zeros(len(queries), c, dtype=torch.float64)
    for i, q in enumerate(queries.double()):
        sims = [
            float(q @ b) / (float(q.norm()) * float(b.norm())) for b in bank.double()
        ]  # cosine similarity to every bank sample
        nearest = sorted(range(len(bank)), key=lambda j: -sims[j])[:k]
        for j in nearest:
            out[i, int(bank_labels[j])] += math.exp(sims[j] / t)
    return out


@pytest.mark.parametrize("k", [1, 5, 40, 100])  # 100 > bank size (40): clipped
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_knn_scores_match_brute_force(k: int, temperature: float) -> None:
    gen = torch.Generator().manual_seed(0)
    bank = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    bank_labels = torch.randint(0, 4, (40,), generator=gen)
    queries = torch.randn(13, 6, generator=gen, dtype=torch.float64)
    expected = _brute_force_knn(bank, bank_labels, queries, k, temperature, 4)
    for chunk_size in (1, 4, 13, 100):
        scores = knn_scores(bank, bank_labels, queries, k, temperature, chunk_size=chunk_size)
        torch.testing.assert_close(scores, expected, rtol=1e-10, atol=0)
    # max_matrix_elements also bounds the chunk (a single row at minimum).
    scores = knn_scores(bank, bank_labels, queries, k, temperature, max_matrix_elements=1)
    torch.testing.assert_close(scores, expected, rtol=1e-10, atol=0)


def test_knn_metrics_reuse_topk_equals_separate_runs() -> None:
    gen = torch.Generator().manual_seed(1)
    bank, bank_labels = (
        torch.randn(300, 16, generator=gen),
        torch.randint(0, 7, (300,), generator=gen),
    )
    queries, labels = torch.randn(50, 16, generator=gen), torch.randint(0, 7, (50,), generator=gen)
    metrics = knn_metrics(bank, bank_labels, queries, labels, ks=(3, 20, 500), chunk_size=16)
    for k in (3, 20, 500):
        scores = knn_scores(bank, bank_labels, queries, k=k, num_classes=7)
        for name, value in classification_metrics(scores, labels).items():
            assert metrics[f"knn{k}_{name}"] == pytest.approx(value)
    assert len(metrics) == 9


def _clusters(
    n_per_class: int, dim: int, n_classes: int, spread: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = 10 * torch.eye(n_classes, dim)
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    features = centres[labels] + spread * torch.randn(len(labels), dim, generator=gen)
    return features, labels


def test_knn_separable_clusters() -> None:
    bank, bank_labels = _clusters(30, 8, 3, 1.0, seed=0)
    queries, labels = _clusters(10, 8, 3, 1.0, seed=1)
    metrics = knn_metrics(bank, bank_labels, queries, labels, ks=(1, 20, 200))
    for k in (1, 20, 200):  # 200 > bank size 90
        assert metrics[f"knn{k}_acc1"] == 1.0
        assert metrics[f"knn{k}_mean_per_class_recall"] == 1.0
    assert "knn20_acc5" not in metrics  # only 3 classes


def test_knn_rejects_bad_input() -> None:
    bank, labels = torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 0])
    with pytest.raises(ValueError, match="temperature"):
        knn_scores(bank, labels, bank, temperature=0.0)
    with pytest.raises(ValueError, match="overflowed"):
        knn_scores(bank, labels, bank, temperature=1e-3)
    with pytest.raises(ValueError, match="dims"):
        knn_scores(bank, labels, torch.randn(2, 4))
    with pytest.raises(ValueError, match="num_classes"):
        knn_scores(bank, labels, bank, num_classes=1)


def test_linear_probe_gradient_matches_autograd() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, 7, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (50,), generator=gen)
    params = torch.randn(4, 8, generator=gen, dtype=torch.float64, requires_grad=True)  # [W^T | b]
    weight, bias = params[:, :-1], params[:, -1]
    loss = F.cross_entropy(x @ weight.T + bias, y) + 0.3 * weight.square().sum()
    loss.backward()
    for block_rows in (1, 16, 50):
        value, grad = _loss_and_grad(x, y, params.detach(), 0.3, block_rows)
        torch.testing.assert_close(value, loss.detach())
        torch.testing.assert_close(grad, params.grad)


def test_linear_probe_separable() -> None:
    train, train_labels = _clusters(100, 10, 3, 2.0, seed=0)
    test, test_labels = _clusters(50, 10, 3, 2.0, seed=1)
    metrics = linear_probe(train, train_labels, test, test_labels, max_iter=50)
    assert metrics["lp_acc1"] >= 0.95
    assert set(metrics) == {"lp_acc1", "lp_mean_per_class_recall", "lp_weight_decay"}
    assert metrics["lp_weight_decay"] in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


def test_linear_probe_random_labels_is_chance() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 16, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (3000,), generator=gen)
    metrics = linear_probe(x[:1000], y[:1000], x[1000:], y[1000:], max_iter=50)
    assert abs(metrics["lp_acc1"] - 0.2) < 0.05
    assert abs(metrics["lp_acc5"] - 1.0) < 1e-12  # 5 classes: top-5 is everything


def test_linear_probe_deterministic_and_single_weight_decay() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 12, generator=gen)
    y = (x[:, :3] @ torch.randn(3, 6, generator=gen)).argmax(1)
    first = linear_probe(x[:300], y[:300], x[300:], y[300:], max_iter=30, seed=3)
    assert first == linear_probe(x[:300], y[:300], x[300:], y[300:], max_iter=30, seed=3)
    single = linear_probe(x[:300], y[:300], x[300:], y[300:], weight_decays=(0.5,), max_iter=30)
    assert single["lp_weight_decay"] == 0.5
    with pytest.raises(ValueError, match="val_fraction"):
        linear_probe(x[:300], y[:300], x[300:], y[300:], val_fraction=0.0)
