"""Image-text losses with several positives per row: pairs that share an id (UniCL, SigLIP).

A batch of image-text pairs comes with integer ``ids`` [N]; pairs with equal ids (several
captions of one image, or images of one class as in UniCL's image-label data) are positives
of each other instead of negatives. With unique ids both losses are their one-positive
counterparts, :class:`~mmcontrast.losses.ClipLoss` and :class:`~mmcontrast.losses.SigLipLoss`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcontrast import distributed
from mmcontrast.losses.checks import require_same_shape
from mmcontrast.losses.clip import ClipLoss
from mmcontrast.losses.numerics import wide_mean
from mmcontrast.losses.siglip import SigLipLoss
from mmcontrast.registry import LOSSES


@LOSSES.register(
    "unicl", "bidirectional InfoNCE with the pairs sharing an id as positives (Yang et al. 2022)"
)
class UniClLoss(nn.Module):
    """UniCL's bidirectional target-aware contrastive loss over image-text pairs.

    With L2-normalised features ``I`` [N, D], ``T`` [N, D], multiplier ``s`` and the
    positives of pair ``i``, ``P(i) = {k : ids_k == ids_i}`` (``i`` itself included)::

        L_i2t(i) = -1/|P(i)| * sum_{k in P(i)} log( exp(s I_i.T_k) / sum_j exp(s I_i.T_j) )
        L_t2i(j) = -1/|P(j)| * sum_{k in P(j)} log( exp(s I_k.T_j) / sum_i exp(s I_i.T_j) )
        loss = mean_i L_i2t(i) / 2 + mean_j L_t2i(j) / 2

    That is the cross-entropy of each row (and column) of ``s * I @ T.T`` against the
    uniform distribution over its positives. With unique ids it is CLIP's loss
    (:class:`~mmcontrast.losses.ClipLoss`). Unlike ``ClipLoss(labels=...)`` (FLYP), which
    drops same-label entries from the softmax, this loss pulls them up; a row with ``k``
    positives cannot go below ``log k`` (the entropy of its target).

    Reference:
        Yang et al. 2022, "Unified Contrastive Learning in Image-Text-Label Space",
        https://arxiv.org/abs/2204.03610 (its bidirectional target-aware loss).

    Args:
        gather_distributed: use every process's pairs. ``ids`` are compared across
            processes, so they must be global (an image id, a dataset row id or a class
            label, never a position in the local batch). Each process computes only its own
            rows and columns of the global matrix; the value on each process is the loss of
            the whole batch, each feature's gradient the one it has in a single process
            with the whole batch, and ``logit_scale`` gets this process's share (see
            :mod:`mmcontrast.distributed`).

    Shapes:
        image_features: [N, D], L2-normalised.
        text_features: [N, D], L2-normalised.
        logit_scale: scalar tensor, the multiplier ``s`` (already exponentiated).
        ids: [N] integer tensor; rows with equal ids are positives of each other.

    Raises:
        ValueError: if the feature shapes differ, or ``ids`` is not an integer tensor of
            shape [N].

    Example:
        >>> img = F.normalize(torch.randn(6, 32), dim=-1)
        >>> txt = F.normalize(torch.randn(6, 32), dim=-1)
        >>> ids = torch.tensor([0, 0, 0, 1, 2, 2])  # three captions of image 0, two of image 2
        >>> loss = UniClLoss()(img, txt, torch.tensor(100.0), ids)
        >>> from mmcontrast.losses import ClipLoss
        >>> unique = UniClLoss()(img, txt, torch.tensor(100.0), torch.arange(6))
        >>> bool(torch.allclose(unique, ClipLoss()(img, txt, torch.tensor(100.0))))
        True
    """

    title: ClassVar[str] = "multi-positive InfoNCE (UniCL)"  # how model cards name the loss
    init_logit_scale: ClassVar[float] = ClipLoss.init_logit_scale  # a dual encoder's start
    init_logit_bias: ClassVar[float | None] = None

    def __init__(self, gather_distributed: bool = False) -> None:
        super().__init__()
        self.gather_distributed = gather_distributed

    def forward(
        self, image_features: Tensor, text_features: Tensor, logit_scale: Tensor, ids: Tensor
    ) -> Tensor:
        require_same_shape(image_features=image_features, text_features=text_features)
        ids = _checked_ids(ids, image_features)
        if not (self.gather_distributed and distributed.is_distributed()):
            image_logits = logit_scale * image_features @ text_features.T
            positives = ids[:, None] == ids[None, :]
            per_image = _multi_positive_ce(image_logits, positives)
            per_text = _multi_positive_ce(image_logits.T, positives)  # a symmetric mask
            return wide_mean(torch.cat([per_image, per_text]), 2 * ids.shape[0])
        all_images = distributed.gather_with_grad(image_features)
        all_texts = distributed.gather_with_grad(text_features)
        all_ids = distributed.gather(ids)
        positives = ids[:, None] == all_ids[None, :]  # this process's rows, every column
        per_image = _multi_positive_ce(logit_scale * image_features @ all_texts.T, positives)
        per_text = _multi_positive_ce(logit_scale * text_features @ all_images.T, positives)
        share = wide_mean(torch.cat([per_image, per_text]), 2 * all_ids.shape[0])
        return distributed.sum_shares(share)


@LOSSES.register(
    "siglip_multi",
    "pairwise sigmoid loss with the pairs sharing an id as positives (Zhai et al. 2023)",
)
class SigLipMultiPositiveLoss(nn.Module):
    """SigLIP's pairwise sigmoid loss where every pair sharing an id is a positive.

    With L2-normalised features ``I`` [N, D], ``T`` [N, D], multiplier ``s``, bias ``b``::

        z_ij = s * I_i.T_j + b
        y_ij = +1 if ids_i == ids_j else -1
        loss = -sum_ij log sigmoid(y_ij * z_ij) / N

    With unique ids ``y`` is +1 on the diagonal only: SigLIP's loss
    (:class:`~mmcontrast.losses.SigLipLoss`). Each pair is its own binary problem, so
    several positives per row need no renormalisation (as UniCL's targets do).

    Reference:
        Zhai et al. 2023, "Sigmoid Loss for Language Image Pre-Training",
        https://arxiv.org/abs/2303.15343 (Algorithm 1), with the labels of UniCL's target
        matrix (Yang et al. 2022, https://arxiv.org/abs/2204.03610).

    Args:
        gather_distributed: use every process's texts (and their ids) against this
            process's images. ``ids`` are compared across processes, so they must be global
            (an image id, a dataset row id or a class label). The value and the feature
            gradients equal one process with the whole batch (``logit_scale`` and
            ``logit_bias`` get this process's share).

    Shapes:
        image_features: [N, D], L2-normalised.
        text_features: [N, D], L2-normalised.
        logit_scale: scalar tensor, the multiplier ``s`` (already exponentiated).
        logit_bias: scalar tensor ``b``.
        ids: [N] integer tensor; rows with equal ids are positives of each other.

    Raises:
        ValueError: if the feature shapes differ, or ``ids`` is not an integer tensor of
            shape [N].

    Example:
        >>> img = F.normalize(torch.randn(6, 32), dim=-1)
        >>> txt = F.normalize(torch.randn(6, 32), dim=-1)
        >>> scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
        >>> ids = torch.tensor([0, 0, 0, 1, 2, 2])
        >>> loss = SigLipMultiPositiveLoss()(img, txt, scale, bias, ids)
        >>> from mmcontrast.losses import SigLipLoss
        >>> unique = SigLipMultiPositiveLoss()(img, txt, scale, bias, torch.arange(6))
        >>> bool(torch.allclose(unique, SigLipLoss()(img, txt, scale, bias)))
        True
    """

    title: ClassVar[str] = "multi-positive pairwise sigmoid (SigLIP)"
    init_logit_scale: ClassVar[float] = SigLipLoss.init_logit_scale
    init_logit_bias: ClassVar[float | None] = SigLipLoss.init_logit_bias

    def __init__(self, gather_distributed: bool = False) -> None:
        super().__init__()
        self.gather_distributed = gather_distributed

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        logit_bias: Tensor,
        ids: Tensor,
    ) -> Tensor:
        require_same_shape(image_features=image_features, text_features=text_features)
        ids = _checked_ids(ids, image_features)
        gathered = self.gather_distributed and distributed.is_distributed()
        texts, text_ids = text_features, ids
        if gathered:
            texts = distributed.gather_with_grad(text_features)
            text_ids = distributed.gather(ids)
        logits = logit_scale * image_features @ texts.T + logit_bias
        signs = torch.where(ids[:, None] == text_ids[None, :], 1.0, -1.0).to(logits.dtype)
        wide = torch.promote_types(logits.dtype, torch.float32)  # fp16 sums overflow
        loss_sum = -F.logsigmoid(signs * logits).sum(dtype=wide)
        share = (loss_sum / max(text_ids.shape[0], 1)).to(logits.dtype)
        return distributed.sum_shares(share) if gathered else share


def _checked_ids(ids: Tensor, features: Tensor) -> Tensor:
    """``ids`` on the features' device, after checking it is an integer tensor [N]."""
    if not isinstance(ids, Tensor):
        raise ValueError(
            f"ids must be an integer tensor of shape [N], got {type(ids).__name__}; "
            "pass torch.tensor(ids)"
        )
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(
            f"ids must be integers (image ids, dataset row ids or class labels), got "
            f"{ids.dtype}; convert whole-number ids with ids.long()"
        )
    if ids.dim() != 1 or ids.shape[0] != features.shape[0]:
        raise ValueError(
            f"ids must have shape [N] = [{features.shape[0]}], one per image-text pair, "
            f"got shape {tuple(ids.shape)}"
        )
    return ids.to(features.device)


def _multi_positive_ce(logits: Tensor, positives: Tensor) -> Tensor:
    """Per row of ``logits`` [B, M]: minus the mean log-softmax over the row's positives."""
    log_probs = F.log_softmax(logits, dim=1)
    summed = torch.where(positives, log_probs, torch.zeros_like(log_probs)).sum(dim=1)
    return -summed / positives.sum(dim=1).clamp(min=1).to(log_probs.dtype)
