"""The shared base of the memory-bank methods (``instdisc``, ``pirl``).

A :class:`~mmcontrast.models.memory_bank.MemoryBank` holds one embedding per training image,
so the batches must say which images they hold: :class:`IndexedSamples` adds each sample's
row (``"index"``) and :class:`IndexedCollator` stacks them as ``batch["indices"]`` [B],
beside the views and labels of the vision data. The bank is sized from the training split
and knows each row's class, so kNN evaluation scores against it (:meth:`Method.knn_bank`)
instead of embedding the training split again.

NCE's normalising constant Z (``method_args.fix_z``): Wu et al. 2018 estimate it once, from
the first batch (``first_batch``), when the bank still holds random unit vectors. Once the
bank fills with the network's embeddings, which start out nearly parallel, that Z is orders
of magnitude too small: every negative's NCE posterior saturates, each query gets the same
gradient (away from the bank's mean), the embeddings drift together instead of spreading,
and the loss climbs. Fixing Z from the first batch after the bank is full (``filled_bank``,
one epoch) helps until the embeddings spread and that Z is too large. The default,
``never``, estimates Z from each batch (every process's scores), a self-normalised
estimate: the loss falls from the start, and on small Fashion-MNIST runs ``first_batch``
collapsed while ``never``, ``filled_bank`` and the full softmax learned alike. A fixed Z is a
buffer, so a resumed run uses the constant of the run it continues.

The bank's rows start as random unit vectors (``method_args.bank_init: random``, the papers'),
so through the first epoch every image's positive is noise and the encoder learns nothing
useful until each row has been written once. ``first_visit`` writes a row with its image's
embedding from the first batch that holds it, before that batch is scored
(:meth:`MemoryBank.fill_unwritten`): the first epoch's positives are then real. Short runs
gain most; on a few epochs of Fashion-MNIST it lifted both methods' kNN accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from mmcontrast.config import Config
from mmcontrast.losses.nce import NCELoss
from mmcontrast.methods.vision import VisionMethod
from mmcontrast.models.memory_bank import KnnBank, MemoryBank

# When NCE's constant Z is fixed: never (each batch's own estimate), Wu et al.'s first batch
# (a bank of random rows), or the first batch once every row holds an embedding (one epoch)
FIX_Z = ("never", "first_batch", "filled_bank")
# What a row holds before its image is first seen: a random unit vector (the papers), or,
# with first_visit, the image's own embedding from the batch that first holds it
BANK_INIT = ("random", "first_visit")


@dataclass
class BankArgs:
    """The ``method_args`` every memory-bank method takes (its own add to them)."""

    out_dim: int = 128  # the embedding the bank stores: its rows' size
    num_negatives: int = 4096  # K, drawn uniformly from the bank per image
    shared_negatives: bool = False  # one draw of K for the whole batch (a matrix product)
    temperature: float = 0.07
    bank_momentum: float = 0.5  # m: entry <- normalise(m * entry + (1 - m) * embedding)
    full_softmax: bool = False  # the exact softmax over every bank entry instead of NCE
    fix_z: str = "never"  # NCE's Z: each batch's; first_batch (Wu et al.), filled_bank
    bank_init: str = "random"  # rows before first seen: random (papers) or first_visit


class IndexedSamples(Dataset):
    """A training dataset whose samples also carry their row: ``{..., "index": i}``.

    Everything else (``set_epoch``, ``table``, ``skipped_at_load``) is the wrapped one's.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.dataset[index], "index": index}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "dataset":  # unpickling in a worker
            raise AttributeError(name)
        return getattr(self.dataset, name)


class IndexedCollator:
    """The wrapped collate, plus ``batch["indices"]``: the rows of the readable samples, in
    the order of the batch's views."""

    def __init__(self, collate: Callable[[list[Any]], dict[str, Any]]) -> None:
        self.collate = collate

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(samples)
        if "views" in batch:
            rows = [s["index"] for s in samples if "skip" not in s]
            batch["indices"] = torch.tensor(rows, dtype=torch.long)
        return batch


