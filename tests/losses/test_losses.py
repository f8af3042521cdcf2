"""Every loss against the float64 references in ``reference.py``, plus analytic cases;
CLIP and SigLIP against open_clip's losses."""

from __future__ import annotations

import doctest
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import open_clip.loss as oc_loss
import pytest
import reference as ref
import torch
import torch.nn.functional as F
from torch import Tensor

from mmcontrast import losses
from mmcontrast.registry import LOSSES

Inputs = dict[str, Any]


def randn(seed: int, *shape: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def unit(seed: int, n: int, d: int) -> Tensor:
    return F.normalize(randn(seed, n, d), dim=-1)


@dataclass
class Case:
    """One loss configuration, its reference and a factory of float64 inputs."""

    id: str
    ours: torch.nn.Module
    reference: Callable[..., Tensor]
    make_inputs: Callable[[int], Inputs]


def _clip_inputs(n: int, d: int, scale: float) -> Callable[[int], Inputs]:
    return lambda s: {
        "image_features": unit(s, n, d),
        "text_features": unit(s + 1, n, d),
        "logit_scale": torch.tensor(scale, dtype=torch.float64),
    }


def _siglip_inputs(n: int, d: int, scale: float, bias: float) -> Callable[[int], Inputs]:
    return lambda s: {
        **_clip_inputs(n, d, scale)(s),
        "logit_bias": torch.tensor(bias, dtype=torch.float64),
    }


def _supcon_inputs(n: int, v: int, d: int, classes: int | None) -> Callable[[int], Inputs]:
    def make(s: int) -> Inputs:
        labels = None if classes is None else torch.arange(n) % classes
        return {"features": randn(s, n, v, d), "labels": labels}

    return make


def _triplet_inputs(n: int, d: int) -> Callable[[int], Inputs]:
    return lambda s: {
        "anchor": randn(s, n, d),
        "positive": randn(s + 1, n, d),
        "negative": randn(s + 2, n, d),
    }


def _mined_inputs(n: int, d: int, classes: int) -> Callable[[int], Inputs]:
    return lambda s: {"embeddings": randn(s, n, d), "labels": torch.arange(n) % classes}


def _views(count: int, b: int, k: int, seed: int) -> list[Tensor]:
    return [F.normalize(randn(seed + i, b, k), dim=-1) for i in range(count)]


def _swav_inputs(globals_: int, locals_: int, b: int, k: int) -> Callable[[int], Inputs]:
    return lambda s: {
        "high_res_scores": _views(globals_, b, k, s),
        "low_res_scores": _views(locals_, b, k, s + 100),
    }


def _mining(**kw: Any) -> Callable[..., Tensor]:
    loss = losses.TripletLoss(**kw)
    return lambda embeddings, labels: loss(embeddings, labels)


def _mined(kind: str, **kw: Any) -> Callable[..., Tensor]:
    fn = (
        ref.triplet_batch_hard_reference
        if kind == "batch_hard"
        else ref.triplet_batch_all_reference
    )
    return lambda embeddings, labels: fn(embeddings, labels, **kw)


CASES = [
    Case("clip-3x5-s1", losses.ClipLoss(), ref.clip_reference, _clip_inputs(3, 5, 1.0)),
    Case("clip-8x16-s14", losses.ClipLoss(), ref.clip_reference, _clip_inputs(8, 16, 14.3)),
    Case("clip-17x32-s100", losses.ClipLoss(), ref.clip_reference, _clip_inputs(17, 32, 100.0)),
    Case(
        "clip-labels-10x8",
        losses.ClipLoss(),
        ref.clip_masked_reference,
        lambda s: {
            **_clip_inputs(10, 8, 14.3)(s),
            "labels": torch.tensor([0, 1, 0, 2, 1, 0, 3, 4, 2, 5]),
        },
    ),
    Case(
        "siglip-4x8", losses.SigLipLoss(), ref.siglip_reference, _siglip_inputs(4, 8, 10.0, -10.0)
    ),
    Case("siglip-9x16", losses.SigLipLoss(), ref.siglip_reference, _siglip_inputs(9, 16, 3.0, 0.5)),
    Case(
        "siglip-chunked",
        losses.SigLipLoss(chunk_size=4),
        ref.siglip_reference,
        _siglip_inputs(10, 16, 5.0, -2.0),
    ),
    Case(
        "unicl-10x8",
        losses.UniClLoss(),
        ref.unicl_reference,
        lambda s: {
            **_clip_inputs(10, 8, 14.3)(s),
            "ids": torch.tensor([0, 1, 0, 2, 1, 0, 3, 4, 2, 5]),
        },
    ),
    Case(
        "siglip-multi-10x8",
        losses.SigLipMultiPositiveLoss(),
        ref.siglip_multi_reference,
        lambda s: {
            **_siglip_inputs(10, 8, 10.0, -5.0)(s),
            "ids": torch.tensor([0, 1, 0, 2, 1, 0, 3, 4, 2, 5]),
        },
    ),
    Case(
        "infonce-inbatch-t0.07",
        losses.InfoNCELoss(),
        ref.infonce_reference,
        lambda s: {"query": randn(s, 6, 8), "positive_key": randn(s + 1, 6, 8)},
    ),
    Case(
        "infonce-queue-t0.2",
        losses.InfoNCELoss(temperature=0.2),
        lambda **kw: ref.infonce_reference(**kw, temperature=0.2),
        lambda s: {
            "query": randn(s, 5, 8),
            "positive_key": randn(s + 1, 5, 8),
            "negative_keys": randn(s + 2, 11, 8),
        },
    ),
    Case(
        "ntxent-t0.5",
        losses.NTXentLoss(),
        ref.ntxent_reference,
        lambda s: {"z0": randn(s, 6, 8), "z1": randn(s + 1, 6, 8)},
    ),
    Case(
        "ntxent-t0.1",
        losses.NTXentLoss(temperature=0.1),
        lambda **kw: ref.ntxent_reference(**kw, temperature=0.1),
        lambda s: {"z0": randn(s, 9, 4), "z1": randn(s + 1, 9, 4)},
    ),
    Case("supcon-out", losses.SupConLoss(), ref.supcon_reference, _supcon_inputs(8, 2, 6, 3)),
    Case(
        "supcon-in",
        losses.SupConLoss(variant="in"),
        lambda **kw: ref.supcon_reference(**kw, variant="in"),
        _supcon_inputs(8, 2, 6, 3),
    ),
    Case(
        "supcon-out-3views-t0.1-base0.07",
        losses.SupConLoss(temperature=0.1),
        lambda **kw: ref.supcon_reference(**kw, temperature=0.1),
        _supcon_inputs(7, 3, 5, 4),
    ),
    Case(
        "supcon-in-unlabelled",
        losses.SupConLoss(temperature=0.5, base_temperature=0.2, variant="in"),
        lambda **kw: ref.supcon_reference(
            **kw, temperature=0.5, base_temperature=0.2, variant="in"
        ),
        _supcon_inputs(6, 2, 5, None),
    ),
    Case(
        # one view per sample and 7 singleton classes among 10: some anchors have no positive
        "supcon-out-some-anchors-alone",
        losses.SupConLoss(),
        ref.supcon_reference,
        lambda s: {
            "features": randn(s, 10, 1, 4),
            "labels": torch.tensor([0, 0, 1, 1, 2, 3, 4, 5, 6, 7]),
        },
    ),
    Case(
        "contrastive-m1",
        losses.ContrastiveLoss(),
        ref.contrastive_reference,
        lambda s: {
            "x1": randn(s, 12, 3) / 2,
            "x2": randn(s + 1, 12, 3) / 2,
            "same": torch.arange(12) % 2,
        },
    ),
    Case(
        "contrastive-m2",
        losses.ContrastiveLoss(margin=2.0),
        lambda **kw: ref.contrastive_reference(**kw, margin=2.0),
        lambda s: {
            "x1": randn(s, 8, 5),
            "x2": randn(s + 1, 8, 5),
            "same": torch.arange(8) % 3 == 0,
        },
    ),
    Case(
        "triplet-euclidean",
        losses.TripletLoss(margin=1.0),
        lambda **kw: ref.triplet_reference(**kw, margin=1.0),
        _triplet_inputs(10, 4),
    ),
    Case(
        "triplet-cosine",
        losses.TripletLoss(margin=0.3, distance="cosine"),
        lambda **kw: ref.triplet_reference(**kw, margin=0.3, distance="cosine"),
        _triplet_inputs(10, 4),
    ),
    Case(
        "triplet-batch-hard",
        _mining(margin=0.5, mining="batch_hard"),
        _mined("batch_hard", margin=0.5),
        _mined_inputs(12, 4, 3),
    ),
    Case(
        "triplet-batch-hard-cosine",
        _mining(mining="batch_hard", distance="cosine"),
        _mined("batch_hard", distance="cosine"),
        _mined_inputs(9, 5, 4),
    ),
    Case(
        "triplet-batch-all",
        _mining(margin=0.5, mining="batch_all"),
        _mined("batch_all", margin=0.5),
        _mined_inputs(10, 4, 3),
    ),
    Case(
        "triplet-batch-all-cosine",
        _mining(mining="batch_all", distance="cosine"),
        _mined("batch_all", distance="cosine"),
        _mined_inputs(9, 5, 4),
    ),
    Case(
        "npair",
        losses.NPairLoss(),
        ref.npair_reference,
        lambda s: {"anchors": randn(s, 7, 5), "positives": randn(s + 1, 7, 5)},
    ),
    Case(
        "npair-l2",
        losses.NPairLoss(l2_reg=0.01),
        lambda **kw: ref.npair_reference(**kw, l2_reg=0.01),
        lambda s: {"anchors": randn(s, 7, 5), "positives": randn(s + 1, 7, 5)},
    ),
    Case(
        "negative-cosine",
        losses.NegativeCosineLoss(),
        ref.negative_cosine_reference,
        lambda s: {"prediction": randn(s, 6, 8), "target": randn(s + 1, 6, 8)},
    ),
    Case(
        "barlow",
        losses.BarlowTwinsLoss(),
        ref.barlow_twins_reference,
        lambda s: {"z_a": randn(s, 8, 4), "z_b": randn(s + 1, 8, 4)},
    ),
    Case(
        "barlow-l0.1",
        losses.BarlowTwinsLoss(lambda_param=0.1),
        lambda **kw: ref.barlow_twins_reference(**kw, lambda_param=0.1),
        lambda s: {"z_a": randn(s, 16, 10), "z_b": randn(s + 1, 16, 10)},
    ),
    Case("swav-2g", losses.SwAVLoss(), ref.swav_reference, _swav_inputs(2, 0, 8, 5)),
    Case("swav-2g-3l", losses.SwAVLoss(), ref.swav_reference, _swav_inputs(2, 3, 8, 5)),
    Case(
        "swav-t0.2-eps0.1-5it",
        losses.SwAVLoss(temperature=0.2, epsilon=0.1, sinkhorn_iterations=5),
        lambda **kw: ref.swav_reference(**kw, temperature=0.2, epsilon=0.1, sinkhorn_iterations=5),
        _swav_inputs(2, 2, 12, 7),
    ),
]


def _leaves(inputs: Inputs) -> list[Tensor]:
    """Every floating-point tensor among the inputs (lists included)."""
    found = []
    for value in inputs.values():
        for t in value if isinstance(value, list) else [value]:
            if isinstance(t, Tensor) and t.is_floating_point():
                found.append(t)
    return found


def _with_grad(inputs: Inputs, dtype: torch.dtype) -> Inputs:
    def convert(t: Any) -> Any:
        if isinstance(t, Tensor) and t.is_floating_point():
            return t.detach().to(dtype).requires_grad_(True)
        return t

    return {
        k: [convert(t) for t in v] if isinstance(v, list) else convert(v) for k, v in inputs.items()
    }


def _value_and_grads(fn: Callable[..., Tensor], inputs: Inputs) -> tuple[Tensor, list[Tensor]]:
    value = fn(**inputs)
    leaves = _leaves(inputs)
    grads = torch.autograd.grad(value, leaves, allow_unused=True)
    return value.detach(), [
        torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads, strict=True)
    ]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.parametrize("seed", [0, 7])
