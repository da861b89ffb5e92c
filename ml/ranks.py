"""Which process of a run this is, from the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK).

Apart from ml/distributed.py (the process group) because it needs no torch: the trainer's input
checks (ml/train.py) ask "am I rank 0?" before torch is imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    return Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
