"""`fab rehearse` beside a running run, as the end-to-end tests drive it: the rehearsal in a thread
(it follows the run to its resume while the test plays the instances), AWS FIS answered by the
stand-in (tests/peers/fis.py: the notice through the IMDS stand-in given, the instance taken back
once the test says the run is safe), and the report's lines checked as a user reads them."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from pathlib import Path

from common import aws
from ec2.config import load_aws_config
from ec2.journey import rehearse as rehearsing
from tests.peers.asg_instances import as_aws_shows
from tests.peers.fis import FisStandIn
from tests.peers.imds import wait_until

PHASES = (
    "FIS start → notice seen",
    "notice → checkpoint in S3",
    "notice → run exited",
    "exited → replacement launched",
    "notice → resumed",
)


class Rehearsal:
    """`fab rehearse --name NAME [--node K] [--dest DEST]` in a thread; ``lines`` is what it printed,
    the report last. The instance is taken back once ``safe`` is set (the test has looked at the
    noticed run), by ``take_back`` (default: moto's termination)."""

    def __init__(
        self,
        config: Path,
        name: str,
        imds,
        ec2,
        *,
        node: int | None = None,
        dest: Path | None = None,
        take_back: Callable[[list[str]], None] | None = None,
        refuse_starts: int = 0,
    ):
        """``refuse_starts``: StartExperiment refusals FIS gives first (a role IAM has not
        propagated yet), set before the rehearsal starts."""
        self.safe = threading.Event()
        # A detached run's group launches spot instances of its types; moto's show neither
        # (tests/peers/asg_instances.py).
        as_aws_shows(aws.client("ec2", "us-east-1", None), aws.client("autoscaling", "us-east-1", None))
        self.stand_in = FisStandIn(
            aws.client("fis", "us-east-1", None), imds, ec2, safe=self.safe.is_set, take_back=take_back
        )
        self.stand_in.refuse_starts = refuse_starts
        self.lines: list[str] = []
        self.error: BaseException | None = None
        cfg = load_aws_config(str(config))
        budgets = rehearsing.Budgets(poll=1.0)  # the record is read each poll: moto is shared

        def go():
            try:
                report = rehearsing.rehearse(cfg, name, node, dest, budgets=budgets, out=self.lines.append)
                self.lines.extend(report.lines())
            except BaseException as e:  # noqa: BLE001 - handed to the test thread to fail loudly
                self.error = e

        self.thread = threading.Thread(target=go, daemon=True)
        self.thread.start()

    def taken_back(self, timeout: float = 120) -> list[str]:
        """The instances FIS took back, once it has."""

        def taken() -> list[str]:
            assert self.error is None, ("fab rehearse failed", self.error, self.lines[-20:])
            return self.stand_in.terminated

        return wait_until(taken, timeout, "FIS to take the instance back")

    def report(self, timeout: float = 300) -> str:
        self.thread.join(timeout)
        out = "\n".join(self.lines)
        assert not self.thread.is_alive() and self.error is None, (self.error, out[-3000:])
        return out


def check_report(out: str, kind: str, instance_id: str, node: int | None = None) -> dict[str, float]:
    """The report as a user reads it: the kind and instance (and node), every phase timed, exit 75,
    no step lost, the cost the sum of its parts. Returns each phase's seconds."""
    article = "an" if kind[0] in "aeiou" else "a"
    on = f" node {node}" if node is not None else ""
    assert f"rehearsal of {article} {kind} run: {instance_id}{on} (" in out, out[-3000:]
    seconds = {}
    for phase in PHASES:
        line = next(x for x in out.splitlines() if x.strip().startswith(phase))
        timed = re.fullmatch(rf"\s+{phase}\s+(\d+\.\d) s", line)
        assert timed, line
        seconds[phase] = float(timed[1])
    rows = [x.split() for x in out.splitlines()]
    assert ["exit", "code", "on", "the", "notice", "75"] in rows, out[-2000:]
    assert ["steps", "lost", "0"] in rows, out[-2000:]
    cost = re.search(
        r"^  rehearsal cost +\$(\S+) = \$(\S+) \(\d+ instance-seconds x \$\S+/h\) \+ \$(\S+) \(", out, re.M
    )
    assert cost and float(cost[1]) == round(float(cost[2]) + float(cost[3]), 4), out[-2000:]
    assert float(cost[3]) in (0.1, 0.2, 0.3)  # FIS: $0.10 per action-minute, the action's few minutes
    return seconds
