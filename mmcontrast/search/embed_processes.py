"""The processes embedding one collection together (``accelerate launch`` or ``torchrun``).

``mmcontrast embed`` started by a launcher splits the shards still to do between its
processes; each writes its own shards' files, and the first process alone writes the
manifest from the entries every process reports (:meth:`Processes.gather`). Without a
launcher this is one process, and every call is a no-op or returns its argument.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from mmcontrast.distributed import barrier, gather_objects


@dataclass(frozen=True)
class Processes:
    """This process's rank, the number of processes and the device a launcher gives it."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None

    @classmethod
    def start(cls) -> Processes:
        """The launcher's process group (started here if the launcher set one up), or one."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        from accelerate import PartialState

        # gloo where no GPU is visible (torchrun --nproc_per_node N on a CPU machine)
        state = PartialState(cpu=not torch.cuda.is_available())
        return cls(state.process_index, state.num_processes, state.device)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        barrier()

    def gather(self, item: Any) -> list[Any]:
        """Every process's ``item`` in rank order, ``None`` left out (a collective call)."""
        return [x for x in gather_objects(item) if x is not None]