def test_matches_float64_reference(case: Case, seed: int) -> None:
    raw = case.make_inputs(seed)
    ours, our_grads = _value_and_grads(case.ours, _with_grad(raw, torch.float64))
    theirs, their_grads = _value_and_grads(case.reference, _with_grad(raw, torch.float64))
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-10, rel=1e-10)
    for mine, expected in zip(our_grads, their_grads, strict=True):
        torch.testing.assert_close(mine, expected, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_float32_close_to_float64_reference(case: Case) -> None:
    raw = case.make_inputs(3)
    ours, our_grads = _value_and_grads(case.ours, _with_grad(raw, torch.float32))
    theirs, their_grads = _value_and_grads(case.reference, _with_grad(raw, torch.float64))
    assert ours.dtype == torch.float32
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-5, rel=1e-5)
    for mine, expected in zip(our_grads, their_grads, strict=True):
        atol = 1e-5 * max(1.0, expected.abs().max().item())  # gradients grow with the scale
        torch.testing.assert_close(mine.double(), expected, atol=atol, rtol=1e-4)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bfloat16_is_finite_and_close(case: Case) -> None:
    raw = case.make_inputs(5)
    ours, our_grads = _value_and_grads(case.ours, _with_grad(raw, torch.bfloat16))
    theirs = case.reference(**_with_grad(raw, torch.float64))
    assert torch.isfinite(ours) and all(torch.isfinite(g).all() for g in our_grads)
    assert ours.float().item() == pytest.approx(theirs.item(), rel=0.05, abs=0.05)


