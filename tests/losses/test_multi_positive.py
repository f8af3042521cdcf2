"""UniCL and multi-positive SigLIP: analytic cases, unique ids give CLIP / SigLIP, gradients
(gradcheck) and the checks on ``ids``. Values and gradients against the float64 references
run with every other loss in ``test_losses.py``; 2 processes in ``test_distributed_losses.py``."""

from __future__ import annotations

import math
from typing import Any

import pytest
import reference as ref
import torch
import torch.nn.functional as F
from torch import Tensor

from mmcontrast import losses
from mmcontrast.registry import LOSSES


def unit(seed: int, n: int, d: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


def scalar(value: float) -> Tensor:
    return torch.tensor(value, dtype=torch.float64)


IDS = torch.tensor([3, 7, 3, 3, 9, 7, 11])


def test_registered_under_their_names() -> None:
    assert LOSSES.get("unicl") is losses.UniClLoss
    assert LOSSES.get("siglip_multi") is losses.SigLipMultiPositiveLoss


# ----- unique ids: the one-positive losses ---------------------------------------------


@pytest.mark.parametrize("ids", [torch.arange(9), torch.arange(9).flip(0) * 5 - 20])
def test_unicl_with_unique_ids_is_clip(ids: Tensor) -> None:
    img, txt, s = unit(0, 9, 8), unit(1, 9, 8), scalar(14.3)
    expected = losses.ClipLoss()(img, txt, s)
    assert losses.UniClLoss()(img, txt, s, ids).item() == pytest.approx(expected.item(), rel=1e-13)


@pytest.mark.parametrize("ids", [torch.arange(9), torch.arange(9).flip(0) * 5 - 20])
def test_siglip_multi_with_unique_ids_is_siglip(ids: Tensor) -> None:
    img, txt, s, b = unit(0, 9, 8), unit(1, 9, 8), scalar(10.0), scalar(-10.0)
    expected = losses.SigLipLoss()(img, txt, s, b)
    got = losses.SigLipMultiPositiveLoss()(img, txt, s, b, ids)
    assert got.item() == pytest.approx(expected.item(), rel=1e-13)


def test_unique_ids_give_the_gradients_of_clip_and_siglip() -> None:
    img, txt = unit(2, 6, 5).requires_grad_(True), unit(3, 6, 5).requires_grad_(True)
    s, b = scalar(5.0).requires_grad_(True), scalar(-2.0).requires_grad_(True)
    unique = torch.arange(6)
    pairs = [
        (losses.UniClLoss()(img, txt, s, unique), losses.ClipLoss()(img, txt, s), [img, txt, s]),
        (
            losses.SigLipMultiPositiveLoss()(img, txt, s, b, unique),
            losses.SigLipLoss()(img, txt, s, b),
            [img, txt, s, b],
        ),
    ]
    for ours, theirs, leaves in pairs:
        for g_ours, g_theirs in zip(
            torch.autograd.grad(ours, leaves), torch.autograd.grad(theirs, leaves), strict=True
        ):
            torch.testing.assert_close(g_ours, g_theirs, atol=1e-12, rtol=1e-10)


# ----- analytic cases --------------------------------------------------------------------


def test_unicl_of_orthonormal_pairs_with_a_shared_id() -> None:
    # logits = eye(3): row 0 puts 1 on its own text and 0 on the other of its two positives
    eye = torch.eye(3, dtype=torch.float64)
    expected = math.log(math.e + 2) - 2 / 3  # (2 (lse - 1/2) + (lse - 1)) / 3, both ways
    got = losses.UniClLoss()(eye, eye, scalar(1.0), torch.tensor([0, 0, 1]))
    assert got.item() == pytest.approx(expected, abs=1e-14)


@pytest.mark.parametrize("s", [1.0, 5.0, 50.0])
def test_unicl_of_two_identical_pairs_with_one_id(s: float) -> None:
    """Pairs 0 and 1 are the same vector e1 with one id; pair 2 is e2: the best rows 0 and 1
    can do is split their mass over two texts, so the loss tends to 2/3 log 2, not 0."""
    e1, e2 = torch.eye(2, dtype=torch.float64)
    features = torch.stack([e1, e1, e2])
    got = losses.UniClLoss()(features, features, scalar(s), torch.tensor([5, 5, 8]))
    row_01 = math.log(2 * math.exp(s) + 1) - s
    row_2 = math.log(math.exp(s) + 2) - s
    assert got.item() == pytest.approx((2 * row_01 + row_2) / 3, rel=1e-12)
    if s == 50.0:
        assert got.item() == pytest.approx(2 / 3 * math.log(2), rel=1e-12)


def test_siglip_multi_of_orthonormal_pairs_with_a_shared_id() -> None:
    eye, s, b = torch.eye(3, dtype=torch.float64), 4.0, -1.5

    def nls(x: float) -> float:  # -log sigmoid(x)
        return math.log1p(math.exp(-x))

    # positives: 3 diagonal pairs (logit s + b) and (0, 1), (1, 0) (logit b); 4 negatives (b)
    expected = (3 * nls(s + b) + 2 * nls(b) + 4 * nls(-b)) / 3
    got = losses.SigLipMultiPositiveLoss()(eye, eye, scalar(s), scalar(b), torch.tensor([0, 0, 1]))
    assert got.item() == pytest.approx(expected, rel=1e-13)


def test_unicl_pulls_same_id_pairs_up_where_flyp_masks_them() -> None:
    img, txt, s = unit(4, 6, 8), unit(5, 6, 8), scalar(10.0)
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    unicl = losses.UniClLoss()(img, txt, s, ids)
    assert unicl.item() == pytest.approx(ref.unicl_reference(img, txt, s, ids).item(), rel=1e-12)
    assert unicl.item() != pytest.approx(losses.ClipLoss()(img, txt, s, labels=ids).item())


# ----- gradients -------------------------------------------------------------------------


def test_unicl_gradcheck() -> None:
    img, txt = unit(6, 5, 4).requires_grad_(True), unit(7, 5, 4).requires_grad_(True)
    s = scalar(3.0).requires_grad_(True)
    ids = torch.tensor([1, 2, 1, 1, 0])
    assert torch.autograd.gradcheck(lambda i, t, k: losses.UniClLoss()(i, t, k, ids), (img, txt, s))


def test_siglip_multi_gradcheck() -> None:
    img, txt = unit(8, 5, 4).requires_grad_(True), unit(9, 5, 4).requires_grad_(True)
    s, b = scalar(3.0).requires_grad_(True), scalar(-1.0).requires_grad_(True)
    ids = torch.tensor([1, 2, 1, 1, 0])
    loss = losses.SigLipMultiPositiveLoss()
    assert torch.autograd.gradcheck(lambda i, t, k, c: loss(i, t, k, c, ids), (img, txt, s, b))


def test_symmetric_in_images_and_texts() -> None:
    img, txt, s, b = unit(10, 7, 4), unit(11, 7, 4), scalar(6.0), scalar(-3.0)
    unicl = losses.UniClLoss()
    assert unicl(img, txt, s, IDS).item() == pytest.approx(
        unicl(txt, img, s, IDS).item(), rel=1e-13
    )
    sig = losses.SigLipMultiPositiveLoss()
    assert sig(img, txt, s, b, IDS).item() == pytest.approx(
        sig(txt, img, s, b, IDS).item(), rel=1e-13
    )


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8, torch.int64])
def test_any_integer_dtype_of_ids(dtype: torch.dtype) -> None:
    img, txt, s, b = unit(12, 7, 4), unit(13, 7, 4), scalar(6.0), scalar(-3.0)
    assert losses.UniClLoss()(img, txt, s, IDS.to(dtype)).item() == pytest.approx(
        ref.unicl_reference(img, txt, s, IDS).item(), rel=1e-12
    )
    assert losses.SigLipMultiPositiveLoss()(img, txt, s, b, IDS.to(dtype)).item() == (
        pytest.approx(ref.siglip_multi_reference(img, txt, s, b, IDS).item(), rel=1e-12)
    )


