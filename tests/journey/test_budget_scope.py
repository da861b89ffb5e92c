"""The budget keys (on_demand_after, max_cost_usd, deadline) are applied by the attended loop
only (one instance or a cluster: tests/journey/test_cluster_budget.py): a detached run with one
set is refused before any AWS call, with one line saying how to go on, rather than run without the
cap the user asked for."""

from __future__ import annotations

import pytest

from common.errors import ConfigError
from ec2.config import load_aws_config
from ec2.journey import detach
from ec2.journey.stages import Plan

PLAN = Plan(command="", checkpoint_dir="s3://spot-ckpt/job/checkpoint", train_config="configs/demo.yaml")


def test_a_detached_run_with_a_deadline_and_on_demand_after_is_refused_before_launching():
    cfg = load_aws_config(None, ["deadline=2026-12-07T09:00:00Z", "on_demand_after=2"])
    # No AWS endpoint is set up here: the refusal comes before any call.
    applied = r"^on_demand_after, deadline are applied to an attended `fab run` so far, not to a detached"
    with pytest.raises(ConfigError, match=applied):
        detach.submit(cfg, "job", PLAN)
