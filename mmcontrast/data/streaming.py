"""Streamed image-text pairs: read as they come, never all in memory, resumed exactly.

``data.streaming: true`` reads the training split through :func:`pairs.open_stream`
(webdataset tar shards, a streamed ``datasets`` source, an imagefolder's metadata).
Every process and every DataLoader worker reads its own *stream*: with S = processes x
workers streams and at least S shards, stream s reads shards s, s + S, ...; with fewer
shards every stream reads them all and keeps example j of a shard when j % S == s. A
stream never ends: pass e over its shards visits them in an order drawn from (seed,
stream, e) and shuffles examples in blocks of ``data.shuffle_buffer``. Images are decoded
and augmented in the workers, after the shuffle, with per-sample seeds.

Exact resume. Each sample carries its stream's position after it: the pass, where its
block began (shard rank in the pass, example within that shard), the block's number and
how many of the block's examples have been handed out. :class:`StreamLoader` records the
position of the last batch training consumed from each stream and how many batches it
consumed in all; a checkpoint stores both per process. On resume each stream re-reads at
most the shard prefix and one block, and the DataLoader's round-robin over workers is
rotated so that batches arrive in the order the uninterrupted run saw them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import send_to_device
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmcontrast.data.hard_negatives import HardNegatives
from mmcontrast.data.image_text import negatives_of, pair_sample, sample_seed, seeded, stable_id
from mmcontrast.data.pairs import PairTable
from mmcontrast.data.skips import skip_sample
from mmcontrast.data.workers import ignore_stop_signals

logger = logging.getLogger("mmcontrast")

STATE_FILE = "data_state_rank{rank}.json"


@dataclass
class StreamPosition:
    """Where one stream stands: after ``offset`` examples of block ``block`` of pass ``epoch``.

    The block began at example ``example`` (raw count, within the shard) of the
    ``shard``-th shard of the pass's order.
    """

    epoch: int = 0
    shard: int = 0
    example: int = 0
    block: int = 0
    offset: int = 0


class StreamedPairs(IterableDataset):
    """Endless ``{"pixel_values", "caption"}`` samples from a stream, or a skipped sample
    naming a bad row (``skips.py``) by its image file, its key in a tar shard, or else a
    digest of its content, so that a row met again in a later pass counts once.

    ``captions_per_image``, ``with_ids`` and ``hard_negatives`` are :class:`~mmcontrast.data.image_text.
    ImageTextDataset`'s (without ``data.id_column`` a row's id comes from its name).

    Every sample also has ``"stream"`` (its stream's number) and ``"position"`` (the
    stream's :class:`StreamPosition` after it, as a dict); :class:`StreamCollator` turns
    them into the batch's ``"stream_position"``. ``rank``, ``world``, ``workers``,
    ``rotation`` and ``start`` are set by :class:`StreamLoader` before iteration.
    """

    def __init__(
        self,
        table: PairTable,
        transform: Callable[[Any], Tensor],
        seed: int = 0,
        shuffle_buffer: int = 1000,
        captions_per_image: int = 1,
        with_ids: bool = False,
        hard_negatives: HardNegatives | None = None,
    ) -> None:
        if shuffle_buffer < 1:
            raise ValueError(f"data.shuffle_buffer must be >= 1, got {shuffle_buffer}")
        self.table, self.transform = table, transform
        self.rows_per_sample, self.with_ids = captions_per_image, with_ids
        self.hard_negatives = hard_negatives
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.rank, self.world, self.workers, self.rotation = 0, 1, 1, 0
        self.start: dict[int, StreamPosition] = {}

    @property
    def num_shards(self) -> int:
        return int(self.table.dataset.num_shards)

    def streams(self) -> int:
        return self.world * self.workers

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        stream = self.rank * self.workers + (worker + self.rotation) % self.workers
        yield from self.samples(stream, self.start.get(stream, StreamPosition()))

    def samples(self, stream: int, start: StreamPosition) -> Iterator[dict[str, Any]]:
        """Stream ``stream``'s decoded samples from ``start`` on, pass after pass."""
        for position, row in self.rows(stream, start):
            index = (position.block * self.shuffle_buffer + position.offset - 1) * self.streams()
            sample = self._decode(row, position.epoch, index + stream)
            yield {**sample, "stream": stream, "position": asdict(position)}

    def rows(self, stream: int, start: StreamPosition) -> Iterator[tuple[StreamPosition, Any]]:
        """Undecoded rows of a stream with the position after each, endlessly."""
        epoch = start.epoch
        while True:
            first = start if epoch == start.epoch else StreamPosition(epoch)
            seen = False
            for item in self._pass(stream, first):
                seen = True
                yield item
            if not seen and first == StreamPosition(epoch):  # a whole pass, not a resumed end
                raise ValueError(
                    f"reader {stream} of {self.streams()} (processes x data.num_workers) got no "
                    f"examples from {self.table.source}: the split is empty or has fewer "
                    "examples than readers; use fewer data.num_workers or more data"
                )
            epoch += 1

    def _shards(self, stream: int, epoch: int) -> tuple[list[int], int]:
        """This pass's shards in order, and the stride (1, or S when streams share shards)."""
        total, streams = self.num_shards, self.streams()
        mine = list(range(stream, total, streams)) if total >= streams else list(range(total))
        generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, stream))
        order = [mine[i] for i in torch.randperm(len(mine), generator=generator).tolist()]
        return order, 1 if total >= streams else streams

    def _read(
        self, order: list[int], stride: int, stream: int, shard: int, example: int
    ) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """Rows from example ``example`` of the ``shard``-th shard in ``order`` on."""
        phase = stream % stride
        for rank in range(shard, len(order)):
            offset = order[rank] if stride > 1 else 0  # spreads each shard's remainder
            part = self.table.dataset.shard(num_shards=self.num_shards, index=order[rank])
            skip = example if rank == shard else 0
            if skip:
                part = part.skip(skip)
            j = skip
            for batch in part.iter(batch_size=64):
                for i in range(len(next(iter(batch.values())))):
                    if (j + offset) % stride == phase:
                        yield rank, j, {k: v[i] for k, v in batch.items()}
                    j += 1

    def _pass(self, stream: int, start: StreamPosition) -> Iterator[tuple[StreamPosition, Any]]:
        order, stride = self._shards(stream, start.epoch)
        block_number, skip = start.block, start.offset
        block: list[Any] = []
        block_start = (start.shard, start.example)
        for rank, j, row in self._read(order, stride, stream, start.shard, start.example):
            if not block:
                block_start = (rank, j)
            block.append(row)
            if len(block) == self.shuffle_buffer:
                yield from self._emit(start.epoch, block, block_start, block_number, stream, skip)
                block, block_number, skip = [], block_number + 1, 0
        if block:
            yield from self._emit(start.epoch, block, block_start, block_number, stream, skip)

    def _emit(
        self,
        epoch: int,
        block: list[Any],
        block_start: tuple[int, int],
        number: int,
        stream: int,
        skip: int,
    ) -> Iterator[tuple[StreamPosition, Any]]:
        generator = torch.Generator().manual_seed(
            sample_seed(self.seed, epoch, (stream << 32) + number)
        )
        order = torch.randperm(len(block), generator=generator).tolist()
        for offset in range(skip, len(block)):
            position = StreamPosition(epoch, block_start[0], block_start[1], number, offset + 1)
            yield position, block[order[offset]]

    def _decode(self, row: dict[str, Any], epoch: int, index: int) -> dict[str, Any]:
        problem = self.table.row_caption_problem(row)
        pair_id = self._pair_id(row) if self.with_ids else None
        if problem is None and self.with_ids and pair_id is None:
            problem = "missing id"
        if problem is None:
            with seeded(self.seed, epoch, index):
                sample = pair_sample(
                    self.table.row_image(row),
                    self.table.row_captions(row),
                    self.transform,
                    "",
                    pairs=self.rows_per_sample,
                    pair_id=pair_id,
                    negatives=negatives_of(self.hard_negatives, row),
                )
            if "skip" not in sample:
                return sample
            problem = sample["skip"]
        return skip_sample(problem, self._name(row))

    def _pair_id(self, row: dict[str, Any]) -> int | None:
        """The row's id for multi-positive losses: its ``id_column`` value, else its name
        (file, shard key or content digest: the same row has the same id in every pass)."""
        if self.table.id_column is None:
            return stable_id(self._name(row))
        value = self.table.row_id(row)
        return None if value is None else stable_id(value)

    def _name(self, row: dict[str, Any]) -> str:
        """A bad row's name: its file or shard key, else a digest of its content (the same
        in every pass, so the row counts once)."""
        name = self.table.row_name(row, "")
        if not name:
            name = f"row {hashlib.sha1(repr(sorted(row.items())).encode()).hexdigest()[:12]}"
        return name