# ----- errors ------------------------------------------------------------------------------


def _call(loss: torch.nn.Module, n: int, ids: Any, d: int = 4) -> Tensor:
    img, txt = unit(0, n, d), unit(1, n, d)
    if isinstance(loss, losses.SigLipMultiPositiveLoss):
        return loss(img, txt, scalar(1.0), scalar(0.0), ids)
    return loss(img, txt, scalar(1.0), ids)


LOSS_FACTORIES = [losses.UniClLoss, losses.SigLipMultiPositiveLoss]


@pytest.mark.parametrize("make", LOSS_FACTORIES, ids=["unicl", "siglip_multi"])
@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (torch.tensor([0.0, 0.0, 1.0, 2.0]), "ids must be integers .*float32.*ids.long"),
        (torch.tensor([True, True, False, False]), "ids must be integers .*bool"),
        (torch.tensor([0, 0, 1]), r"ids must have shape \[N\] = \[4\].*\(3,\)"),
        (torch.tensor([[0, 0, 1, 2]]), r"ids must have shape \[N\] = \[4\].*\(1, 4\)"),
        ([0, 0, 1, 2], "ids must be an integer tensor.*list"),
    ],
    ids=["float", "bool", "short", "2d", "list"],
)
def test_bad_ids_are_value_errors(make: type, ids: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _call(make(), 4, ids)


@pytest.mark.parametrize("make", LOSS_FACTORIES, ids=["unicl", "siglip_multi"])
def test_feature_shape_mismatch_is_an_error(make: type) -> None:
    img, txt = unit(0, 4, 3), unit(1, 5, 3)
    args = (scalar(1.0), scalar(0.0)) if make is losses.SigLipMultiPositiveLoss else (scalar(1.0),)
    with pytest.raises(ValueError, match="same shape"):
        make()(img, txt, *args, torch.arange(4))
