"""`fab run` on one instance: the attempt loop (ec2/journey/engine.py) with the relaunch strategy
(ec2/journey/recovery.py): each attempt one instance; after an interruption the next is launched
where the run was not interrupted yet, and resumes from the newest checkpoint."""

from __future__ import annotations

import sys
from collections.abc import Callable

from common.attempt import Attempt
from ec2.journey.engine import Engine, GaveUp, RunFailed
from ec2.journey.stages import Plan
from ec2.remote.ssh import Machine

__all__ = ["GaveUp", "Journey", "RunFailed", "stdin_asker"]


class Journey(Engine):
    def __init__(self, cfg, name: str, plan: Plan, **options):
        """`options`: out, outputs, ask (Engine's)."""
        super().__init__(cfg, name, plan, "relaunch", **options)

    @property
    def exclude(self) -> set[tuple[str, str]]:
        """(type, zone) pairs interrupted so far: the next launch leaves them out."""
        return self.strategy.exclude

    def provision(self, attempt: Attempt) -> Machine:
        return self.strategy.provision(attempt)


def stdin_asker() -> Callable[[str], str] | None:
    """A prompt when a person is at the terminal; None (leave the instances) otherwise."""
    if not sys.stdin.isatty():
        return None

    def ask(question: str) -> str:
        try:
            return input(question)
        except (EOFError, KeyboardInterrupt):
            return ""

    return ask
