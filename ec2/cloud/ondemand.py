"""On-demand $/h for a type in a region, from the AWS Pricing API, cached for a day.

The Pricing API (pricing.get_products, served from us-east-1 for every region) answers with the
list price of each product as JSON strings; the Linux, shared-tenancy, no-preinstalled-software,
"Used" capacity product is the plain on-demand instance hour. Answers are cached for CACHE_TTL_S
under ~/.cache/spotrun. When the API cannot be reached (offline, no pricing:GetProducts
permission) the small us-east-1 table in ec2.cloud.pricing stands in, marked as an estimate;
a failed lookup is remembered for an hour so `fab status` does not wait on it each time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from common import aws
from common.atomic import atomic_write_text
from common.aws import AWS_FAILURES

CACHE_TTL_S = 24 * 3600
FAILURE_TTL_S = 3600
PRICING_REGION = "us-east-1"  # the Price List Query API endpoint that serves every region
TABLE = "table"
API = "pricing-api"


@dataclass(frozen=True)
class OnDemand:
    usd_per_hour: float | None
    source: str  # API, or TABLE (an estimate: us-east-1 list prices), or "" when unknown

    @property
    def estimate(self) -> bool:
        return self.source != API


def cache_file() -> Path:
    return Path.home() / ".cache" / "spotrun" / "on-demand-prices.json"


def product_filters(instance_type: str, region: str) -> list[dict]:
    """The plain Linux on-demand instance hour of ``instance_type`` in ``region``."""
    terms = {
        "instanceType": instance_type,
        "regionCode": region,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
        "licenseModel": "No License required",
    }
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in terms.items()]


def hourly_usd(price_list: Iterable[str]) -> float | None:
    """The on-demand USD per hour in a GetProducts PriceList (JSON strings); None if absent."""
    for item in price_list:
        product = json.loads(item) if isinstance(item, str) else item
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term.get("priceDimensions", {}).values():
                usd = dimension.get("pricePerUnit", {}).get("USD")
                if dimension.get("unit") == "Hrs" and usd is not None and float(usd) > 0:
                    return float(usd)
    return None


def _read_cache() -> dict:
    try:
        return json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _ask(pricing_client, instance_type: str, region: str) -> float | None:
    response = pricing_client.get_products(
        ServiceCode="AmazonEC2",
        Filters=product_filters(instance_type, region),
        FormatVersion="aws_v1",
        MaxResults=10,
    )
    return hourly_usd(response.get("PriceList", []))


def prices(
    instance_types: Iterable[str], region: str, profile: str | None = None, now: float | None = None
) -> dict[str, OnDemand]:
    """On-demand $/h per type: cached, else asked, else the table (an estimate)."""
    from ec2.cloud.pricing import ON_DEMAND_USD_PER_HOUR

    now = time.time() if now is None else now
    cache = _read_cache()
    entries = cache.setdefault(region, {})
    out: dict[str, OnDemand] = {}
    dirty = False
    for t in dict.fromkeys(instance_types):
        entry = entries.get(t)
        fresh = entry and now - entry["at"] < (CACHE_TTL_S if entry.get("usd") is not None else FAILURE_TTL_S)
        if not fresh:
            try:
                usd = _ask(aws.client("pricing", PRICING_REGION, profile, attempts=1), t, region)
            except AWS_FAILURES:
                usd = None
            entry = entries[t] = {"usd": usd, "at": now}
            dirty = True
        if entry["usd"] is not None:
            out[t] = OnDemand(entry["usd"], API)
        elif t in ON_DEMAND_USD_PER_HOUR:
            out[t] = OnDemand(ON_DEMAND_USD_PER_HOUR[t], TABLE)
        else:
            out[t] = OnDemand(None, "")
    if dirty:
        try:
            atomic_write_text(cache_file(), json.dumps(cache, indent=1, sort_keys=True))
        except OSError:
            pass  # a read-only home: the prices are still right, only not cached
    return out