def test_float16_sums_do_not_overflow_on_large_batches() -> None:
    z0, z1 = (F.normalize(randn(s, 4096, 16), dim=-1).half() for s in (0, 1))
    assert torch.isfinite(losses.NTXentLoss()(z0, z1))
    scale, bias = torch.tensor(10.0).half(), torch.tensor(-10.0).half()
    assert torch.isfinite(losses.SigLipLoss()(z0, z1, scale, bias))


def test_infonce_per_query_negatives() -> None:
    q, k, negatives = randn(0, 4, 6), randn(1, 4, 6), randn(2, 4, 9, 6)
    ours = losses.InfoNCELoss(temperature=0.1)(q, k, negatives)
    rows = [
        ref.infonce_reference(q[i : i + 1], k[i : i + 1], negatives[i], temperature=0.1)
        for i in range(4)
    ]
    assert ours.item() == pytest.approx(torch.stack(rows).mean().item(), abs=1e-12)


def test_swav_queue_joins_the_sinkhorn_problem() -> None:
    current, queued, other = unit(0, 6, 5), unit(1, 10, 5), unit(2, 6, 5)
    ours = losses.SwAVLoss()([current, other], queue_scores=[queued, None])
    codes = ref.sinkhorn_reference(torch.cat([queued, current]))[-6:]
    term_0 = -(codes * torch.log_softmax(other / 0.1, dim=1)).sum(1).mean()
    term_1 = (
        -(ref.sinkhorn_reference(other) * torch.log_softmax(current / 0.1, dim=1)).sum(1).mean()
    )
    assert ours.item() == pytest.approx(((term_0 + term_1) / 2).item(), abs=1e-12)


