"""The IMDSv2 client against the loopback metadata server: token flow, 404/401, notices."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest

from ec2.remote.imds import Imds, ImdsUnreachable, imds_url, parse_time

# The stand-in answers in the test's own process, beside moto's threads: under a loaded CI box the
# 2 s production bound (what an instance's IMDS never nears) is the wrong thing to test here.
LOADED_S = 30


def test_token_flow_then_404_until_marked(imds):
    client = Imds(imds.url, timeout=LOADED_S)
    assert client.instance_action() is None
    assert client.rebalance() is None
    imds.mark_interruption(in_seconds=120)
    notice = client.instance_action()
    assert notice.action == "terminate"
    assert 110 < notice.seconds_left() <= 121
    imds.mark_rebalance()
    assert "noticeTime" in json.loads(client.rebalance())
    assert client.region() == "us-east-1"
    # One token served every GET.
    assert imds.served("/latest/api/token") == 1


def test_metadata_refuses_without_token_and_without_ttl(imds):
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(imds.url + "/latest/meta-data/spot/instance-action", timeout=5)
    assert e.value.code == 401
    req = urllib.request.Request(imds.url + "/latest/api/token", method="PUT")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 400


def test_expired_token_is_renewed_once(imds):
    client = Imds(imds.url, timeout=LOADED_S)
    client.instance_action()
    client._token = "stale"  # what an expired token looks like to the server
    assert client.instance_action() is None
    assert imds.served("/latest/meta-data/spot/instance-action", 401) == 1
    assert imds.served("/latest/api/token") == 2


def test_unreachable_metadata_is_reported_not_hung():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again on exit: nothing listens there
    with pytest.raises(ImdsUnreachable):
        Imds(f"http://127.0.0.1:{port}", timeout=1).instance_action()


def test_address_is_a_setting(monkeypatch):
    monkeypatch.delenv("SPOTRUN_IMDS_URL", raising=False)
    assert imds_url() == "http://169.254.169.254"
    monkeypatch.setenv("SPOTRUN_IMDS_URL", "http://127.0.0.1:9/")
    assert imds_url() == "http://127.0.0.1:9"
    assert parse_time("2025-01-01T00:00:00Z") == 1735689600
    assert parse_time("soon") is None
