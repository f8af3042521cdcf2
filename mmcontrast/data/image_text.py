"""Training samples of image-text pairs: decode, augment, pick a caption, tokenise in batches.

Every sample's randomness (augmentation, which caption) comes from a generator seeded by
(seed, epoch, index), so a resumed run sees exactly the samples the uninterrupted run saw,
whatever the number of workers. A row that cannot be used becomes a skipped sample naming
it (``skips.py``); the collate gathers them in ``batch["skipped"]``.

For the multi-positive losses (``unicl``, ``siglip_multi``) every pair also carries an integer
id (``batch["ids"]``): the row's value in ``data.id_column`` (an image id, a class label),
else the row itself; pairs with equal ids are positives of each other. With
``data.captions_per_image`` k > 1 a sample is a group of k pairs of one image (k of its
captions, drawn without replacement and repeated when it has fewer; each pair with its own
augmentation of the image), which the collate flattens: a batch of ``train.batch_size``
pairs holds ``train.batch_size / k`` images.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from mmcontrast.data.hard_negatives import HardNegatives
from mmcontrast.data.images import BadSample, load_image
from mmcontrast.data.pairs import PairTable
from mmcontrast.data.skips import SkippedRows, Skips, image_name, indexed_skip, skip_sample
from mmcontrast.data.workers import ignore_stop_signals

logger = logging.getLogger("mmcontrast")
_reported: set[str] = set()  # image_batches' warnings already logged by this process


class ImageTable(Protocol):
    """Anything with rows of images: ``PairTable``, ``LabelledImages``."""

    def __len__(self) -> int: ...

    def image(self, index: int) -> Any: ...


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A per-sample seed, stable across runs, workers and resumes."""
    return (seed * 1_000_003 + epoch) * 1_000_000_007 + index & 0x7FFF_FFFF_FFFF_FFFF