@pytest.mark.parametrize(("iterations", "epsilon"), [(1, 0.05), (3, 0.05), (10, 0.5)])
def test_sinkhorn_matches_reference(iterations: int, epsilon: float) -> None:
    scores = unit(4, 16, 6)
    torch.testing.assert_close(
        losses.sinkhorn(scores, epsilon, iterations),
        ref.sinkhorn_reference(scores, epsilon, iterations),
    )


def test_sinkhorn_codes_are_equipartitioned() -> None:
    codes = losses.sinkhorn(unit(5, 32, 4), epsilon=0.5, iterations=200)
    torch.testing.assert_close(codes.sum(1), torch.ones(32, dtype=torch.float64))
    torch.testing.assert_close(codes.sum(0), torch.full((4,), 8.0, dtype=torch.float64))


def test_sinkhorn_of_half_precision_scores_runs_in_float32() -> None:
    scores = unit(6, 8, 4)
    codes = losses.sinkhorn(scores.to(torch.bfloat16))
    assert codes.dtype == torch.float32
    torch.testing.assert_close(codes.double(), ref.sinkhorn_reference(scores), atol=0.05, rtol=0)


# ----- CLIP and SigLIP against open_clip -------------------------------------------------


def features(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=-1), F.normalize(
        torch.randn(n, d, generator=g), dim=-1
    )


