"""CLIP's loss with extra negative captions per image: NegCLIP's hard negatives.

Yuksekgonul et al. 2023 ("When and why vision-language models behave like bags-of-words,
and what to do about it?") show that CLIP's batch negatives rarely differ from the positive
in word order or attribute binding, so a model can match captions as bags of words. NegCLIP
adds, for each image, captions that do (its caption with two nouns, adjectives or relations
swapped; :mod:`mmcontrast.data.caption_swaps`), as extra columns of that image's row of the
image-to-text softmax.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcontrast import distributed
from mmcontrast.losses.checks import require_same_shape
from mmcontrast.losses.numerics import wide_mean
from mmcontrast.registry import LOSSES


@LOSSES.register(
    "negclip",
    "CLIP's loss with hard negative captions per image (NegCLIP, Yuksekgonul et al. 2023)",
)
class NegClipLoss(nn.Module):
    """Symmetric InfoNCE where each image also sees its own hard negative captions.

    With L2-normalised features ``I`` [N, D], ``T`` [N, D], hard negatives ``H`` [N, M, D]
    (``H_i`` the negatives of image ``i``, valid where ``mask`` [N, M] is true) and
    multiplier ``s``::

        i2t_i = -log( exp(s I_i.T_i) / (sum_j exp(s I_i.T_j) + sum_{m valid} exp(s I_i.H_im)) )
        t2i_j = -log( exp(s I_j.T_j) / sum_i exp(s I_i.T_j) )
        loss  = (mean_i i2t_i + mean_j t2i_j) / 2

    The hard negatives enter only their own image's row: the text-to-image direction is
    CLIP's, and another image never sees them. Without valid negatives it is CLIP's loss.

    Reference:
        Yuksekgonul et al. 2023, "When and why vision-language models behave like
        bags-of-words, and what to do about it?", https://arxiv.org/abs/2210.01936
        (Section 4, NegCLIP).

    Args:
        gather_distributed: use every process's pairs as negatives (as
            :class:`~mmcontrast.losses.ClipLoss` with ``local_loss``); each image's hard
            negatives stay with it on its process. The value is the whole batch's loss, each
            feature's gradient the one it has in one process with the whole batch.

    Shapes:
        image_features: [N, D], L2-normalised.
        text_features: [N, D], L2-normalised.
        logit_scale: scalar tensor, the multiplier ``s`` (already exponentiated).
        negative_features: [N, M, D], L2-normalised (any values where the mask is false).
        negative_mask: [N, M] bool, which negatives are real.

    Raises:
        ValueError: if the shapes disagree, or the mask is not boolean.

    Example:
        >>> img = F.normalize(torch.randn(4, 16), dim=-1)
        >>> txt = F.normalize(torch.randn(4, 16), dim=-1)
        >>> neg = F.normalize(img[:, None] + 0.5 * torch.randn(4, 2, 16), dim=-1)  # close to I
        >>> mask = torch.tensor([[True, True], [True, False], [False, False], [True, False]])
        >>> loss = NegClipLoss()(img, txt, torch.tensor(100.0), neg, mask)
        >>> from mmcontrast.losses import ClipLoss
        >>> none = NegClipLoss()(img, txt, torch.tensor(100.0), neg, torch.zeros(4, 2, dtype=torch.bool))
        >>> bool(torch.allclose(none, ClipLoss()(img, txt, torch.tensor(100.0))))
        True
        >>> bool(loss > none)  # negatives close to their image: a larger loss
        True
    """

    init_logit_scale: ClassVar[float] = math.log(1 / 0.07)
    init_logit_bias: ClassVar[float | None] = None
    title: ClassVar[str] = "symmetric InfoNCE with hard negatives (NegCLIP)"

    def __init__(self, gather_distributed: bool = False) -> None:
        super().__init__()
        self.gather_distributed = gather_distributed

    def forward(
        self,
        image_features: Tensor,
        text_features: Tensor,
        logit_scale: Tensor,
        negative_features: Tensor,
        negative_mask: Tensor,
    ) -> Tensor:
        require_same_shape(image_features=image_features, text_features=text_features)
        _check_negatives(image_features, negative_features, negative_mask)
        gathered = self.gather_distributed and distributed.is_distributed()
        all_images, all_texts = image_features, text_features
        offset, total = 0, image_features.shape[0]
        if gathered:
            all_images = distributed.gather_with_grad(image_features)
            all_texts = distributed.gather_with_grad(text_features)
            offset, total = distributed.local_offset(image_features.shape[0], image_features.device)
        rows = image_features.shape[0]
        targets = torch.arange(offset, offset + rows, device=image_features.device)
        hard = logit_scale * torch.einsum("nd,nmd->nm", image_features, negative_features)
        hard = hard.masked_fill(~negative_mask.to(hard.device), float("-inf"))
        image_logits = torch.cat([logit_scale * image_features @ all_texts.T, hard], dim=1)
        text_logits = logit_scale * text_features @ all_images.T
        per_image = F.cross_entropy(image_logits, targets, reduction="none")
        per_text = F.cross_entropy(text_logits, targets, reduction="none")
        share = wide_mean(torch.cat([per_image, per_text]), 2 * total)
        return distributed.sum_shares(share) if gathered else share


def _check_negatives(images: Tensor, negatives: Tensor, mask: Tensor) -> None:
    n, d = images.shape
    if negatives.dim() != 3 or negatives.shape[0] != n or negatives.shape[2] != d:
        raise ValueError(
            f"negative_features must have shape [N, M, D] = [{n}, M, {d}] (M hard negatives "
            f"per image), got {tuple(negatives.shape)}"
        )
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(negatives.shape[:2]):
        raise ValueError(
            f"negative_mask must be a bool tensor of shape {tuple(negatives.shape[:2])}, got "
            f"{mask.dtype} {tuple(mask.shape)}"
        )