@contextmanager
def seeded(seed: int, epoch: int, index: int) -> Iterator[None]:
    """The global CPU generator seeded for one sample, restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        # the CPU generator only: torch.manual_seed also seeds every accelerator, slowly
        torch.random.default_generator.manual_seed(sample_seed(seed, epoch, index))
        yield


Negatives = Callable[[str], list[str]]  # a caption -> its hard negatives (NegCLIP)


def stable_id(value: Any) -> int:
    """An integer id for a value of ``data.id_column`` (or a row's name), the same in every
    process and run: an integer as it is, anything else a 63-bit digest of its text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    digest = hashlib.blake2b(repr(value).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


def pair_sample(
    image: Any,
    captions: list[str],
    transform: Callable[[Any], Tensor],
    name: str,
    key: str | None = None,
    pairs: int = 1,
    pair_id: int | None = None,
    negatives: Negatives | None = None,
) -> dict[str, Any]:
    """``{"pixel_values", "caption"}`` (one caption drawn), or :func:`skip_sample` naming
    the row ``name`` (identified by ``key``, default ``name``).

    With ``pair_id`` the sample also has ``"id"``; with ``negatives`` (caption -> its hard
    negatives) ``"negatives"``. With ``pairs`` k > 1 it is ``{"group": [k samples]}``: k
    captions drawn without replacement (cycled when the row has fewer), each with its own
    transform of the image.

    Draws from the global generator: call it inside :func:`seeded`.
    """
    if not captions:
        return skip_sample("empty caption", name, key)
    try:
        decoded = load_image(image)
    except BadSample as bad:
        return skip_sample(bad.reason, name, key)
    return caption_group(
        captions, pairs, lambda: {"pixel_values": transform(decoded)}, pair_id, negatives
    )


def caption_group(
    captions: list[str],
    pairs: int,
    item: Callable[[], dict[str, Any]],
    pair_id: int | None,
    negatives: Negatives | None = None,
) -> dict[str, Any]:
    """One pair (a caption drawn, ``item()`` its input: pixels or cached features), or a
    group of ``pairs``; with the pair's id and hard negatives where given. Draws from the
    global generator."""
    extra = {} if pair_id is None else {"id": pair_id}

    def pair(caption: str) -> dict[str, Any]:
        sample = {**item(), "caption": caption, **extra}
        if negatives is not None:
            sample["negatives"] = negatives(caption)
        return sample

    if pairs == 1:
        return pair(captions[int(torch.randint(len(captions), ()))])
    order = torch.randperm(len(captions)).tolist()
    return {"group": [pair(captions[order[i % len(order)]]) for i in range(pairs)]}


class SeededSamples(Dataset):
    """Base of the training datasets: a table, an epoch, and per-sample randomness.

    Subclasses draw every random number of sample ``index`` inside ``self.seeded(index)``,
    a generator seeded by (seed, epoch, index), so a resumed run sees exactly the samples
    the uninterrupted run saw, whatever the number of workers.
    """

    def __init__(self, table: Any, seed: int = 0) -> None:
        self.table = table
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def skipped_at_load(self) -> Mapping[str, int]:
        """Rows dropped when the table was loaded (e.g. empty captions, missing labels): a
        :class:`Skips` naming them where the table does."""
        return self.table.skipped

    def __len__(self) -> int:
        return len(self.table)

    def seeded(self, index: int) -> AbstractContextManager[None]:
        return seeded(self.seed, self.epoch, index)


class ImageTextDataset(SeededSamples):
    """Yields ``{"pixel_values", "caption"}``, or :func:`skip_sample` for a bad row.

    With ``vision_features`` (one row per table row, from a locked vision tower run once,
    see ``feature_cache.py``) it yields ``{"vision_features", "caption"}`` instead and never
    decodes an image; rows whose image was unreadable are listed in ``bad_rows``.
    ``with_ids`` adds each pair's ``"id"`` (the row's ``id_column`` value through
    :func:`stable_id`, else its index; a row whose id cell is empty is skipped as
    ``"missing id"``); ``captions_per_image`` k > 1 yields groups of k pairs
    (:func:`pair_sample`), and ``rows_per_sample`` tells the loader so.
    """

    def __init__(
        self,
        table: PairTable,
        transform: Callable[[Any], Tensor],
        seed: int = 0,
        vision_features: Tensor | None = None,
        bad_rows: dict[int, str] | None = None,
        captions_per_image: int = 1,
        with_ids: bool = False,
        hard_negatives: HardNegatives | None = None,
    ) -> None:
        super().__init__(table, seed)
        self.transform = transform
        self.vision_features = vision_features
        self.bad_rows = bad_rows or {}
        self.rows_per_sample = captions_per_image
        self.with_ids = with_ids
        self.hard_negatives = hard_negatives

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.table.dataset[index]
        image = self.table.row_image(row)
        name = image_name(image) or f"row {index}"
        pair_id = self._pair_id(row, index)
        if self.with_ids and pair_id is None:
            return indexed_skip("missing id", image, index)
        negatives = negatives_of(self.hard_negatives, row)
        with self.seeded(index):
            if self.vision_features is not None:
                if index in self.bad_rows:
                    return indexed_skip(self.bad_rows[index], image, index)
                features = self.vision_features[index]
                captions = self.table.row_captions(row)
                return caption_group(
                    captions,
                    self.rows_per_sample,
                    lambda: {"vision_features": features},
                    pair_id,
                    negatives,
                )
            return pair_sample(
                image,
                self.table.row_captions(row),
                self.transform,
                name,
                f"row {index}",
                pairs=self.rows_per_sample,
                pair_id=pair_id,
                negatives=negatives,
            )

    def _pair_id(self, row: dict[str, Any], index: int) -> int | None:
        if not self.with_ids:
            return None
        if self.table.id_column is None:
            return index
        value = self.table.row_id(row)
        return None if value is None else stable_id(value)


def negatives_of(hard: HardNegatives | None, row: dict[str, Any]) -> Negatives | None:
    """A row's caption -> hard negatives function (None without hard negatives)."""
    if hard is None:
        return None
    from_column = hard.row_captions(row)
    return lambda caption: hard.draw(caption, from_column)


def flatten_pairs(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pairs of ``samples`` in batch order: a group (``{"group": [...]}``, several
    captions of one image) gives each of its pairs."""
    return [pair for s in samples for pair in s.get("group", [s])]


class ImageTextCollator:
    """Stacks pixels, tokenises captions, stacks class labels where samples have them
    (``batch["labels"]``) and pair ids (``batch["ids"]``), flattens groups of pairs
    (``{"group": [...]}``) and gathers skipped samples (``batch["skipped"]``, a
    :class:`Skips`: reason -> count, naming the rows).

    Hard negatives (``"negatives"`` in the samples) become ``negative_<key>`` [N, M, L] for
    each tokenizer output and ``negative_mask`` [N, M], M the most any pair of the batch has
    (at least 1; padding is an empty caption, masked out)."""

    def __init__(self, tokenizer: Callable[[list[str]], dict[str, Tensor]]) -> None:
        self.tokenizer = tokenizer

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        samples = flatten_pairs(samples)
        good = [s for s in samples if "skip" not in s]
        batch: dict[str, Any] = {"skipped": Skips.of_samples(samples)}
        if good:
            key = "pixel_values" if "pixel_values" in good[0] else "vision_features"
            batch[key] = torch.stack([s[key] for s in good])
            batch.update(self.tokenizer([s["caption"] for s in good]))
            if "label" in good[0]:  # class prompts (FLYP): the loss masks same-class pairs
                batch["labels"] = torch.tensor([s["label"] for s in good], dtype=torch.long)
            if "id" in good[0]:  # multi-positive losses: pairs with equal ids are positives
                batch["ids"] = torch.tensor([s["id"] for s in good], dtype=torch.long)
            if "negatives" in good[0]:
                batch.update(self._negatives([s["negatives"] for s in good]))
        return batch

    def _negatives(self, negatives: list[list[str]]) -> dict[str, Tensor]:
        width = max(1, *(len(n) for n in negatives))
        flat = [n[i] if i < len(n) else "" for n in negatives for i in range(width)]
        rows = len(negatives)
        out = {
            f"negative_{k}": v.view(rows, width, *v.shape[1:])
            for k, v in self.tokenizer(flat).items()
        }
        mask = [[i < len(n) for i in range(width)] for n in negatives]
        out["negative_mask"] = torch.tensor(mask, dtype=torch.bool)
        return out


class ImageOnlyDataset(Dataset):
    """``(row, pixels)`` or ``(row, reason)`` for every row: evaluation and feature caching."""

    def __init__(self, table: ImageTable, transform: Callable[[Any], Tensor]) -> None:
        self.table, self.transform = table, transform

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> tuple[int, Tensor | str]:
        try:
            return index, self.transform(load_image(self.table.image(index)))
        except BadSample as bad:
            return index, bad.reason


def _as_list(samples: list[Any]) -> list[Any]:
    return samples


def _tensor_batches(
    images: Tensor, transform: Callable[[Any], Tensor], batch_size: int
) -> Iterator[tuple[list[int], Tensor | None, dict[int, str]]]:
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        batch = batch[:, None] if batch.ndim == 3 else batch  # [B, C, H, W]
        if batch.shape[1] == 1:  # greyscale to RGB, as load_image does
            batch = batch.expand(-1, 3, -1, -1)
        yield list(range(start, start + len(batch))), transform(batch), {}


def image_batches(
    table: ImageTable,
    transform: Callable[[Any], Tensor],
    batch_size: int = 128,
    num_workers: int = 0,
) -> Iterator[tuple[list[int], Tensor | None, dict[int, str]]]:
    """Every row of ``table`` once, in order, as ``(rows, pixels, unreadable)`` batches.

    ``pixels`` stacks the readable images of ``rows`` (``None`` when none was readable);
    ``unreadable`` maps the other rows of the batch to the reason. Evaluation and feature
    caching both read images this way; once every row is read, a warning names the first
    unreadable ones (once per process for the same rows). The loader has its own
    generator, so reading never draws from the global RNG. Tables holding their images as
    one uint8 tensor (``table.images``, e.g. Fashion-MNIST) are transformed a whole batch
    at a time, unless the transform says it takes one image at a time
    (``transform.per_image``).
    """
    images = getattr(table, "images", None)
    if isinstance(images, Tensor) and not getattr(transform, "per_image", False):
        yield from _tensor_batches(images, transform, batch_size)
        return
    loader = DataLoader(
        ImageOnlyDataset(table, transform),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_as_list,
        generator=torch.Generator(),
        worker_init_fn=ignore_stop_signals,  # an evaluation during training goes on
    )
    skipped = SkippedRows()
    for samples in loader:
        good = [(i, x) for i, x in samples if isinstance(x, Tensor)]
        unreadable = {i: x for i, x in samples if isinstance(x, str)}
        for i, reason in unreadable.items():
            skipped.add_row(reason, image_name(table.image(i)) or f"row {i}", f"row {i}")
        pixels = torch.stack([x for _, x in good]) if good else None
        yield [i for i, _ in good], pixels, unreadable
    if skipped:
        source = getattr(table, "source", "") or "the data"
        message = f"{source}: {skipped.message('', shown=10)}"
        if message not in _reported:
            _reported.add(message)
            logger.warning(message)