@pytest.mark.parametrize(("n", "d", "scale"), [(2, 4, 1.0), (8, 16, 14.3), (33, 64, 100.0)])
def test_clip_loss_equals_open_clip(n: int, d: int, scale: float) -> None:
    img, txt = features(n, d, n)
    s = torch.tensor(scale)
    ours = losses.ClipLoss()(img, txt, s)
    theirs = oc_loss.ClipLoss()(img, txt, s)
    assert torch.allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize(
    ("n", "d", "scale", "bias"), [(2, 4, 10.0, -10.0), (8, 16, 3.0, 0.5), (33, 64, 100.0, -5.0)]
)
def test_siglip_loss_equals_open_clip(n: int, d: int, scale: float, bias: float) -> None:
    img, txt = features(n, d, n + 1)
    img.requires_grad_(True)
    ours = losses.SigLipLoss()(img, txt, torch.tensor(scale), torch.tensor(bias))
    theirs = oc_loss.SigLipLoss()(img, txt, torch.tensor(scale), torch.tensor(bias))
    assert torch.allclose(ours, theirs, atol=1e-5)
    (g_ours,) = torch.autograd.grad(ours, img, retain_graph=True)
    (g_theirs,) = torch.autograd.grad(theirs, img)
    assert torch.allclose(g_ours, g_theirs, atol=5e-6 * g_theirs.abs().max().item())


# ----- analytic cases and symmetries ---------------------------------------------------


def test_ntxent_of_identical_orthogonal_views() -> None:
    n, t = 5, 0.5
    eye = torch.eye(n, dtype=torch.float64)
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2 * n - 2))
    assert losses.NTXentLoss(t)(eye, eye).item() == pytest.approx(expected, abs=1e-12)


def test_clip_with_unique_labels_is_clip() -> None:
    inputs = _clip_inputs(6, 8, 10.0)(0)
    plain = losses.ClipLoss()(**inputs)
    labelled = losses.ClipLoss()(**inputs, labels=torch.arange(6))
    assert labelled.item() == pytest.approx(plain.item(), rel=1e-12)
    duplicated = losses.ClipLoss()(**inputs, labels=torch.tensor([0, 0, 1, 1, 2, 2]))
    assert duplicated.item() < plain.item()  # fewer negatives


def test_clip_of_orthonormal_pairs() -> None:
    n = 6
    eye = torch.eye(n, dtype=torch.float64)
    expected = math.log(n - 1 + math.e) - 1
    assert losses.ClipLoss()(eye, eye, torch.tensor(1.0)).item() == pytest.approx(expected)


def test_clip_loss_perfect_alignment_is_small() -> None:
    eye = torch.eye(4)  # float32 logits of 100: a plain exp() would overflow
    assert losses.ClipLoss()(eye, eye, torch.tensor(100.0)).item() < 1e-10


def test_supcon_without_labels_is_ntxent() -> None:
    z0, z1 = randn(0, 6, 8), randn(1, 6, 8)
    supcon = losses.SupConLoss(temperature=0.3, base_temperature=0.3)(torch.stack([z0, z1], 1))
    assert supcon.item() == pytest.approx(losses.NTXentLoss(0.3)(z0, z1).item(), abs=1e-12)


def test_supcon_in_is_at_most_out() -> None:
    inputs = _supcon_inputs(12, 2, 4, 3)(0)
    l_in = losses.SupConLoss(variant="in")(**inputs)
    l_out = losses.SupConLoss(variant="out")(**inputs)
    assert l_in.item() < l_out.item()


def test_supcon_without_any_positive_is_zero_with_finite_gradient() -> None:
    features = randn(0, 4, 1, 3).requires_grad_(True)
    for variant in ("out", "in"):
        loss = losses.SupConLoss(variant=variant)(features, torch.arange(4))
        (grad,) = torch.autograd.grad(loss, features)
        assert loss.item() == 0 and torch.equal(grad, torch.zeros_like(grad))


