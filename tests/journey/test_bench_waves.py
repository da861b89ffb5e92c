"""`fab bench --types` launches together only what fits the account's spot vCPU quotas (one wave
per quota's worth), and one at a time where Service Quotas cannot say."""

from __future__ import annotations

from ec2.journey.bench import waves

VCPUS = {"g4dn.xlarge": 4, "g5.xlarge": 4, "g6.xlarge": 4, "g5.12xlarge": 48, "p3.2xlarge": 8}
G_SPOT, P_SPOT = "L-3819A6DF", "L-7212CCBC"  # All G and VT / All P4, P3 and P2 Spot Instance Requests


def test_types_of_one_quota_share_a_wave_as_far_as_its_vcpus_go():
    types = ["g4dn.xlarge", "g5.xlarge", "g6.xlarge", "p3.2xlarge"]
    assert waves(types, VCPUS, {G_SPOT: 8.0, P_SPOT: 8.0}) == [
        ["g4dn.xlarge", "g5.xlarge", "p3.2xlarge"],
        ["g6.xlarge"],
    ]


def test_an_unknown_quota_means_one_at_a_time_and_a_too_large_type_stands_alone():
    assert waves(["g4dn.xlarge", "g5.xlarge"], VCPUS, {G_SPOT: None}) == [["g4dn.xlarge"], ["g5.xlarge"]]
    assert waves(["g5.12xlarge", "g5.xlarge"], VCPUS, {G_SPOT: 8.0}) == [["g5.12xlarge"], ["g5.xlarge"]]
