"""The budget keys (on_demand_after, max_cost_usd, deadline) are applied by the one-instance
attended loop only: a cluster or a detached run with one set is refused before any AWS call, with
one line saying how to go on, rather than run without the cap the user asked for."""

from __future__ import annotations

import pytest

from common.errors import ConfigError
from ec2.config import load_aws_config
from ec2.journey import detach
from ec2.journey.cluster_loop import ClusterJourney
from ec2.journey.stages import Plan

PLAN = Plan(command="", checkpoint_dir="s3://spot-ckpt/job/checkpoint", train_config="configs/demo.yaml")


def test_a_cluster_with_max_cost_usd_is_refused_before_launching(tmp_path):
    cfg = load_aws_config(None, ["max_cost_usd=5"])
    with pytest.raises(ConfigError) as e:
        ClusterJourney(cfg, "job", PLAN, 2, outputs=tmp_path)
    assert str(e.value) == (
        "max_cost_usd is applied to `fab run` on one instance so far, not to a cluster (--nodes); "
        "unset it (--set max_cost_usd=null) or run on one instance without --detach"
    )


def test_a_detached_run_with_a_deadline_and_on_demand_after_is_refused_before_launching():
    cfg = load_aws_config(None, ["deadline=2026-12-07T09:00:00Z", "on_demand_after=2"])
    # No AWS endpoint is set up here: the refusal comes before any call.
    with pytest.raises(
        ConfigError, match=r"^on_demand_after, deadline are applied to `fab run` on one instance"
    ):
        detach.submit(cfg, "job", PLAN)