def test_batch_triplets_without_a_valid_triplet_are_zero() -> None:
    emb = randn(0, 4, 3)
    for mining in ("batch_hard", "batch_all"):
        assert losses.TripletLoss(mining=mining)(emb, torch.zeros(4)).item() == 0


def test_contrastive_of_matching_pairs_is_half_squared_distance() -> None:
    x1, x2 = randn(0, 5, 3), randn(1, 5, 3)
    expected = 0.5 * (x1 - x2).pow(2).sum(-1).mean()
    assert losses.ContrastiveLoss()(x1, x2, torch.ones(5)).item() == pytest.approx(expected.item())


def test_contrastive_identical_pair_in_half_precision() -> None:
    x = randn(0, 3, 4).half().requires_grad_(True)
    loss = losses.ContrastiveLoss()(x, x.detach().clone(), torch.zeros(3))
    loss.backward()
    assert loss.item() == 0.5 and torch.isfinite(x.grad).all()


def test_sinkhorn_of_widely_spread_scores_has_no_nan() -> None:
    codes = losses.sinkhorn(3 * randn(0, 64, 10).float())
    assert torch.isfinite(codes).all()
    torch.testing.assert_close(codes.sum(1), torch.ones(64))


def test_negative_cosine_detaches_the_target() -> None:
    prediction, target = randn(0, 4, 3).requires_grad_(True), randn(1, 4, 3).requires_grad_(True)
    losses.NegativeCosineLoss()(prediction, target).backward()
    assert target.grad is None and prediction.grad is not None
    same = randn(2, 4, 3)
    assert losses.NegativeCosineLoss()(same, same).item() == pytest.approx(-1.0)


def test_barlow_twins_of_decorrelated_identical_views_is_near_zero() -> None:
    # Hadamard columns: zero-mean, unit variance, mutually orthogonal.
    h = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]])
    z = h[:, 1:].to(torch.float64)
    expected = 3 * (1 - 1 / (1 + 1e-5)) ** 2
    assert losses.BarlowTwinsLoss()(z, z).item() == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize(
    ("loss", "args"),
    [
        (losses.ClipLoss(), (unit(0, 5, 4), unit(1, 5, 4), torch.tensor(3.0))),
        (
            losses.SigLipLoss(),
            (unit(0, 5, 4), unit(1, 5, 4), torch.tensor(3.0), torch.tensor(-1.0)),
        ),
        (losses.NTXentLoss(), (randn(0, 5, 4), randn(1, 5, 4))),
        (losses.BarlowTwinsLoss(), (randn(0, 5, 4), randn(1, 5, 4))),
        (losses.ContrastiveLoss(), (randn(0, 5, 4), randn(1, 5, 4), torch.arange(5) % 2)),
    ],
    ids=["clip", "siglip", "ntxent", "barlow", "contrastive"],
)
def test_symmetric_losses_ignore_argument_order(loss: torch.nn.Module, args: tuple) -> None:
    swapped = (args[1], args[0], *args[2:])
    assert loss(*args).item() == pytest.approx(loss(*swapped).item(), abs=1e-12)


