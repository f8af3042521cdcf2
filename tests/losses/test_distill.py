"""Distillation losses (CLIP-KD): float64 references written from the paper, analytic cases,
gradients (gradcheck), ``clip_kd`` without distillation is CLIP, wide sums in float16, and the
checks on shapes and weights. 2 processes in ``test_distill_distributed.py``."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import pytest
import reference as ref
import torch
import torch.nn.functional as F
from torch import Tensor

from mmcontrast import losses
from mmcontrast.registry import LOSSES


def unit(seed: int, n: int, d: int, dtype: torch.dtype = torch.float64) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1).to(dtype)


def scalar(value: float) -> Tensor:
    return torch.tensor(value, dtype=torch.float64)


# ----- float64 references, one row at a time, from CLIP-KD's formulas ---------------------


def feature_reference(
    image_features: Tensor,
    text_features: Tensor,
    teacher_image_features: Tensor,
    teacher_text_features: Tensor,
) -> Tensor:
    """CLIP-KD's FD: ``1/N sum_i ||I_i - I^T_i||^2 + 1/N sum_i ||T_i - T^T_i||^2``."""
    n, d = image_features.shape
    total = image_features.new_zeros(())
    for i in range(n):
        for k in range(d):
            total = total + (image_features[i, k] - teacher_image_features[i, k]) ** 2
            total = total + (text_features[i, k] - teacher_text_features[i, k]) ** 2
    return total / n


def _kl(teacher_logits: list[Tensor], student_logits: list[Tensor]) -> Tensor:
    """``sum_k q_k (log q_k - log p_k)`` with q, p the softmaxes of two lists of logits."""
    log_q_norm = torch.logsumexp(torch.stack(teacher_logits), dim=0)
    log_p_norm = torch.logsumexp(torch.stack(student_logits), dim=0)
    total = teacher_logits[0].new_zeros(())
    for t, s in zip(teacher_logits, student_logits, strict=True):
        log_q, log_p = t - log_q_norm, s - log_p_norm
        total = total + torch.exp(log_q) * (log_q - log_p)
    return total


def relational_reference(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor | float,
    teacher_image_features: Tensor,
    teacher_text_features: Tensor,
    teacher_logit_scale: Tensor | float,
) -> Tensor:
    """CLIP-KD's CRD: KL(teacher || student) of each image's softmax over the texts and each
    text's softmax over the images, averaged over the N images and the N texts, then / 2."""
    n = image_features.shape[0]

    def logit(a: Tensor, b: Tensor, s: Tensor | float) -> Tensor:
        return s * torch.sum(a * b)

    i2t = [
        _kl(
            [
                logit(teacher_image_features[i], teacher_text_features[j], teacher_logit_scale)
                for j in range(n)
            ],
            [logit(image_features[i], text_features[j], logit_scale) for j in range(n)],
        )
        for i in range(n)
    ]
    t2i = [
        _kl(
            [
                logit(teacher_image_features[i], teacher_text_features[j], teacher_logit_scale)
                for i in range(n)
            ],
            [logit(image_features[i], text_features[j], logit_scale) for i in range(n)],
        )
        for j in range(n)
    ]
    return (torch.stack(i2t).mean() + torch.stack(t2i).mean()) / 2


def clip_kd_reference(
    weights: tuple[float, float, float],
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor,
    teacher_image_features: Tensor,
    teacher_text_features: Tensor,
    teacher_logit_scale: Tensor | float,
) -> Tensor:
    task, feature, relational = weights
    total = task * ref.clip_reference(image_features, text_features, logit_scale)
    if feature:
        total = total + feature * feature_reference(
            image_features, text_features, teacher_image_features, teacher_text_features
        )
    return total + relational * relational_reference(
        image_features,
        text_features,
        logit_scale,
        teacher_image_features,
        teacher_text_features,
        teacher_logit_scale,
    )


def batch(n: int, d: int, d_teacher: int, seed: int = 0) -> dict[str, Tensor]:
    return {
        "image_features": unit(seed, n, d),
        "text_features": unit(seed + 1, n, d),
        "logit_scale": scalar(14.3),
        "teacher_image_features": unit(seed + 2, n, d_teacher),
        "teacher_text_features": unit(seed + 3, n, d_teacher),
        "teacher_logit_scale": scalar(100.0),
    }


