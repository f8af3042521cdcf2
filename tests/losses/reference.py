"""Naive reference implementations of the contrastive losses, for tests only.

Each function is written directly from its paper's formula or pseudocode, with explicit Python
loops over anchors, rows and pairs and simple per-element arithmetic. They are deliberately
slow and structurally different from the vectorised losses in ``mmcontrast.losses``, so that
agreement between the two is evidence that both are right.

Conventions:

* callers pass float64 tensors; nothing here casts its inputs;
* every loss is built from differentiable torch ops (no ``.item()`` or numpy on the
  differentiable path), so tests can compare gradients as well as values;
* every loss returns a 0-dim tensor; where no term is defined (no valid anchor or triplet) it
  returns ``0 * input.sum()`` so the result is still connected to the autograd graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------------
# Small per-vector helpers
# ---------------------------------------------------------------------------------------------
def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Inner product of two 1-D vectors."""
    return torch.sum(a * b)


def _norm(a: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of a 1-D vector."""
    return torch.sqrt(torch.sum(a * a))


def _l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise each row of ``x`` (any leading shape), one row at a time."""
    flat = x.reshape(-1, x.shape[-1])
    rows = [flat[r] / _norm(flat[r]) for r in range(flat.shape[0])]
    return torch.stack(rows).reshape(x.shape)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of two 1-D vectors."""
    return _dot(a, b) / (_norm(a) * _norm(b))


def _distance(a: torch.Tensor, b: torch.Tensor, distance: str) -> torch.Tensor:
    """``"euclidean"``: ``||a - b||`` (not squared); ``"cosine"``: ``1 - cos(a, b)``."""
    if distance == "euclidean":
        return _norm(a - b)
    if distance == "cosine":
        return 1.0 - _cosine(a, b)
    raise ValueError(f"unknown distance {distance!r}")


def _neg_log_softmax_at(logits: torch.Tensor, index: int) -> torch.Tensor:
    """``-log softmax(logits)[index]`` for a 1-D tensor of logits."""
    return torch.logsumexp(logits, dim=0) - logits[index]


def _hinge(x: torch.Tensor) -> torch.Tensor:
    """``max(0, x)`` for a 0-dim tensor."""
    return torch.clamp(x, min=0.0)


# ---------------------------------------------------------------------------------------------
# Image-text losses
# ---------------------------------------------------------------------------------------------
def clip_reference(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """Symmetric InfoNCE of CLIP (Radford et al. 2021, "Learning Transferable Visual Models
    From Natural Language Supervision").

    Features are already L2-normalised ``[N, D]``; ``logit_scale`` is the exponentiated scale
    ``s``. ``logits[i, j] = s * <I_i, T_j>``; the loss is the mean of the image->text
    cross-entropy (over rows) and the text->image cross-entropy (over columns).
    """
    n = image_features.shape[0]
    logits = [
        torch.stack([logit_scale * _dot(image_features[i], text_features[j]) for j in range(n)])
        for i in range(n)
    ]
    image_to_text = [_neg_log_softmax_at(logits[i], i) for i in range(n)]
    text_to_image = []
    for j in range(n):
        column = torch.stack([logits[i][j] for i in range(n)])
        text_to_image.append(_neg_log_softmax_at(column, j))
    return (torch.stack(image_to_text).mean() + torch.stack(text_to_image).mean()) / 2


def clip_masked_reference(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    labels: torch.Tensor,
) -> torch.Tensor:
    """CLIP's loss where rows sharing a label are not each other's negatives (FLYP's class
    prompts, Goyal et al. 2023): row ``i``'s softmax runs over its positive ``i`` and the
    columns ``j`` with ``labels[j] != labels[i]``; the same for columns."""
    n = image_features.shape[0]

    def term(queries: torch.Tensor, keys: torch.Tensor, i: int) -> torch.Tensor:
        kept = [j for j in range(n) if j == i or labels[j] != labels[i]]
        logits = torch.stack([logit_scale * _dot(queries[i], keys[j]) for j in kept])
        return _neg_log_softmax_at(logits, kept.index(i))

    image_to_text = torch.stack([term(image_features, text_features, i) for i in range(n)])
    text_to_image = torch.stack([term(text_features, image_features, i) for i in range(n)])
    return (image_to_text.mean() + text_to_image.mean()) / 2


def siglip_reference(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float,
) -> torch.Tensor:
    """Pairwise sigmoid loss of SigLIP (Zhai et al. 2023, "Sigmoid Loss for Language Image
    Pre-Training").

    ``z_ij = s * <I_i, T_j> + b``, ``y_ij = +1`` on the diagonal and ``-1`` elsewhere;
    ``loss = -sum_ij log sigmoid(y_ij * z_ij) / N``.
    """
    n = image_features.shape[0]
    total = image_features.new_zeros(())
    for i in range(n):
        for j in range(n):
            z = logit_scale * _dot(image_features[i], text_features[j]) + logit_bias
            y = 1.0 if i == j else -1.0
            total = total - F.logsigmoid(y * z)
    return total / n


def unicl_reference(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    ids: torch.Tensor,
) -> torch.Tensor:
    """UniCL's bidirectional target-aware loss (Yang et al. 2022, "Unified Contrastive
    Learning in Image-Text-Label Space"), averaged over the batch.

    ``P(i) = {k : ids[k] == ids[i]}``. Image ``i``: ``-1/|P(i)| sum_{k in P(i)} log
    softmax_j(s <I_i, T_j>)[k]``; text ``j``: ``-1/|P(j)| sum_{k in P(j)} log
    softmax_i(s <I_i, T_j>)[k]``; the loss is the mean over images / 2 + mean over texts / 2.
    """
    n = image_features.shape[0]
    logits = [
        [logit_scale * _dot(image_features[i], text_features[j]) for j in range(n)]
        for i in range(n)
    ]
    image_to_text = []
    text_to_image = []
    for a in range(n):
        positives = [k for k in range(n) if int(ids[k]) == int(ids[a])]
        row = torch.stack([logits[a][j] for j in range(n)])
        column = torch.stack([logits[i][a] for i in range(n)])
        image_to_text.append(sum(_neg_log_softmax_at(row, k) for k in positives) / len(positives))
        text_to_image.append(
            sum(_neg_log_softmax_at(column, k) for k in positives) / len(positives)
        )
    return torch.stack(image_to_text).mean() / 2 + torch.stack(text_to_image).mean() / 2


def siglip_multi_reference(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor | float,
    logit_bias: torch.Tensor | float,
    ids: torch.Tensor,
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss with ``y_ij = +1`` iff ``ids[i] == ids[j]`` (else -1):
    ``-sum_ij log sigmoid(y_ij * (s * <I_i, T_j> + b)) / N``."""
    n = image_features.shape[0]
    total = image_features.new_zeros(())
    for i in range(n):
        for j in range(n):
            z = logit_scale * _dot(image_features[i], text_features[j]) + logit_bias
            y = 1.0 if int(ids[i]) == int(ids[j]) else -1.0
            total = total - F.logsigmoid(y * z)
    return total / n


# ---------------------------------------------------------------------------------------------
# Generic InfoNCE / SimCLR / SupCon
# ---------------------------------------------------------------------------------------------
def infonce_reference(
    query: torch.Tensor,
    positive_key: torch.Tensor,
    negative_keys: torch.Tensor | None = None,
    temperature: float = 0.07,
) -> torch.Tensor:
    """InfoNCE (van den Oord et al. 2018, "Representation Learning with Contrastive Predictive
    Coding").

    All inputs are L2-normalised here. With ``negative_keys [M, D]`` each query ``q_i`` is
    scored against ``[k+_i, n_1, ..., n_M]`` (positive at index 0); without them, against all
    positive keys of the batch (in-batch negatives, positive at index ``i``). Mean over queries.
    """
    q = _l2_normalize(query)
    k = _l2_normalize(positive_key)
    n = q.shape[0]
    losses = []
    if negative_keys is not None:
        neg = _l2_normalize(negative_keys)
        for i in range(n):
            scores = [_dot(q[i], k[i])] + [_dot(q[i], neg[m]) for m in range(neg.shape[0])]
            losses.append(_neg_log_softmax_at(torch.stack(scores) / temperature, 0))
    else:
        for i in range(n):
            scores = [_dot(q[i], k[j]) for j in range(n)]
            losses.append(_neg_log_softmax_at(torch.stack(scores) / temperature, i))
    return torch.stack(losses).mean()


def ntxent_reference(z0: torch.Tensor, z1: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent of SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of
    Visual Representations").

    ``z = concat(z0, z1)`` holds ``2N`` vectors; the positive of anchor ``k`` is
    ``(k + N) mod 2N`` and the denominator runs over every ``m != k``, with cosine similarity
    divided by ``temperature``. Mean over the ``2N`` anchors.
    """
    z = torch.cat([z0, z1], dim=0)
    two_n = z.shape[0]
    n = two_n // 2
    losses = []
    for k in range(two_n):
        p = (k + n) % two_n
        positive = _cosine(z[k], z[p]) / temperature
        others = torch.stack([_cosine(z[k], z[m]) / temperature for m in range(two_n) if m != k])
        losses.append(torch.logsumexp(others, dim=0) - positive)
    return torch.stack(losses).mean()


def supcon_reference(
    features: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
    variant: str = "out",
) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, "Supervised Contrastive Learning").

    ``features [N, V, D]`` are L2-normalised here; every one of the ``N * V`` views is an
    anchor. ``A(a)`` is every view but ``a``; ``P(a)`` the views of ``A(a)`` with ``a``'s label
    (``labels=None``: each sample is its own class). With
    ``log_prob(a, p) = <z_a, z_p>/t - log sum_{b in A(a)} exp(<z_a, z_b>/t)``:

    * ``"out"`` (eq. 2): ``-(t/base_t) * mean_{p in P(a)} log_prob(a, p)``;
    * ``"in"`` (eq. 3): ``-(t/base_t) * log mean_{p in P(a)} exp(log_prob(a, p))``.

    Anchors without positives contribute 0; the mean is over all ``N * V`` anchors (the
    official implementation's convention).
    """
    if variant not in ("out", "in"):
        raise ValueError(f"unknown variant {variant!r}")
    n, v = features.shape[0], features.shape[1]
    z = _l2_normalize(features)
    views = [z[i, j] for i in range(n) for j in range(v)]
    owners = [i for i in range(n) for _ in range(v)]
    view_labels = owners if labels is None else [labels[i].item() for i in owners]

    losses = []
    for a in range(len(views)):
        contrast = [b for b in range(len(views)) if b != a]
        positives = [p for p in contrast if view_labels[p] == view_labels[a]]
        if not positives:
            losses.append(features.sum() * 0)
            continue
        logits = {b: _dot(views[a], views[b]) / temperature for b in contrast}
        log_denominator = torch.logsumexp(torch.stack([logits[b] for b in contrast]), dim=0)
        log_probs = torch.stack([logits[p] - log_denominator for p in positives])
        if variant == "out":
            inner = log_probs.mean()
        else:
            inner = torch.log(torch.exp(log_probs).mean())
        losses.append(-(temperature / base_temperature) * inner)
    if not losses:
        return features.sum() * 0
    return torch.stack(losses).mean()


# ---------------------------------------------------------------------------------------------
# Metric-learning losses
# ---------------------------------------------------------------------------------------------
def contrastive_reference(
    x1: torch.Tensor, x2: torch.Tensor, same: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """Margin contrastive loss (Hadsell, Chopra & LeCun 2006, "Dimensionality Reduction by
    Learning an Invariant Mapping").

    ``d_i = ||x1_i - x2_i||``;
    ``loss = mean_i 0.5 * (same_i * d_i^2 + (1 - same_i) * max(0, margin - d_i)^2)``.
    """
    losses = []
    for i in range(x1.shape[0]):
        d = _norm(x1[i] - x2[i])
        y = same[i].to(x1.dtype)
        losses.append(0.5 * (y * d**2 + (1 - y) * _hinge(margin - d) ** 2))
    return torch.stack(losses).mean()


def triplet_reference(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    margin: float = 0.2,
    distance: str = "euclidean",
) -> torch.Tensor:
    """Triplet loss of FaceNet (Schroff et al. 2015, "FaceNet: A Unified Embedding for Face
    Recognition and Clustering").

    ``loss = mean_i max(0, d(a_i, p_i) - d(a_i, n_i) + margin)`` with ``d`` the (non-squared)
    Euclidean distance or ``1 - cos``.
    """
    losses = []
    for i in range(anchor.shape[0]):
        d_ap = _distance(anchor[i], positive[i], distance)
        d_an = _distance(anchor[i], negative[i], distance)
        losses.append(_hinge(d_ap - d_an + margin))
    return torch.stack(losses).mean()


def triplet_batch_hard_reference(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.2,
    distance: str = "euclidean",
) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans, Beyer & Leibe 2017, "In Defense of the Triplet Loss
    for Person Re-Identification").

    For each anchor with at least one positive (same label, other index) and one negative:
    ``max(0, max_pos d(i, j) - min_neg d(i, k) + margin)``. Mean over such anchors (0 if none).
    """
    n = embeddings.shape[0]
    label_list = [labels[i].item() for i in range(n)]
    losses = []
    for i in range(n):
        positives = [j for j in range(n) if j != i and label_list[j] == label_list[i]]
        negatives = [k for k in range(n) if label_list[k] != label_list[i]]
        if not positives or not negatives:
            continue
        hardest_positive = torch.stack(
            [_distance(embeddings[i], embeddings[j], distance) for j in positives]
        ).max()
        hardest_negative = torch.stack(
            [_distance(embeddings[i], embeddings[k], distance) for k in negatives]
        ).min()
        losses.append(_hinge(hardest_positive - hardest_negative + margin))
    if not losses:
        return embeddings.sum() * 0
    return torch.stack(losses).mean()


def triplet_batch_all_reference(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.2,
    distance: str = "euclidean",
) -> torch.Tensor:
    """Batch-all triplet loss (Hermans, Beyer & Leibe 2017, "In Defense of the Triplet Loss
    for Person Re-Identification").

    Every valid triplet ``(i, j, k)`` has ``label_i == label_j``, ``i != j`` and
    ``label_k != label_i``. Convention ("positive triplets"): the loss is the mean of
    ``max(0, d(i, j) - d(i, k) + margin)`` over only the triplets where that value is strictly
    positive, i.e. easy triplets do not dilute the average; 0 if there is no such triplet.
    """
    n = embeddings.shape[0]
    label_list = [labels[i].item() for i in range(n)]
    active = []
    for i in range(n):
        for j in range(n):
            if j == i or label_list[j] != label_list[i]:
                continue
            for k in range(n):
                if label_list[k] == label_list[i]:
                    continue
                d_ij = _distance(embeddings[i], embeddings[j], distance)
                d_ik = _distance(embeddings[i], embeddings[k], distance)
                value = d_ij - d_ik + margin
                if value > 0:  # selection only; the kept value stays differentiable
                    active.append(value)
    if not active:
        return embeddings.sum() * 0
    return torch.stack(active).mean()


def npair_reference(
    anchors: torch.Tensor, positives: torch.Tensor, l2_reg: float = 0.0
) -> torch.Tensor:
    """Multi-class N-pair loss (Sohn 2016, "Improved Deep Metric Learning with Multi-class
    N-pair Loss Objective").

    ``loss_i = -log softmax_j(<a_i, p_j>)[i]``; ``loss = mean_i loss_i + l2_reg * m`` where
    ``m`` is the mean squared norm over all ``2N`` input vectors (anchors and positives).
    """
    n = anchors.shape[0]
    losses = []
    for i in range(n):
        logits = torch.stack([_dot(anchors[i], positives[j]) for j in range(n)])
        losses.append(_neg_log_softmax_at(logits, i))
    squared_norms = [_dot(anchors[i], anchors[i]) for i in range(n)]
    squared_norms += [_dot(positives[i], positives[i]) for i in range(n)]
    return torch.stack(losses).mean() + l2_reg * torch.stack(squared_norms).mean()


# ---------------------------------------------------------------------------------------------
# Non-contrastive self-supervised losses
# ---------------------------------------------------------------------------------------------
def negative_cosine_reference(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Negative cosine similarity with stop-gradient on the target (SimSiam, Chen & He 2021,
    "Exploring Simple Siamese Representation Learning"; BYOL, Grill et al. 2020).

    ``loss = -mean_i cos(prediction_i, stopgrad(target_i))``.
    """
    target = target.detach()
    cosines = [_cosine(prediction[i], target[i]) for i in range(prediction.shape[0])]
    return -torch.stack(cosines).mean()


def barlow_twins_reference(
    z_a: torch.Tensor, z_b: torch.Tensor, lambda_param: float = 5e-3
) -> torch.Tensor:
    """Barlow Twins (Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via
    Redundancy Reduction").

    Each dimension is standardised over the batch, ``(z - mean) / sqrt(var_biased + 1e-5)``
    (affine-free BatchNorm); ``C_ij = sum_n za_ni * zb_nj / N``;
    ``loss = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2``.
    """
    eps = 1e-5

    def standardise(z: torch.Tensor) -> list[torch.Tensor]:
        columns = []
        for d in range(z.shape[1]):
            column = z[:, d]
            mean = column.sum() / column.shape[0]
            var = ((column - mean) ** 2).sum() / column.shape[0]
            columns.append((column - mean) / torch.sqrt(var + eps))
        return columns

    a_cols, b_cols = standardise(z_a), standardise(z_b)
    n, dims = z_a.shape[0], z_a.shape[1]
    on_diagonal = z_a.new_zeros(())
    off_diagonal = z_a.new_zeros(())
    for i in range(dims):
        for j in range(dims):
            c_ij = _dot(a_cols[i], b_cols[j]) / n
            if i == j:
                on_diagonal = on_diagonal + (1 - c_ij) ** 2
            else:
                off_diagonal = off_diagonal + c_ij**2
    return on_diagonal + lambda_param * off_diagonal


# ---------------------------------------------------------------------------------------------
# SwAV
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def sinkhorn_reference(
    scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3
) -> torch.Tensor:
    """Sinkhorn-Knopp codes of SwAV (Caron et al. 2020, "Unsupervised Learning of Visual
    Features by Contrasting Cluster Assignments", appendix pseudocode).

    ``scores [B, K]`` -> codes ``[B, K]`` in float64, each row summing to 1. No gradient.
    """
    logits = scores.detach().double() / epsilon
    # Subtracting the global max only rescales Q by a constant, which the first
    # normalisation (Q /= sum(Q)) cancels exactly; it just keeps exp() from overflowing.
    q = torch.exp(logits - logits.max()).t()  # K x B
    k, b = q.shape
    q = q / q.sum()
    for _ in range(iterations):
        q = q / q.sum(dim=1, keepdim=True)  # rows: each prototype gets mass 1/K
        q = q / k
        q = q / q.sum(dim=0, keepdim=True)  # columns: each sample gets mass 1/B
        q = q / b
    return (q * b).t()


def swav_reference(
    high_res_scores: Sequence[torch.Tensor],
    low_res_scores: Sequence[torch.Tensor] = (),
    temperature: float = 0.1,
    sinkhorn_iterations: int = 3,
    epsilon: float = 0.05,
) -> torch.Tensor:
    """Swapped-prediction loss of SwAV (Caron et al. 2020, "Unsupervised Learning of Visual
    Features by Contrasting Cluster Assignments").

    Codes ``q_i`` come from each global (high-resolution) view's ``[B, K]`` scores. Every other
    view ``v`` (the other global views, then all low-resolution views) predicts them:
    ``term = mean_b -sum_k q_i[b, k] * log_softmax(scores_v[b] / temperature)[k]``. The loss
    averages the terms over ``v`` for each ``i``, then over ``i``.
    """
    sublosses = []
    for i, global_scores in enumerate(high_res_scores):
        q = sinkhorn_reference(global_scores, epsilon=epsilon, iterations=sinkhorn_iterations)
        others = [s for v, s in enumerate(high_res_scores) if v != i] + list(low_res_scores)
        terms = []
        for scores_v in others:
            per_sample = []
            for row in range(scores_v.shape[0]):
                logits = scores_v[row] / temperature
                log_p = logits - torch.logsumexp(logits, dim=0)
                cross_entropy = scores_v.new_zeros(())
                for c in range(scores_v.shape[1]):
                    cross_entropy = cross_entropy - q[row, c] * log_p[c]
                per_sample.append(cross_entropy)
            terms.append(torch.stack(per_sample).mean())
        sublosses.append(torch.stack(terms).mean())
    return torch.stack(sublosses).mean()