def test_chunked_siglip_holds_one_chunk_of_logits() -> None:
    """Backward through the chunked loss recomputes chunks: saved tensors stay [N, chunk]."""
    n, chunk = 64, 8
    img, txt = unit(0, n, 16).requires_grad_(True), unit(1, n, 16).requires_grad_(True)
    sizes: list[int] = []

    def pack(t: Tensor) -> Tensor:
        sizes.append(t.numel())
        return t

    scale, bias = torch.tensor(5.0), torch.tensor(-3.0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        chunked = losses.SigLipLoss(chunk_size=chunk)(img, txt, scale, bias)
    assert max(sizes) < n * n
    full = losses.SigLipLoss()(img, txt, scale, bias)
    assert chunked.item() == pytest.approx(full.item(), abs=1e-12)


# ----- validation and documentation ----------------------------------------------------

BAD_HYPERPARAMETERS = [
    (losses.InfoNCELoss, {"temperature": 0.0}, "temperature"),
    (losses.InfoNCELoss, {"temperature": -0.1}, "temperature"),
    (losses.NTXentLoss, {"temperature": 0.0}, "temperature"),
    (losses.SupConLoss, {"temperature": 0.0}, "temperature"),
    (losses.SupConLoss, {"base_temperature": -1.0}, "base_temperature"),
    (losses.SupConLoss, {"variant": "both"}, "variant"),
    (losses.ContrastiveLoss, {"margin": 0.0}, "margin"),
    (losses.TripletLoss, {"margin": -1.0}, "margin"),
    (losses.TripletLoss, {"distance": "manhattan"}, "distance"),
    (losses.TripletLoss, {"mining": "hard"}, "mining"),
    (losses.NPairLoss, {"l2_reg": -1e-3}, "l2_reg"),
    (losses.BarlowTwinsLoss, {"lambda_param": -1.0}, "lambda_param"),
    (losses.SwAVLoss, {"temperature": 0.0}, "temperature"),
    (losses.SwAVLoss, {"epsilon": 0.0}, "epsilon"),
    (losses.SwAVLoss, {"sinkhorn_iterations": 0}, "sinkhorn_iterations"),
    (losses.SigLipLoss, {"chunk_size": 0}, "chunk_size"),
    (losses.SigLipLoss, {"chunk_size": 2.5}, "chunk_size"),
    (losses.SwAVLoss, {"sinkhorn_iterations": 0.5}, "sinkhorn_iterations"),
    (losses.NTXentLoss, {"temperature": float("inf")}, "temperature"),
]


@pytest.mark.parametrize(("cls", "kwargs", "name"), BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_are_value_errors(cls: type, kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        cls(**kwargs)


@pytest.mark.parametrize(
    ("loss", "args", "message"),
    [
        (losses.NTXentLoss(), (randn(0, 4, 3), randn(0, 5, 3)), "same shape"),
        (losses.SupConLoss(), (randn(0, 4, 3),), r"\[N, V, D\]"),
        (losses.SupConLoss(), (randn(0, 4, 2, 3), torch.arange(5)), "labels"),
        (losses.TripletLoss(), (randn(0, 4, 3), randn(0, 4, 3)), "negative"),
        (
            losses.InfoNCELoss(),
            (randn(0, 4, 3), randn(0, 4, 3), randn(0, 5, 2, 3)),
            "negative_keys",
        ),
        (losses.SwAVLoss(), ([randn(0, 4, 3)],), "two views"),
        (losses.BarlowTwinsLoss(), (randn(0, 1, 3), randn(0, 1, 3)), "N >= 2"),
    ],
    ids=[
        "shape",
        "supcon-dims",
        "supcon-labels",
        "triplet-missing",
        "infonce-neg",
        "swav",
        "barlow",
    ],
)
def test_bad_inputs_are_value_errors(loss: torch.nn.Module, args: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        loss(*args)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="same shape"):
        losses.ClipLoss()(torch.zeros(3, 4), torch.zeros(2, 4), torch.tensor(1.0))


def test_loss_inits() -> None:
    assert losses.ClipLoss.init_logit_scale == pytest.approx(math.log(1 / 0.07))
    assert (losses.SigLipLoss.init_logit_scale, losses.SigLipLoss.init_logit_bias) == (
        pytest.approx(math.log(10)),
        -10.0,
    )


def test_every_registered_loss_is_documented_and_its_example_runs() -> None:
    assert set(LOSSES.names()) >= {
        "clip",
        "siglip",
        "infonce",
        "ntxent",
        "supcon",
        "contrastive",
        "triplet",
        "npair",
        "negative_cosine",
        "barlow_twins",
        "swav",
        "unicl",
        "siglip_multi",
    }
    for name in LOSSES.names():
        cls = LOSSES.get(name)
        doc = cls.__doc__ or ""
        for section in ("Reference", "Shapes:", "Example:", ">>> "):
            assert section in doc, f"{cls.__name__} docstring lacks {section!r}"
        finder = doctest.DocTestFinder()
        runner = doctest.DocTestRunner()
        for test in finder.find(cls, globs={"torch": torch, "F": F, cls.__name__: cls}):
            runner.run(test)
        assert runner.tries > 0 and runner.failures == 0, f"{cls.__name__}'s example fails"