FEATURE_KEYS = (
    "image_features",
    "text_features",
    "teacher_image_features",
    "teacher_text_features",
)


def features_only(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: inputs[k] for k in FEATURE_KEYS}


# ----- registration and class attributes ------------------------------------------------


def test_registered_under_their_names_with_titles() -> None:
    assert LOSSES.get("feature_kd") is losses.FeatureDistillLoss
    assert LOSSES.get("relational_kd") is losses.RelationalDistillLoss
    assert LOSSES.get("clip_kd") is losses.ClipDistillLoss
    for cls in (losses.FeatureDistillLoss, losses.RelationalDistillLoss, losses.ClipDistillLoss):
        assert cls.title and isinstance(cls.title, str)


def test_clip_kd_starts_a_dual_encoder_as_clip_does() -> None:
    assert losses.ClipDistillLoss.init_logit_scale == math.log(1 / 0.07)
    assert losses.ClipDistillLoss.init_logit_scale == losses.ClipLoss.init_logit_scale
    assert losses.ClipDistillLoss.init_logit_bias is None


def test_feature_kd_takes_no_scales() -> None:
    """Its callers pass only the keyword arguments that its forward names."""
    names = list(inspect.signature(losses.FeatureDistillLoss().forward).parameters)
    assert names == list(FEATURE_KEYS)


# ----- against the float64 references ----------------------------------------------------


@pytest.mark.parametrize(("n", "d"), [(1, 3), (5, 4), (9, 16)])
def test_feature_kd_matches_the_reference(n: int, d: int) -> None:
    inputs = features_only(batch(n, d, d, seed=n))
    got = losses.FeatureDistillLoss()(**inputs)
    assert got.item() == pytest.approx(feature_reference(**inputs).item(), rel=1e-12)


@pytest.mark.parametrize(
    ("n", "d", "d_teacher", "scale", "teacher_scale"),
    [(2, 3, 3, 1.0, 1.0), (6, 4, 10, 14.3, 100.0), (11, 8, 5, 50.0, 20.0), (7, 6, 6, 100.0, 3.0)],
)
def test_relational_kd_matches_the_reference(
    n: int, d: int, d_teacher: int, scale: float, teacher_scale: float
) -> None:
    inputs = batch(n, d, d_teacher, seed=n)
    inputs["logit_scale"], inputs["teacher_logit_scale"] = scalar(scale), scalar(teacher_scale)
    got = losses.RelationalDistillLoss()(**inputs)
    expected = relational_reference(**inputs)
    assert expected.item() > 1e-3  # the case is not trivially 0
    assert got.item() == pytest.approx(expected.item(), rel=1e-11)


@pytest.mark.parametrize(
    "weights", [(1.0, 0.0, 1.0), (1.0, 2.5, 1.0), (0.5, 3.0, 0.0), (0.0, 0.0, 2.0), (0.3, 1.0, 0.7)]
)
def test_clip_kd_matches_the_reference(weights: tuple[float, float, float]) -> None:
    inputs = batch(8, 6, 6, seed=3)
    got = losses.ClipDistillLoss(*weights)(**inputs)
    assert got.item() == pytest.approx(clip_kd_reference(weights, **inputs).item(), rel=1e-12)


def test_gradients_match_the_references() -> None:
    inputs = batch(6, 5, 5, seed=4)
    leaves = ["image_features", "text_features", "logit_scale"]
    for key in leaves:
        inputs[key].requires_grad_(True)
    weights = (0.7, 1.5, 1.3)
    cases = [
        (
            losses.FeatureDistillLoss()(**features_only(inputs)),
            feature_reference(**features_only(inputs)),
            leaves[:2],
        ),
        (losses.RelationalDistillLoss()(**inputs), relational_reference(**inputs), leaves),
        (losses.ClipDistillLoss(*weights)(**inputs), clip_kd_reference(weights, **inputs), leaves),
    ]
    for ours, theirs, names in cases:
        wrt = [inputs[k] for k in names]
        for g_ours, g_theirs in zip(
            torch.autograd.grad(ours, wrt), torch.autograd.grad(theirs, wrt), strict=True
        ):
            assert g_theirs.abs().max() > 1e-3  # a gradient worth comparing
            torch.testing.assert_close(g_ours, g_theirs, rtol=1e-10, atol=1e-12)


