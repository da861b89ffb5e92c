"""common.aws makes every boto3 session over one botocore data loader: a `fab` command or the
trainer that asks several regions or profiles (or the tests, after reset_clients) parses EC2's
model and endpoints.json once, not once per session (0.27 s of CPU each on the 2-core box)."""

from __future__ import annotations

import pytest

from common import aws
from common.errors import ConfigError


def test_sessions_share_one_loader_and_its_search_path_stays_put():
    first = aws.new_session("us-east-1")._session.get_component("data_loader")
    paths = list(first.search_paths)
    for region in ("us-west-2", "eu-west-1", "us-east-1"):
        made = aws.new_session(region)
        assert made._session.get_component("data_loader") is first
        made.client("ec2")  # models come from the shared cache; clients still work per region
    assert first.search_paths == paths  # boto3 appends its folder per session: not duplicated


def test_a_missing_profile_is_still_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    aws.reset_clients()
    try:
        with pytest.raises(ConfigError, match="AWS profile 'nope' not found"):
            aws.session("us-east-1", "nope")
    finally:
        aws.reset_clients()
