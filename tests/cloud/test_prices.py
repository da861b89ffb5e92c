"""`fab prices` on moto's EC2 (instance types, offerings, zones) with what moto cannot give injected
at the botocore level in AWS's documented wire format: the Pricing API's GetProducts (moto has no
Pricing service), GetSpotPlacementScores (not implemented in moto) and a spot price history that
varies by type and zone (moto prices every pair at a flat $0.00001)."""

from __future__ import annotations

import json
import re

from invoke import Context

from common import aws
from ec2.cloud import ondemand
from tasks import preflight as t
from tests.peers import prices
from tests.peers.inject import answer, json_answer

ZONES = ["us-east-1a", "us-east-1b"]
SPOT = {
    ("g4dn.xlarge", "us-east-1a"): 0.2104,
    ("g4dn.xlarge", "us-east-1b"): 0.1950,
    ("g5.xlarge", "us-east-1a"): 0.4121,
    ("g5.xlarge", "us-east-1b"): 0.5001,
    ("g6.xlarge", "us-east-1a"): 0.3320,
    ("g6.xlarge", "us-east-1b"): 0.3001,
}
LIST_PRICE = {"g4dn.xlarge": "0.5260000000", "g5.xlarge": "1.0060000000"}  # g6: Pricing has no answer


def _spot_history(request):
    return 200, prices.spot_history_xml(SPOT)


def _products(request):
    filters = {f["Field"]: f["Value"] for f in json.loads(request.body)["Filters"]}
    assert filters["regionCode"] == "us-east-1" and filters["operatingSystem"] == "Linux"
    assert filters["tenancy"] == "Shared" and filters["capacitystatus"] == "Used"
    usd = LIST_PRICE.get(filters["instanceType"])
    return json_answer(
        {
            "FormatVersion": "aws_v1",
            "PriceList": [prices.product(filters["instanceType"], usd)] if usd else [],
        }
    )


def _inject(ec2):
    zone_ids = {z["ZoneName"]: z["ZoneId"] for z in ec2.describe_availability_zones()["AvailabilityZones"]}
    scores = "".join(
        f"<item><region>us-east-1</region><availabilityZoneId>{zone_ids[z]}</availabilityZoneId>"
        f"<score>{s}</score></item>"
        for z, s in (("us-east-1a", 9), ("us-east-1b", 3))
    )
    answer(ec2, "DescribeSpotPriceHistory", _spot_history)
    answer(
        ec2,
        "GetSpotPlacementScores",
        lambda request: (
            200,
            (
                '<GetSpotPlacementScoresResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
                f"<requestId>injected</requestId><spotPlacementScoreSet>{scores}</spotPlacementScoreSet>"
                "</GetSpotPlacementScoresResponse>"
            ).encode(),
        ),
    )
    return answer(aws.client("pricing", "us-east-1", None, attempts=1), "GetProducts", _products)


def _prices(capsys, *sets, hours=10):
    t.prices(Context(), hours=hours, set_=["instance_types=[g5.xlarge,g4dn.xlarge,g6.xlarge]", *sets])
    return capsys.readouterr().out


def test_prices_lists_every_configured_type_by_spot_price(home, ec2_client, capsys):
    asked = _inject(aws.client("ec2", "us-east-1"))
    out = _prices(capsys, f"zones=[{','.join(ZONES)}]")
    lines = out.splitlines()
    assert lines[0] == "us-east-1, Linux, 10 h:"
    assert lines[1].split() == [
        "TYPE",
        "ZONE",
        "GPUS",
        "VCPUS",
        "SPOT",
        "$/H",
        "ON-DEMAND",
        "$/H",
        "SAVING",
        "SCORE",
        "10",
        "H",
        "SPOT",
    ]
    rows = [re.split(r"\s{2,}", line) for line in lines[2:8]]
    # One row per type x zone, cheapest spot first.
    assert [(r[0], r[1]) for r in rows] == sorted(SPOT, key=SPOT.get)
    by_key = {(r[0], r[1]): r for r in rows}
    assert by_key[("g5.xlarge", "us-east-1a")] == [
        "g5.xlarge",
        "us-east-1a",
        "1x A10G 22 GiB",
        "4",
        "$0.4121",
        "$1.0060",
        "59%",
        "9/10",
        "$4.1210",
    ]
    assert by_key[("g4dn.xlarge", "us-east-1b")][2:] == [
        "1x T4 16 GiB",
        "4",
        "$0.1950",
        "$0.5260",
        "63%",
        "3/10",
        "$1.9500",
    ]
    # Pricing has no g6.xlarge answer: the built-in table, marked as an estimate.
    assert by_key[("g6.xlarge", "us-east-1b")][5:7] == ["$0.8048*", "63%"]
    assert "note: * on-demand from the built-in us-east-1 table (Pricing API unavailable): an estimate" in out
    assert len(asked) == 3

    # Within a day the on-demand prices come from ~/.cache/spotrun, not from the API.
    cached = json.loads(ondemand.cache_file().read_text())["us-east-1"]
    assert cached["g5.xlarge"]["usd"] == 1.006 and cached["g6.xlarge"]["usd"] is None
    _prices(capsys, f"zones=[{','.join(ZONES)}]")
    assert len(asked) == 3


def test_without_pricing_or_scores_the_table_stands_in_and_says_so(home, ec2_client, capsys):
    # moto itself: no Pricing API, no placement scores, a flat spot price.
    out = _prices(capsys, "zones=[us-east-1a]", "instance_types=[g5.xlarge,x9.huge]", hours=1)
    assert "$1.0060*" in out and "note: * on-demand from the built-in us-east-1 table" in out
    assert "note: placement scores unavailable" in out
    assert "note: x9.huge is not an EC2 instance type; skipped" in out
    assert re.search(
        r"^g5\.xlarge\s+us-east-1a\s+1x A10G 22 GiB\s+4\s+\$0\.0000\s+\$1\.0060\*\s+100%\s+-\s+\$0\.0000$",
        out,
        re.M,
    )


def test_status_uses_the_same_on_demand_source(home, ec2_client, capsys):
    from datetime import UTC, datetime, timedelta

    from ec2 import status
    from ec2.cloud.instances import InstanceInfo

    _inject(aws.client("ec2", "us-east-1"))
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    demand = InstanceInfo(
        "i-2",
        "exp2",
        "running",
        "g5.xlarge",
        "us-east-1b",
        "on-demand",
        None,
        "10.0.0.9",
        now - timedelta(hours=1),
    )
    (row,) = status.build_rows([demand], "us-east-1", {}, {}, now)
    assert row.price_now == 1.006 and not row.estimate