class StreamCollator:
    """Wraps a collate function; the batch also gets ``"stream_position"`` of its last sample."""

    def __init__(self, collate: Callable[[list[dict[str, Any]]], dict[str, Any]]) -> None:
        self.collate = collate

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        last = samples[-1]
        batch = self.collate(
            [{k: v for k, v in s.items() if k not in ("stream", "position")} for s in samples]
        )
        batch["stream_position"] = (last["stream"], last["position"])
        return batch


class StreamLoader:
    """Batches of a :class:`StreamedPairs` on ``device``; its state resumes them exactly.

    Not prepared by accelerate: each process reads its own streams (no dispatching), and
    the stream never ends, so every process takes the same number of steps.
    """

    def __init__(
        self,
        dataset: StreamedPairs,
        batch_size: int,
        collate: Callable[[list[dict[str, Any]]], dict[str, Any]],
        num_workers: int = 0,
        rank: int = 0,
        world: int = 1,
        device: torch.device | str = "cpu",
        pin_memory: bool = False,
    ) -> None:
        self.dataset, self.batch_size = dataset, batch_size
        self.collate = StreamCollator(collate)
        self.num_workers, self.device, self.pin_memory = num_workers, device, pin_memory
        dataset.rank, dataset.world, dataset.workers = rank, world, max(num_workers, 1)
        self.consumed = 0  # batches handed to training by this process
        self.positions: dict[int, StreamPosition] = {}
        streams, shards = dataset.streams(), dataset.num_shards
        if shards < streams and rank == 0:
            logger.warning(
                "%s has %d shard(s) for %d readers (processes x data.num_workers): every reader "
                "reads all of them and keeps 1 example in %d; more shards read faster",
                dataset.table.source, shards, streams, streams,
            )  # fmt: skip
        elif shards % streams and rank == 0:
            logger.warning(
                "%s has %d shards for %d readers (processes x data.num_workers): some readers "
                "get one shard more, and the examples of the others come round more often; "
                "use a multiple of %d shards for even sampling",
                dataset.table.source, shards, streams, streams,
            )  # fmt: skip

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.dataset.start = dict(self.positions)
        self.dataset.rotation = self.consumed % self.dataset.workers
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            collate_fn=self.collate,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            generator=torch.Generator(),  # worker seeds (unused) drawn off the global RNG
            worker_init_fn=ignore_stop_signals,  # the loop stops the run, after a step
        )
        for batch in loader:
            stream, position = batch.pop("stream_position")
            self.positions[stream] = StreamPosition(**position)
            self.consumed += 1
            yield send_to_device(batch, self.device)

    def _layout(self) -> dict[str, int]:
        """What the positions mean: resuming with another layout would misread them."""
        data = self.dataset
        return {"shards": data.num_shards, "shuffle_buffer": data.shuffle_buffer, "seed": data.seed}

    def state_dict(self) -> dict[str, Any]:
        return {
            "consumed": self.consumed,
            "world": self.dataset.world,
            "workers": self.dataset.workers,
            **self._layout(),
            "positions": {str(k): asdict(v) for k, v in self.positions.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = (state["world"], state["workers"])
        if saved != (self.dataset.world, self.dataset.workers):
            raise ValueError(
                f"the checkpoint streamed its data with {saved[0]} process(es) x {saved[1]} "
                f"reader(s) each, this run has {self.dataset.world} x {self.dataset.workers}: "
                "resume with the same process count and data.num_workers"
            )
        changed = {k: (state.get(k), v) for k, v in self._layout().items() if state.get(k) != v}
        if changed:
            described = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
            raise ValueError(
                f"the streamed data changed since the checkpoint ({described}): its stream "
                "positions no longer apply; resume with the same shards, data.shuffle_buffer and "
                "train.seed"
            )
        self.consumed = int(state["consumed"])
        self.positions = {int(k): StreamPosition(**v) for k, v in state["positions"].items()}

    def save(self, folder: Path, rank: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / STATE_FILE.format(rank=rank)).write_text(json.dumps(self.state_dict()))

    def load(self, folder: Path, rank: int) -> None:
        path = folder / STATE_FILE.format(rank=rank)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: this checkpoint was not written by a streamed run "
                "(data.streaming) or by this many processes"
            )
        self.load_state_dict(json.loads(path.read_text()))