class MemoryBankMethod(VisionMethod):
    """A vision method with a memory bank and NCE terms, from ``method_args`` of a
    :class:`BankArgs` subclass; subclasses define ``forward`` and :meth:`knn_encoder`."""

    nce_terms: ClassVar[int] = 1  # loss terms, each with its own Z

    def __init__(self, cfg: Config) -> None:
        """The bank (sized by :meth:`train_data` or a loaded state), the loss and Z."""
        super().__init__(cfg)
        a: BankArgs = self.args
        if a.num_negatives < 1:
            raise ValueError(f"method_args.num_negatives must be >= 1, got {a.num_negatives}")
        if a.fix_z not in FIX_Z:
            raise ValueError(
                f"method_args.fix_z must be one of {', '.join(FIX_Z)}; got {a.fix_z!r}"
            )
        if a.bank_init not in BANK_INIT:
            raise ValueError(
                f"method_args.bank_init must be one of {', '.join(BANK_INIT)}; got {a.bank_init!r}"
            )
        self.fix_z, self.bank_init = a.fix_z, a.bank_init
        self.num_negatives, self.shared_negatives = a.num_negatives, a.shared_negatives
        self.bank = MemoryBank(0, a.out_dim, a.bank_momentum, seed=self.cfg.train.seed)
        estimator = "softmax" if a.full_softmax else "nce"
        self.loss_fn = cast(
            NCELoss, self.build_loss(temperature=a.temperature, estimator=estimator)
        )
        self.log_z: Tensor
        self.log_z_ready: Tensor
        self.register_buffer("log_z", torch.zeros(self.nce_terms))
        self.register_buffer("log_z_ready", torch.zeros(self.nce_terms, dtype=torch.bool))
        # every process applies the same updates: DDP need not broadcast the bank
        self._ddp_params_and_buffers_to_ignore = [f"bank.{b}" for b in MemoryBank.synced_buffers]
        self._class_labels: list[str] | None = None

    def train_data(self) -> tuple[Dataset, Callable[[list[Any]], dict[str, Any]]]:
        dataset, collate = super().train_data()
        if self.bank.size != len(dataset):  # type: ignore[arg-type]
            self.bank.resize(len(dataset))  # type: ignore[arg-type]
        table = dataset.table  # type: ignore[attr-defined]
        self.bank.labels.copy_(table.labels().to(self.bank.labels))
        self._class_labels = list(table.class_names)
        return IndexedSamples(dataset), IndexedCollator(collate)

    @staticmethod
    def rows(batch: dict[str, Any]) -> Tensor:
        if "indices" not in batch:
            raise KeyError(
                "the batch has no 'indices' (each sample's row in the memory bank): build "
                "the data with the method's train_data()"
            )
        return batch["indices"]

    def negatives(self, batch_size: int) -> Tensor | None:
        """``[B, K]`` bank rows drawn uniformly (``[K]`` shared by the batch with
        ``shared_negatives``), or None for the exact softmax."""
        if self.loss_fn.estimator == "softmax":
            return None
        if self.shared_negatives:
            return self.bank.sample(1, self.num_negatives, shared=True)[0]
        return self.bank.sample(batch_size, self.num_negatives)

    def fill_new_rows(self, rows: Tensor, embedding: Tensor) -> None:
        """With ``bank_init: first_visit``, rows not yet written take ``embedding`` [B, D]
        before the batch is scored (every process calls it)."""
        if self.bank_init == "first_visit":
            self.bank.fill_unwritten(rows, embedding)

    def nce(self, term: int, query: Tensor, rows: Tensor, negatives: Tensor | None) -> Tensor:
        """Loss term ``term`` of ``query`` [B, D] against the bank (rows [B] positives).

        NCE's Z is each batch's estimate (``fix_z: never``), or follows each batch until it
        is fixed: at the first batch (``first_batch``, Wu et al.) or at the first batch after
        every bank row holds an embedding (``filled_bank``).
        """
        bank = self.bank.features
        if negatives is None:  # the bank changes in place before backward: a copy
            return self.loss_fn(query, bank.clone(), rows)
        if self.fix_z == "never":
            return self.loss_fn(query, bank, rows, negatives)  # this batch's Z
        if not bool(self.log_z_ready[term]):
            if self.fix_z == "first_batch" or bool(self.bank.written.all()):
                self.log_z[term] = self.loss_fn.estimate_log_z(query, bank, rows, negatives)
                self.log_z_ready[term] = True
            else:
                return self.loss_fn(query, bank, rows, negatives)  # this batch's Z
        return self.loss_fn(query, bank, rows, negatives, self.log_z[term])

    def knn_encoder(self) -> nn.Module:
        """``pixel_values -> [B, D]``: the embedding the bank stores."""
        raise NotImplementedError

    def knn_bank(self) -> KnnBank | None:
        """The bank's rows written so far, with their classes (None before training data
        was built in this process: evaluation then embeds the training split)."""
        if self._class_labels is None:
            return None
        keep = self.bank.written & (self.bank.labels >= 0)
        if not bool(keep.any()):
            return None
        return KnnBank(
            self.bank.features[keep],
            self.bank.labels[keep],
            list(self._class_labels),
            self.knn_encoder(),
        )
