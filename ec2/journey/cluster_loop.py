"""`fab run --nodes N`: the managed run on a cluster (ec2/cloud/cluster.py), carrying on when spot
takes one node back: the one attempt loop (ec2/journey/engine.py) with the replace-node strategy
(ec2/journey/recovery.py) over the cluster's members (ec2/journey/fleet.py).

An attempt is one start of torchrun on every node (c10d rendezvous at node 0). When a node is lost
(a notice on it, AWS took it back, or it stopped answering), the loop waits until every node's run
has ended (the notice stops every rank at the same step; rank 0 saves to S3; every node exits 75),
or stops the runs still waiting in their collectives after `unreachable_s`; then the lost node is
replaced in its zone and placement group (or, with no capacity there, the whole cluster launched
elsewhere), and torchrun restarts on all nodes from the S3 checkpoint.
"""

from __future__ import annotations

from common.attempt import Attempt
from common.checks import MULTI_NODE, require_s3_checkpoints
from ec2.errors import ConfigError
from ec2.journey.decide import ClusterVerdict
from ec2.journey.engine import Engine
from ec2.journey.fleet import Fleet
from ec2.journey.stages import Plan


def require_s3(plan: Plan) -> None:
    require_s3_checkpoints(plan.checkpoint_dir, MULTI_NODE)
    if plan.train_config is None:
        raise ConfigError("a multi-node run starts the trainer under torchrun; it needs --train-config")


class ClusterJourney(Engine):
    def __init__(self, cfg, name: str, plan: Plan, nodes: int, **options):
        """`options`: rdzv_port, out, outputs, ask (Engine's)."""
        require_s3(plan)  # before anything is launched
        super().__init__(cfg, name, plan, "replace-node", nodes=nodes, **options)

    @property
    def fleet(self) -> Fleet:
        return self.strategy.fleet

    def recover(self, attempt: Attempt, verdict: ClusterVerdict) -> list[int]:
        """N nodes again after `verdict.lost` (Fleet.restore); the nodes that are new, to set up."""
        return self.strategy.recover(attempt, verdict)
