"""DINO: the student's softmax over prototypes predicts the teacher's centred, sharpened one."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mmcontrast import distributed
from mmcontrast.losses.checks import require_positive
from mmcontrast.registry import LOSSES


@LOSSES.register(
    "dino", "self-distillation: teacher's centred, sharpened softmax (Caron et al. 2021)"
)
class DINOLoss(nn.Module):
    """Cross-entropy from the teacher's centred, sharpened distribution to the student's.

    For each teacher (global) view ``i`` the target is a constant
    ``q_i = softmax((t_i - center) / tau_t)``; every student view ``v`` other than view
    ``i`` itself, global or local, predicts it with ``log p_v = log_softmax(s_v / tau_s)``::

        l(i, v) = mean over the batch of -sum_k q_i[k] * log p_v[k]
        loss = mean over the pairs (i, v), v != i, of l(i, v)

    The first ``len(teacher_outputs)`` student views are the teacher's views, in the same
    order (Algorithm 1: ``H(t1, s2) / 2 + H(t2, s1) / 2`` for two views). The loss holds no
    state: the center is passed in, and :func:`update_center` gives the next one.

    Reference:
        Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers",
        https://arxiv.org/abs/2104.14294 (Algorithm 1; section 3.1: centring and
        sharpening, the student temperature 0.1, the teacher's warmed up from 0.04 to 0.07).

    Args:
        student_temperature: ``tau_s`` > 0.
        teacher_temperature: ``tau_t`` > 0 when ``forward`` is given none (the method
            passes its warmed-up value every step); lower is sharper.

    Shapes:
        student_outputs: sequence of [B, K], the teacher's views first, then the others
            (at least two views in all).
        teacher_outputs: sequence of [B, K], one per global view (at least one); no
            gradient reaches them.
        center: [K] (or anything that broadcasts against [B, K]); no gradient.
        Returns a scalar, in float32 at least.

    Raises:
        ValueError: for bad temperatures, no teacher view, fewer student views than
            teacher views or than two, or views of different shapes.

    Example:
        >>> loss_fn = DINOLoss(student_temperature=0.1, teacher_temperature=0.04)
        >>> student = [torch.randn(8, 64) for _ in range(4)]  # 2 global + 2 local views
        >>> teacher = [torch.randn(8, 64) for _ in range(2)]
        >>> loss = loss_fn(student, teacher, center=torch.zeros(64))
        >>> loss_fn(student, teacher, torch.zeros(64), teacher_temperature=0.07).ndim
        0
    """

    def __init__(self, student_temperature: float = 0.1, teacher_temperature: float = 0.04) -> None:
        super().__init__()
        require_positive("student_temperature", student_temperature)
        require_positive("teacher_temperature", teacher_temperature)
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature

    def forward(
        self,
        student_outputs: Sequence[Tensor],
        teacher_outputs: Sequence[Tensor],
        center: Tensor,
        teacher_temperature: float | None = None,
    ) -> Tensor:
        tau_t = self.teacher_temperature if teacher_temperature is None else teacher_temperature
        require_positive("teacher_temperature", tau_t)
        if not teacher_outputs or len(student_outputs) < max(2, len(teacher_outputs)):
            raise ValueError(
                f"DINO needs at least one teacher view, and two student views of which the "
                f"first are the teacher's; got {len(teacher_outputs)} teacher and "
                f"{len(student_outputs)} student views"
            )
        views = [*student_outputs, *teacher_outputs]
        if len({tuple(v.shape) for v in views}) > 1 or views[0].ndim != 2:
            raise ValueError(
                f"every view's outputs must be [B, K]; got {[tuple(v.shape) for v in views]}"
            )
        dtype = torch.promote_types(views[0].dtype, torch.float32)  # half-precision softmax: no
        with torch.no_grad():
            targets = [
                torch.softmax((t.detach().to(dtype) - center.detach().to(dtype)) / tau_t, dim=-1)
                for t in teacher_outputs
            ]
        log_probs = [
            torch.log_softmax(s.to(dtype) / self.student_temperature, dim=-1)
            for s in student_outputs
        ]
        terms = [
            -(q * log_probs[v]).sum(dim=-1).mean()
            for i, q in enumerate(targets)
            for v in range(len(log_probs))
            if v != i
        ]
        return torch.stack(terms).mean()


@torch.no_grad()
def update_center(
    center: Tensor, teacher_outputs: Sequence[Tensor], momentum: float = 0.9
) -> Tensor:
    """The next center: ``momentum * center + (1 - momentum) * mean of the teacher outputs``.

    The mean runs over every row of every teacher view, on every process (its sums are
    all-reduced, as DINO's code does), so it equals one process with the whole batch. A
    non-finite mean (a batch the training loop skips) leaves the center as it was; the
    check runs on the device, with no synchronisation.

    Section 3.1 of Caron et al. 2021: ``c <- m c + (1 - m) (1 / B) sum_i g_t(x_i)``, m = 0.9.

    Args:
        center: [K], the current center.
        teacher_outputs: sequence of [B, K], the teacher's raw (uncentred) outputs.
        momentum: ``m`` in [0, 1).

    Raises:
        ValueError: ``momentum`` outside [0, 1), or no teacher output.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"center momentum must be in [0, 1), got {momentum!r}")
    if not teacher_outputs:
        raise ValueError("update_center needs at least one teacher output")
    outputs = torch.cat([t.detach() for t in teacher_outputs]).to(center.dtype)
    rows = outputs.new_full((1,), float(outputs.shape[0]))
    sums = distributed.all_reduce_sum(torch.cat([outputs.sum(dim=0), rows]))  # one all-reduce
    mean = sums[:-1] / sums[-1]
    updated = center * momentum + mean * (1 - momentum)
    return torch.where(torch.isfinite(mean).all(), updated, center)
