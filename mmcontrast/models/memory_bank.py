"""A memory bank: one L2-normalised feature per training image, updated with momentum.

Instance discrimination (Wu et al. 2018) and PIRL (Misra & van der Maaten 2020) compare
each image's embedding with the *stored* embeddings of other images, so negatives cost no
forward pass. Row ``i`` is image ``i``'s entry ``m_i``; after each batch the rows of its
images move towards their new embeddings ``f_i``, an exponential moving average with
``m = 0.5`` (PIRL, section 3.2; Wu et al.'s released code, lemniscate.pytorch, where the
paper writes ``m_i <- f_i``)::

    m_i <- normalise(m * m_i + (1 - m) * normalise(f_i))

The bank starts as random unit vectors (Gaussian rows, normalised; seeded) and negatives
are drawn uniformly from all N rows. :meth:`MemoryBank.fill_unwritten` instead sets rows
never written to given features as they are (a row's first visit).

Memory: ``N x D x 4`` bytes (float32) on every process, since each keeps the whole bank;
``D = 128`` gives 512 MB per million images (ImageNet-1k's 1,281,167: 656 MB), plus 9
bytes per image (the ``written`` flag and the ``labels`` kept for kNN evaluation).

Several processes: :meth:`MemoryBank.update` all-gathers every process's (index, feature)
pairs, in rank order, and every process applies the same updates, so the banks stay equal
to each other and to the bank of one process that saw the whole batch. An index met twice
in one update (a padded last batch) takes its last occurrence. The banks stay equal without
DDP's buffer broadcast: :attr:`MemoryBank.synced_buffers` names the buffers a method hands to
``DistributedDataParallel`` to ignore (a 656 MB broadcast before every forward otherwise).

Checkpoints hold the bank (``features``, ``written``, ``labels``, ``draws``), so ``--resume``
is exact: the negatives of draw ``t`` come from a generator seeded by (seed, t, rank), not
from the global random state. A bank built at size 0 (before the training split is known, e.g. to
evaluate a run) takes the size of the state it loads.

References:
    Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric Instance
    Discrimination", https://arxiv.org/abs/1805.01978 (section 3.1, the memory bank).
    Misra & van der Maaten 2020, "Self-Supervised Learning of Pretext-Invariant
    Representations", https://arxiv.org/abs/1912.01991 (section 3.2, memory bank).

Example:
    >>> bank = MemoryBank(size=10, dim=4, momentum=0.5, seed=0)
    >>> bank.update(torch.tensor([3]), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    >>> bank.sample(batch=2, count=5).shape
    torch.Size([2, 5])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmcontrast import distributed


def counter_seed(seed: int, counter: int, rank: int = 0) -> int:
    """A 63-bit seed for the ``counter``-th draw of process ``rank``: stable across runs."""
    return ((seed * 1_000_003 + counter) * 1_000_000_007 + rank) & 0x7FFF_FFFF_FFFF_FFFF


def counter_generator(seed: int, counter: int, rank: int = 0) -> torch.Generator:
    """A CPU generator seeded by :func:`counter_seed` (the same draws on any device)."""
    return torch.Generator().manual_seed(counter_seed(seed, counter, rank))


def last_occurrence(indices: Tensor) -> Tensor:
    """Positions of the last occurrence of each distinct value of ``indices`` [B]."""
    unique, inverse = torch.unique(indices, return_inverse=True)
    positions = torch.arange(indices.shape[0], device=indices.device)
    last = torch.full((unique.shape[0],), -1, dtype=torch.long, device=indices.device)
    return last.scatter_reduce(0, inverse, positions, reduce="amax")


class MemoryBank(nn.Module):
    """N unit feature rows, updated with momentum, with seeded uniform negatives.

    Args:
        size: N, the training images (0: sized later by :meth:`resize` or a loaded state).
        dim: D, the feature size.
        momentum: ``m`` in [0, 1): the weight of the old entry (0: replace it).
        seed: Seeds the initial rows and the negatives' draws.

    Shapes:
        features (buffer): [N, D] float32, unit rows. written (buffer): [N] bool, rows
        updated at least once. labels (buffer): [N] long, each row's class for kNN
        evaluation (-1: unknown). update: indices [B] long, features [B, D].
        sample: -> [batch, count] long in [0, N).

    Raises:
        ValueError: ``size < 0``, ``dim < 1`` or ``momentum`` outside [0, 1).
    """

    # equal on every process by construction: DDP need not broadcast them
    synced_buffers = ("features", "written", "labels", "draws")

    def __init__(self, size: int, dim: int, momentum: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        if size < 0 or dim < 1:
            raise ValueError(f"a memory bank needs size >= 0 and dim >= 1, got {size}, {dim}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"memory bank momentum must be in [0, 1), got {momentum}")
        self.dim, self.momentum, self.seed = dim, momentum, seed
        self.features: Tensor
        self.written: Tensor
        self.labels: Tensor  # class of each row, for kNN evaluation (-1: unknown)
        self.draws: Tensor  # negatives drawn so far: the next draw's generator
        self.register_buffer("features", self._random_rows(size, torch.device("cpu")))
        self.register_buffer("written", torch.zeros(size, dtype=torch.bool))
        self.register_buffer("labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.features.shape[0]

    def _random_rows(self, size: int, device: torch.device) -> Tensor:
        g = torch.Generator().manual_seed(self.seed)
        return F.normalize(torch.randn(size, self.dim, generator=g), dim=1).to(device)

    def resize(self, size: int) -> None:
        """Start over with ``size`` random unit rows (nothing written, no draws)."""
        if size < 1:
            raise ValueError(f"a memory bank needs at least one row, got size {size}")
        device = self.features.device
        self.features = self._random_rows(size, device)
        self.written = torch.zeros(size, dtype=torch.bool, device=device)
        self.labels = torch.full((size,), -1, dtype=torch.long, device=device)
        self.draws.zero_()

    @torch.no_grad()
    def update(self, indices: Tensor, features: Tensor) -> None:
        """Move rows ``indices`` towards ``features`` (normalised), on every process alike.

        Every process must call it (it all-gathers); ``features`` carry no gradient here.
        """
        indices, features = self._gathered(indices, features)
        features = F.normalize(features, dim=1)
        mixed = self.momentum * self.features[indices] + (1 - self.momentum) * features
        self.features[indices] = F.normalize(mixed, dim=1)
        self.written[indices] = True

    @torch.no_grad()
    def fill_unwritten(self, indices: Tensor, features: Tensor) -> None:
        """Rows ``indices`` never written take ``features`` (normalised) as they are; rows
        already written stay. Called before a batch is scored, a row's first positive is
        then the image's own current embedding rather than a random vector. Every process
        must call it (it all-gathers)."""
        indices, features = self._gathered(indices, features)
        new = ~self.written[indices]
        self.features[indices[new]] = F.normalize(features[new], dim=1)
        self.written[indices[new]] = True

    def _gathered(self, indices: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
        """Every process's (index, feature) pairs, in rank order, checked, each index once
        (its last occurrence)."""
        if indices.shape[0] != features.shape[0] or features.shape[-1] != self.dim:
            raise ValueError(
                f"a bank update needs indices [B] and features [B, {self.dim}], got "
                f"{tuple(indices.shape)} and {tuple(features.shape)}"
            )
        indices = distributed.gather(indices.to(self.features.device, torch.long))
        features = distributed.gather(features.detach().to(self.features.dtype))
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.size):
            raise ValueError(
                f"memory bank of {self.size} rows got an index outside [0, {self.size}): "
                "the training split is not the one the bank was sized for"
            )
        keep = last_occurrence(indices)
        return indices[keep], features[keep]

    @torch.no_grad()
    def sample(self, batch: int, count: int, shared: bool = False) -> Tensor:
        """``[batch, count]`` row indices drawn uniformly (with replacement), on the bank's
        device; each call advances ``draws``. Each process draws its own, unless ``shared``:
        then every process draws the same (negatives shared by the whole batch, which then
        equal those of one process with the whole batch)."""
        if self.size == 0:
            raise ValueError("the memory bank is empty: size it with resize() first")
        rank = 0 if shared else distributed.rank()
        g = counter_generator(self.seed, int(self.draws), rank)
        self.draws.add_(1)
        return torch.randint(self.size, (batch, count), generator=g).to(self.features.device)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        """An empty bank takes the stored size; a sized one must match it."""
        stored = state_dict.get(prefix + "features")
        if isinstance(stored, Tensor) and stored.shape[0] != self.size:
            if self.size == 0 and stored.ndim == 2 and stored.shape[1] == self.dim:
                device = self.features.device
                self.features = torch.empty(stored.shape, dtype=stored.dtype, device=device)
                self.written = torch.zeros(stored.shape[0], dtype=torch.bool, device=device)
                self.labels = torch.full((stored.shape[0],), -1, dtype=torch.long, device=device)
            else:
                error_msgs.append(
                    f"{prefix}features: the checkpoint's memory bank holds "
                    f"{tuple(stored.shape)} but this run's training split gives "
                    f"{tuple(self.features.shape)}: resume on the same data (data.path, "
                    "data.train_split, data.max_train_samples)"
                )
                return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


@dataclass(frozen=True)
class KnnBank:
    """Labelled training features a method kept while it trained (its memory bank), for
    kNN evaluation without embedding the training split again (``Method.knn_bank``).

    Attributes:
        features: ``[M, D]`` unit rows, one per training image seen so far (M <= N).
        labels: ``[M]`` long, each row's class: an index into ``class_labels``.
        class_labels: The training split's class values in index order (its
            ``LabelledImages.class_names``), to load the queried split with the same classes.
        encoder: ``pixel_values [B, C, H, W] -> [B, D]``: embeds queries into the bank's
            space (the head the bank stores, on the backbone), with the backbone's
            preprocessing.
    """

    features: Tensor
    labels: Tensor
    class_labels: list[str]
    encoder: nn.Module
