"""Distillation of an image-text dual encoder: a student learns from a frozen teacher (CLIP-KD).

Every loss here takes the student's L2-normalised features and logit scale, and the
teacher's for the same batch of pairs. The teacher's tensors are constants: the losses
detach them, so neither the teacher's features nor its logit scale ever get a gradient.

- :class:`FeatureDistillLoss` (``feature_kd``): each student embedding regresses onto the
  teacher's embedding of the same image or caption.
- :class:`RelationalDistillLoss` (``relational_kd``): the student's image-to-text and
  text-to-image softmaxes over the batch match the teacher's (CLIP-KD's CRD, TinyCLIP's
  affinity mimicking).
- :class:`ClipDistillLoss` (``clip_kd``): CLIP's own loss plus the two above, weighted.

References:
    Yang et al. 2024, "CLIP-KD: An Empirical Study of CLIP Model Distillation",
    https://arxiv.org/abs/2307.12732 (its FD and CRD terms).
    Wu et al. 2023, "TinyCLIP: CLIP Distillation via Affinity Mimicking and Weight
    Inheritance", https://arxiv.org/abs/2309.12314 (its affinity mimicking).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcontrast import distributed
from mmcontrast.losses.checks import require_dims, require_non_negative, require_same_shape
from mmcontrast.losses.clip import ClipLoss
from mmcontrast.losses.numerics import wide_mean
from mmcontrast.registry import LOSSES


@LOSSES.register(
    "feature_kd",
    "squared distance of the student's embeddings to the teacher's (CLIP-KD, Yang et al. 2024)",
)
class FeatureDistillLoss(nn.Module):
    """CLIP-KD's feature distillation: student embeddings regress onto the teacher's.

    With the student's L2-normalised features ``I``, ``T`` [N, D] and the teacher's
    ``I^T``, ``T^T`` [N, D] for the same pairs::

        loss = mean_i ||I_i - I^T_i||^2 + mean_i ||T_i - T^T_i||^2

    That is, the squared Euclidean distance of each row, summed over the D dimensions and
    averaged over the N rows, for images plus for texts (each term lies in [0, 4]). CLIP-KD's
    code uses ``F.mse_loss``, which also divides by D: its weight of 2000 for this term
    (D = 512) is about 3.9 on this loss.

    Each term involves one row only, so there is no ``gather_distributed``: the mean over
    this process's rows, averaged over processes as data-parallel training averages
    gradients, is already the whole batch's loss (for equal per-process batches). (Inside :class:`ClipDistillLoss` with
    ``gather_distributed`` the term becomes this process's share of the global mean, to add
    up with the gathered terms.)

    Reference:
        Yang et al. 2024, "CLIP-KD: An Empirical Study of CLIP Model Distillation",
        https://arxiv.org/abs/2307.12732 (feature distillation, FD).

    Shapes:
        image_features: [N, D], L2-normalised (the student's).
        text_features: [N, D], L2-normalised.
        teacher_image_features: [N, D], L2-normalised; detached.
        teacher_text_features: [N, D], L2-normalised; detached.
        Returns a scalar in at least float32 (the sums run there: float16 sums overflow).

    Raises:
        ValueError: if the student's and teacher's embedding sizes differ (project the
            student's features to the teacher's size first), the image and text features
            differ in shape, or the student and teacher have different numbers of rows.

    Example:
        >>> student = F.normalize(torch.randn(4, 8), dim=-1)
        >>> teacher = F.normalize(torch.randn(4, 8), dim=-1)
        >>> loss = FeatureDistillLoss()(student, student, teacher, teacher)
        >>> float(FeatureDistillLoss()(teacher, teacher, teacher, teacher))
        0.0
        >>> round(float(FeatureDistillLoss()(-teacher, teacher, teacher, teacher)), 4)  # 4 + 0
        4.0
    """

    title: ClassVar[str] = "feature distillation (CLIP-KD)"  # how model cards name the loss

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        teacher_image_features: Tensor,
        teacher_text_features: Tensor,
    ) -> Tensor:
        _check_pairs(image_features, text_features, teacher_image_features, teacher_text_features)
        per_row = _feature_distances(
            image_features, text_features, teacher_image_features, teacher_text_features
        )
        return wide_mean(per_row, per_row.shape[0])


@LOSSES.register(
    "relational_kd",
    "KL from the teacher's image-text softmaxes to the student's (CLIP-KD; TinyCLIP)",
)
class RelationalDistillLoss(nn.Module):
    """CLIP-KD's contrastive relational distillation (TinyCLIP's affinity mimicking).

    With the student's L2-normalised features ``I``, ``T`` [N, D] and multiplier ``s``, the
    teacher's ``I^T``, ``T^T`` [N, D_T] and multiplier ``s_T``::

        S = s * I @ T.T                   Q = s_T * I^T @ T^T.T
        KL_i2t = mean_i KL( softmax(Q[i, :]) || softmax(S[i, :]) )
        KL_t2i = mean_j KL( softmax(Q[:, j]) || softmax(S[:, j]) )
        loss = (KL_i2t + KL_t2i) / 2

    with ``KL(q || p) = sum_k q_k (log q_k - log p_k)``. Each model uses its own multiplier
    (CLIP-KD's code; the KL temperature is 1). The loss is 0 exactly when the student's
    softmaxes equal the teacher's, whatever D and D_T. TinyCLIP's cross-entropy with the
    teacher's softmax as target differs from this by the teacher's entropy, a constant:
    the same gradients. CLIP-KD's ICL term (student features against teacher features) is
    not included.

    Reference:
        Yang et al. 2024, "CLIP-KD: An Empirical Study of CLIP Model Distillation",
        https://arxiv.org/abs/2307.12732 (contrastive relational distillation, CRD);
        Wu et al. 2023, "TinyCLIP: CLIP Distillation via Affinity Mimicking and Weight
        Inheritance", https://arxiv.org/abs/2309.12314 (affinity mimicking).

    Args:
        gather_distributed: use every process's pairs. Each process computes only its own
            rows of both softmaxes over every process's columns (the student's features
            gathered with gradient, the teacher's without); the value on each process is
            the loss of the whole batch, each student feature's gradient the one it has in
            a single process with the whole batch, and ``logit_scale`` gets this process's
            share (see :mod:`mmcontrast.distributed`).

    Shapes:
        image_features: [N, D], L2-normalised (the student's).
        text_features: [N, D], L2-normalised.
        logit_scale: scalar tensor, the student's multiplier ``s`` (already exponentiated).
        teacher_image_features: [N, D_T], L2-normalised; detached.
        teacher_text_features: [N, D_T], L2-normalised; detached.
        teacher_logit_scale: scalar tensor or float ``s_T`` (already exponentiated); detached.
        Returns a scalar in at least float32 (the softmaxes and sums run there).

    Raises:
        ValueError: if the image and text features of the student (or of the teacher)
            differ in shape, or the student and teacher have different numbers of rows.

    Example:
        >>> img = F.normalize(torch.randn(6, 8), dim=-1)
        >>> txt = F.normalize(torch.randn(6, 8), dim=-1)
        >>> teacher_img = F.normalize(torch.randn(6, 16), dim=-1)
        >>> teacher_txt = F.normalize(torch.randn(6, 16), dim=-1)
        >>> loss_fn = RelationalDistillLoss()
        >>> loss = loss_fn(img, txt, torch.tensor(20.0), teacher_img, teacher_txt, 100.0)
        >>> bool(loss > 0)
        True
        >>> float(loss_fn(img, txt, torch.tensor(20.0), img, txt, 20.0))  # the same softmaxes
        0.0
    """

    title: ClassVar[str] = "relational distillation (CLIP-KD)"

    def __init__(self, gather_distributed: bool = False) -> None:
        super().__init__()
        self.gather_distributed = gather_distributed

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        teacher_image_features: Tensor,
        teacher_text_features: Tensor,
        teacher_logit_scale: Tensor | float,
    ) -> Tensor:
        _check_pairs(image_features, text_features, teacher_image_features, teacher_text_features)
        teacher_images = teacher_image_features.detach()
        teacher_texts = teacher_text_features.detach()
        teacher_scale = torch.as_tensor(teacher_logit_scale, device=teacher_images.device)
        teacher_scale = teacher_scale.detach()
        if not (self.gather_distributed and distributed.is_distributed()):
            student = logit_scale * image_features @ text_features.T
            with torch.no_grad():
                teacher = teacher_scale * teacher_images @ teacher_texts.T
            per_image = _kl_rows(teacher, student)
            per_text = _kl_rows(teacher.T, student.T)
            return wide_mean(torch.cat([per_image, per_text]), 2 * image_features.shape[0])
        all_images = distributed.gather_with_grad(image_features)
        all_texts = distributed.gather_with_grad(text_features)
        all_teacher_images = distributed.gather(teacher_images)
        all_teacher_texts = distributed.gather(teacher_texts)
        with torch.no_grad():
            teacher_i2t = teacher_scale * teacher_images @ all_teacher_texts.T
            teacher_t2i = teacher_scale * teacher_texts @ all_teacher_images.T
        per_image = _kl_rows(teacher_i2t, logit_scale * image_features @ all_texts.T)
        per_text = _kl_rows(teacher_t2i, logit_scale * text_features @ all_images.T)
        share = wide_mean(torch.cat([per_image, per_text]), 2 * all_texts.shape[0])
        return distributed.sum_shares(share)


@LOSSES.register(
    "clip_kd",
    "CLIP's loss plus distillation from a teacher (CLIP-KD, Yang et al. 2024)",
)
class ClipDistillLoss(nn.Module):
    """CLIP-KD's training loss: CLIP's own loss plus distillation terms, weighted.

    With the student's features ``I``, ``T`` [N, D], multiplier ``s`` and the teacher's
    ``I^T``, ``T^T`` [N, D_T], ``s_T``::

        loss = task_weight * CLIP(I, T, s)
             + feature_weight * FD(I, T, I^T, T^T)
             + relational_weight * RD(I, T, s, I^T, T^T, s_T)

    ``CLIP`` is :class:`~mmcontrast.losses.ClipLoss`, ``FD``
    :class:`FeatureDistillLoss` and ``RD`` :class:`RelationalDistillLoss`. A term whose
    weight is 0 is not computed, so with ``feature_weight=0`` (the default) the student's
    embedding size D may differ from the teacher's D_T.

    The defaults are CLIP-KD's CRD recipe (its ``alpha_ckd_loss 1``, every other weight
    0): the task loss unweighted and the KL of the relational term at weight 1.
    Feature distillation is opt-in: it needs D == D_T (or a learnable projection of the
    student's features, which the method, not this stateless loss, must own), and its
    weight depends on the convention (CLIP-KD's 2000 averages over the D dimensions too:
    about 2000 / D here). CLIP-KD's best students add it (CRD + FD + ICL).

    Reference:
        Yang et al. 2024, "CLIP-KD: An Empirical Study of CLIP Model Distillation",
        https://arxiv.org/abs/2307.12732 (the overall loss: task + CRD + FD).

    Args:
        task_weight: weight of CLIP's symmetric InfoNCE on the student's own pairs.
        feature_weight: weight of the feature distillation term.
        relational_weight: weight of the relational distillation term.
        gather_distributed: use every process's pairs in CLIP's loss and the relational
            term (see :class:`RelationalDistillLoss`), and make the feature term this
            process's share of the global mean. The value on each process is then the loss
            of the whole batch, each student feature's gradient the one it has in a single
            process with the whole batch, and ``logit_scale`` gets this process's share.

    Shapes:
        image_features: [N, D], L2-normalised (the student's).
        text_features: [N, D], L2-normalised.
        logit_scale: scalar tensor, the student's multiplier ``s`` (already exponentiated).
        teacher_image_features: [N, D_T], L2-normalised; detached.
        teacher_text_features: [N, D_T], L2-normalised; detached.
        teacher_logit_scale: scalar tensor or float ``s_T`` (already exponentiated); detached.

    Raises:
        ValueError: if a weight is negative or not finite, or every weight is 0; at the
            call, if the shapes disagree, or ``feature_weight > 0`` and D != D_T.

    Example:
        >>> img = F.normalize(torch.randn(8, 32), dim=-1)
        >>> txt = F.normalize(torch.randn(8, 32), dim=-1)
        >>> teacher_img = F.normalize(torch.randn(8, 64), dim=-1)
        >>> teacher_txt = F.normalize(torch.randn(8, 64), dim=-1)
        >>> scale, teacher_scale = torch.tensor(14.3), 100.0
        >>> loss = ClipDistillLoss()(img, txt, scale, teacher_img, teacher_txt, teacher_scale)
        >>> from mmcontrast.losses import ClipLoss
        >>> task_only = ClipDistillLoss(relational_weight=0.0)
        >>> plain = task_only(img, txt, scale, teacher_img, teacher_txt, teacher_scale)
        >>> bool(torch.allclose(plain, ClipLoss()(img, txt, scale)))
        True
    """

    # The student starts as a CLIP model would (its own task loss is CLIP's).
    init_logit_scale: ClassVar[float] = ClipLoss.init_logit_scale
    init_logit_bias: ClassVar[float | None] = ClipLoss.init_logit_bias
    title: ClassVar[str] = "CLIP with distillation (CLIP-KD)"

    def __init__(
        self,
        task_weight: float = 1.0,
        feature_weight: float = 0.0,
        relational_weight: float = 1.0,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        weights = {
            "task_weight": task_weight,
            "feature_weight": feature_weight,
            "relational_weight": relational_weight,
        }
        for name, weight in weights.items():
            require_non_negative(name, weight)
        if not any(weight > 0 for weight in weights.values()):
            raise ValueError(
                "clip_kd: task_weight, feature_weight and relational_weight are all 0, which "
                "leaves no loss; set at least one above 0"
            )
        self.task_weight = float(task_weight)
        self.feature_weight = float(feature_weight)
        self.relational_weight = float(relational_weight)
        self.gather_distributed = gather_distributed
        # local_loss: the same value and gradients as the whole matrix, fewer products
        self.clip = ClipLoss(gather_distributed=gather_distributed, local_loss=True)
        self.relational = RelationalDistillLoss(gather_distributed=gather_distributed)

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        teacher_image_features: Tensor,
        teacher_text_features: Tensor,
        teacher_logit_scale: Tensor | float,
    ) -> Tensor:
        teachers = (teacher_image_features, teacher_text_features)
        _check_pairs(image_features, text_features, *teachers)
        terms: list[Tensor] = []
        if self.task_weight > 0:
            clip = self.clip(image_features, text_features, logit_scale)
            terms.append(self.task_weight * clip)
        if self.feature_weight > 0:
            per_row = _feature_distances(image_features, text_features, *teachers)
            if self.gather_distributed and distributed.is_distributed():
                _, total = distributed.local_offset(per_row.shape[0], per_row.device)
                feature = distributed.sum_shares(wide_mean(per_row, total))
            else:
                feature = wide_mean(per_row, per_row.shape[0])
            terms.append(self.feature_weight * feature)
        if self.relational_weight > 0:
            relational = self.relational(
                image_features, text_features, logit_scale, *teachers, teacher_logit_scale
            )
            terms.append(self.relational_weight * relational)
        total_loss = terms[0]
        for term in terms[1:]:
            total_loss = total_loss + term
        return total_loss


def _check_pairs(
    image_features: Tensor,
    text_features: Tensor,
    teacher_image_features: Tensor,
    teacher_text_features: Tensor,
) -> None:
    """[N, D] student and [N, D_T] teacher features, one row per pair on both sides."""
    require_dims("image_features", image_features, 2, "[N, D]")
    require_dims("teacher_image_features", teacher_image_features, 2, "[N, D_T]")
    require_same_shape(image_features=image_features, text_features=text_features)
    require_same_shape(
        teacher_image_features=teacher_image_features,
        teacher_text_features=teacher_text_features,
    )
    rows, teacher_rows = image_features.shape[0], teacher_image_features.shape[0]
    if rows != teacher_rows:
        raise ValueError(
            f"the teacher's features must have one row per pair of the student's: the student "
            f"has {rows} rows, the teacher {teacher_rows}; embed the same batch with both"
        )


def _feature_distances(
    image_features: Tensor,
    text_features: Tensor,
    teacher_image_features: Tensor,
    teacher_text_features: Tensor,
) -> Tensor:
    """Per pair, ``||I_i - I^T_i||^2 + ||T_i - T^T_i||^2`` [N], in at least float32."""
    size, teacher_size = image_features.shape[1], teacher_image_features.shape[1]
    if size != teacher_size:
        raise ValueError(
            f"feature distillation compares the student's embeddings with the teacher's, but "
            f"the student's are {size}-dimensional and the teacher's {teacher_size}-dimensional; "
            "project the student's features to the teacher's size (in training: model.embed_dim), "
            "or leave the feature term out (clip_kd's feature_weight: 0)"
        )
    return _squared_distances(image_features, teacher_image_features) + _squared_distances(
        text_features, teacher_text_features
    )


def _squared_distances(student: Tensor, teacher: Tensor) -> Tensor:
    """``||student_i - teacher_i||^2`` per row [N], in at least float32; the teacher detached."""
    wide = torch.promote_types(torch.promote_types(student.dtype, teacher.dtype), torch.float32)
    return (student.to(wide) - teacher.detach().to(wide)).pow(2).sum(dim=1)


def _kl_rows(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """``KL(softmax(teacher row) || softmax(student row))`` per row [B], in at least float32."""
    wide = torch.promote_types(
        torch.promote_types(student_logits.dtype, teacher_logits.dtype), torch.float32
    )
    log_teacher = F.log_softmax(teacher_logits.to(wide), dim=1)
    log_student = F.log_softmax(student_logits.to(wide), dim=1)
    return (log_teacher.exp() * (log_teacher - log_student)).sum(dim=1)
