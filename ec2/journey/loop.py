"""`fab run` on one instance: the attempt loop (ec2/journey/engine.py) with the relaunch strategy
(ec2/journey/recovery.py): each attempt one instance; after an interruption the next is launched
where the run was not interrupted yet, and resumes from the newest checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from common.attempt import Attempt
from ec2.config import AwsConfig
from ec2.journey.engine import Engine, GaveUp, RunFailed, stdin_asker
from ec2.journey.stages import Plan
from ec2.remote.ssh import Machine

__all__ = ["GaveUp", "Journey", "RunFailed", "stdin_asker"]


class Journey(Engine):
    def __init__(
        self,
        cfg: AwsConfig,
        name: str,
        plan: Plan,
        *,
        out: Callable[[str], None] = print,
        outputs: Path | None = None,
        ask: Callable[[str], str] | None = None,
    ):
        super().__init__(cfg, name, plan, "relaunch", out=out, outputs=outputs, ask=ask)

    @property
    def exclude(self) -> set[tuple[str, str]]:
        """(type, zone) pairs interrupted so far: the next launch leaves them out."""
        return self.strategy.exclude

    def provision(self, attempt: Attempt) -> Machine:
        return self.strategy.provision(attempt)