# ----- gradients (finite differences) ------------------------------------------------------


def test_feature_kd_gradcheck() -> None:
    img, txt = unit(0, 4, 3).requires_grad_(True), unit(1, 4, 3).requires_grad_(True)
    t_img, t_txt = unit(2, 4, 3), unit(3, 4, 3)
    loss = losses.FeatureDistillLoss()
    assert torch.autograd.gradcheck(lambda i, t: loss(i, t, t_img, t_txt), (img, txt))


def test_relational_kd_gradcheck() -> None:
    img, txt = unit(4, 5, 3).requires_grad_(True), unit(5, 5, 3).requires_grad_(True)
    s = scalar(4.0).requires_grad_(True)
    t_img, t_txt = unit(6, 5, 7), unit(7, 5, 7)
    loss = losses.RelationalDistillLoss()
    assert torch.autograd.gradcheck(lambda i, t, k: loss(i, t, k, t_img, t_txt, 9.0), (img, txt, s))


def test_clip_kd_gradcheck() -> None:
    img, txt = unit(8, 5, 4).requires_grad_(True), unit(9, 5, 4).requires_grad_(True)
    s = scalar(3.0).requires_grad_(True)
    t_img, t_txt, t_s = unit(10, 5, 4), unit(11, 5, 4), scalar(12.0)
    loss = losses.ClipDistillLoss(task_weight=0.5, feature_weight=2.0, relational_weight=1.5)
    assert torch.autograd.gradcheck(lambda i, t, k: loss(i, t, k, t_img, t_txt, t_s), (img, txt, s))


def test_the_teacher_gets_no_gradient() -> None:
    inputs = batch(6, 4, 4, seed=5)
    for key in ("image_features", "teacher_image_features", "teacher_text_features"):
        inputs[key].requires_grad_(True)
    inputs["teacher_logit_scale"] = scalar(30.0).requires_grad_(True)
    teacher = [inputs[k] for k in ("teacher_image_features", "teacher_text_features")]
    loss = losses.ClipDistillLoss(feature_weight=1.0)(**inputs)
    grads = torch.autograd.grad(
        loss, [inputs["image_features"], *teacher, inputs["teacher_logit_scale"]], allow_unused=True
    )
    assert grads[0] is not None and grads[0].abs().max() > 0
    assert all(g is None for g in grads[1:])


# ----- analytic cases ----------------------------------------------------------------------


def test_feature_kd_is_zero_when_the_student_is_the_teacher() -> None:
    img, txt = unit(0, 7, 5), unit(1, 7, 5)
    assert losses.FeatureDistillLoss()(img, txt, img.clone(), txt.clone()).item() == 0.0


def test_feature_kd_of_opposite_and_orthogonal_embeddings() -> None:
    eye = torch.eye(4, dtype=torch.float64)
    # images opposite the teacher's (||2 e||^2 = 4), texts orthogonal to it (||e_a - e_b||^2 = 2)
    got = losses.FeatureDistillLoss()(-eye, eye.roll(1, dims=1), eye, eye)
    assert got.item() == pytest.approx(6.0, rel=1e-15)


def test_relational_kd_is_zero_when_the_logits_are_the_teachers() -> None:
    img, txt = unit(2, 6, 5), unit(3, 6, 5)
    # the teacher: the same vectors in a wider space (zeros appended), so the same logits
    wide = (F.pad(img, (0, 7)), F.pad(txt, (0, 7)))
    loss = losses.RelationalDistillLoss()
    assert loss(img, txt, scalar(20.0), *wide, 20.0).item() == pytest.approx(0.0, abs=1e-14)
    assert loss(img, txt, scalar(20.0), img, txt, scalar(20.0)).item() == 0.0


