"""The budget keys (on_demand_after, max_cost_usd, deadline) are applied to attended runs (one
instance or a cluster: tests/journey/test_cluster_budget.py) and to a detached run of one instance
(ec2.remote.spend): a detached cluster with one set is refused before any AWS call, with one line
saying how to go on, rather than run without the cap the user asked for; a detached deadline is
checked at submit (the boot cannot ask the laptop)."""

from __future__ import annotations

import pytest

from common.errors import ConfigError
from ec2.config import load_aws_config
from ec2.journey import detach, detach_nodes
from ec2.journey.stages import Plan

PLAN = Plan(command="", checkpoint_dir="s3://spot-ckpt/job/checkpoint", train_config="configs/demo.yaml")


def test_a_detached_cluster_with_a_deadline_and_on_demand_after_is_refused_before_launching():
    cfg = load_aws_config(None, ["deadline=2026-12-07T09:00:00Z", "on_demand_after=2"])
    # No AWS endpoint is set up here: the refusal comes before any call.
    with pytest.raises(ConfigError) as e:
        detach_nodes.submit(cfg, "job", PLAN, 2, rdzv_port=29400)
    assert str(e.value) == (
        "on_demand_after, deadline are kept for a detached run on one instance, not yet for a detached "
        "cluster (--detach --nodes); unset them (--set on_demand_after=null) or run on one instance"
    )


def test_a_detached_deadline_needs_the_train_config_and_a_time_to_come():
    """The boot projects the finish from the config's num_training_batches: without --train-config
    there is nothing to project, and a deadline already past would only switch to on-demand."""
    no_config = Plan(command="python train.py", checkpoint_dir="s3://spot-ckpt/job/checkpoint")
    with pytest.raises(ConfigError, match=r"^deadline needs the run.s steps to project its finish"):
        detach.submit(load_aws_config(None, ["deadline=2099-12-07T09:00:00Z"]), "job", no_config)
    with pytest.raises(ConfigError, match=r"^deadline 2020-12-07T09:00:00\+00:00 has passed"):
        detach.submit(load_aws_config(None, ["deadline=2020-12-07T09:00:00Z"]), "job", PLAN)