@pytest.mark.parametrize(
    ("teacher_scale", "teacher_seed"), [(25.0, 2), (20.0, 9)], ids=["scale", "features"]
)
def test_relational_kd_is_positive_when_the_logits_differ(
    teacher_scale: float, teacher_seed: int
) -> None:
    img, txt = unit(2, 6, 5), unit(3, 6, 5)
    t_img, t_txt = unit(teacher_seed, 6, 5), unit(teacher_seed + 1, 6, 5)
    got = losses.RelationalDistillLoss()(img, txt, scalar(20.0), t_img, t_txt, teacher_scale)
    assert got.item() > 1e-4


@pytest.mark.parametrize(("s", "s_teacher"), [(1.0, 5.0), (10.0, 2.0), (4.0, 4.0)])
def test_relational_kd_of_two_orthonormal_pairs(s: float, s_teacher: float) -> None:
    """I = T = e1, e2 on both sides: every row and column puts sigmoid(+-s) on (own, other)."""
    eye = torch.eye(2, dtype=torch.float64)

    def sigmoid(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    q, p = sigmoid(s_teacher), sigmoid(s)
    expected = q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))
    got = losses.RelationalDistillLoss()(eye, eye, scalar(s), eye, eye, s_teacher)
    assert got.item() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_teacher_scale_as_a_float_a_tensor_or_shape_one() -> None:
    inputs = batch(5, 4, 6, seed=6)
    loss = losses.RelationalDistillLoss()
    as_tensor = loss(**inputs).item()
    inputs["teacher_logit_scale"] = 100.0
    assert loss(**inputs).item() == pytest.approx(as_tensor, rel=1e-6)  # float32 100.0 is exact
    inputs["teacher_logit_scale"] = scalar(100.0).reshape(1)
    inputs["logit_scale"] = inputs["logit_scale"].reshape(1)
    assert loss(**inputs).item() == pytest.approx(as_tensor, rel=1e-12)


# ----- clip_kd and its parts ----------------------------------------------------------------


@pytest.mark.parametrize("d_teacher", [6, 12])
def test_clip_kd_without_distillation_is_clip(d_teacher: int) -> None:
    inputs = batch(9, 6, d_teacher, seed=7)
    leaves = [inputs[k].requires_grad_(True) for k in ("image_features", "text_features")]
    leaves.append(inputs["logit_scale"].requires_grad_(True))
    ours = losses.ClipDistillLoss(feature_weight=0.0, relational_weight=0.0)(**inputs)
    clip = losses.ClipLoss()(*leaves[:2], leaves[2])
    assert ours.item() == pytest.approx(clip.item(), rel=1e-14)
    for g_ours, g_clip in zip(
        torch.autograd.grad(ours, leaves), torch.autograd.grad(clip, leaves), strict=True
    ):
        torch.testing.assert_close(g_ours, g_clip, rtol=1e-12, atol=1e-14)


def test_clip_kd_is_the_weighted_sum_of_its_parts() -> None:
    inputs = batch(7, 5, 5, seed=8)
    parts = (
        losses.ClipLoss()(inputs["image_features"], inputs["text_features"], inputs["logit_scale"]),
        losses.FeatureDistillLoss()(**features_only(inputs)),
        losses.RelationalDistillLoss()(**inputs),
    )
    weights = (0.25, 4.0, 1.5)
    expected = sum(w * p.item() for w, p in zip(weights, parts, strict=True))
    assert losses.ClipDistillLoss(*weights)(**inputs).item() == pytest.approx(expected, rel=1e-13)


def test_clip_kd_defaults_are_clip_plus_relational() -> None:
    inputs = batch(7, 5, 9, seed=9)
    loss = losses.ClipDistillLoss()
    assert (loss.task_weight, loss.feature_weight, loss.relational_weight) == (1.0, 0.0, 1.0)
    expected = clip_kd_reference((1.0, 0.0, 1.0), **inputs)
    assert loss(**inputs).item() == pytest.approx(expected.item(), rel=1e-12)


# ----- low precision: sums in float32 ---------------------------------------------------------


def test_feature_kd_in_float16_does_not_overflow() -> None:
    """20,000 rows at distance 4 each way: a float16 sum (max 65504) would be inf."""
    teacher = unit(0, 20_000, 4, torch.float16)
    assert torch.isinf(((-teacher - teacher) ** 2).sum(dim=1).sum())  # the trap is real
    got = losses.FeatureDistillLoss()(-teacher, -teacher, teacher, teacher)
    assert torch.isfinite(got) and got.item() == pytest.approx(8.0, rel=1e-3)


def _far_apart(n: int, dtype: torch.dtype) -> dict[str, Tensor]:
    """The student puts its mass on the negatives the teacher ranks last: KL of ~2s a row."""
    img = unit(1, n, 16)
    return {
        "image_features": img.to(dtype),
        "text_features": (-img).to(dtype),
        "logit_scale": torch.tensor(100.0, dtype=dtype),
        "teacher_image_features": img.to(dtype),
        "teacher_text_features": img.to(dtype),
        "teacher_logit_scale": torch.tensor(100.0, dtype=dtype),
    }


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_relational_kd_in_low_precision_sums_wide(dtype: torch.dtype) -> None:
    n = 512
    expected = losses.RelationalDistillLoss()(**_far_apart(n, torch.float64)).item()
    assert 2 * n * expected > 65504  # the summed rows would overflow float16
    got = losses.RelationalDistillLoss()(**_far_apart(n, dtype))
    assert torch.isfinite(got) and got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=2e-2)


def test_clip_kd_under_bfloat16_autocast_matches_float32() -> None:
    inputs = {k: v.float() for k, v in batch(16, 8, 8, seed=10).items()}
    loss = losses.ClipDistillLoss(feature_weight=1.0)
    expected = loss(**inputs).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss(**inputs)
    assert torch.isfinite(got) and got.item() == pytest.approx(expected, rel=3e-2)


# ----- errors -------------------------------------------------------------------------------


def test_feature_kd_with_different_sizes_says_what_to_do() -> None:
    inputs = features_only(batch(4, 256, 512))
    message = r"student's are 256-dimensional and the teacher's 512.*\(in training: model.embed_dim\)"
    with pytest.raises(ValueError, match=message):
        losses.FeatureDistillLoss()(**inputs)
    with pytest.raises(ValueError, match=message):
        losses.ClipDistillLoss(feature_weight=1.0)(**batch(4, 256, 512))
    losses.ClipDistillLoss()(**batch(4, 256, 512))  # no feature term: any sizes


@pytest.mark.parametrize(
    "make",
    [losses.RelationalDistillLoss, lambda: losses.ClipDistillLoss(feature_weight=1.0)],
    ids=["relational_kd", "clip_kd"],
)
def test_teacher_rows_must_match_the_students(make: Callable[[], torch.nn.Module]) -> None:
    inputs = batch(5, 4, 4)
    inputs["teacher_image_features"] = unit(2, 6, 4)
    inputs["teacher_text_features"] = unit(3, 6, 4)
    with pytest.raises(ValueError, match="student has 5 rows, the teacher 6"):
        make()(**inputs)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("text_features", unit(0, 5, 3), "same shape"),
        ("teacher_text_features", unit(0, 5, 3), "same shape"),
        ("image_features", torch.zeros(5, 2, 4, dtype=torch.float64), r"\[N, D\]"),
        ("teacher_image_features", torch.zeros(5, 2, 4, dtype=torch.float64), r"\[N, D_T\]"),
    ],
    ids=["student-pair", "teacher-pair", "dims", "teacher-dims"],
)
def test_bad_shapes_are_value_errors(key: str, value: Tensor, message: str) -> None:
    inputs = batch(5, 4, 4)
    inputs[key] = value
    if value.dim() == 3:  # both of a pair, or the first message would be about their shapes
        inputs[key.replace("image", "text")] = value
    for loss in (losses.RelationalDistillLoss(), losses.ClipDistillLoss(feature_weight=1.0)):
        with pytest.raises(ValueError, match=message):
            loss(**inputs)
    with pytest.raises(ValueError, match=message):
        losses.FeatureDistillLoss()(**features_only(inputs))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task_weight": -1.0}, "task_weight"),
        ({"feature_weight": float("nan")}, "feature_weight"),
        ({"relational_weight": float("inf")}, "relational_weight"),
        ({"task_weight": 0.0, "relational_weight": 0.0}, "all 0"),
    ],
)
def test_bad_weights_are_value_errors(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        losses.ClipDistillLoss(**kwargs)
