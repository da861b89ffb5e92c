"""Prices as AWS documents them, for tests that need them to differ by type and zone (moto prices
every spot pair at a flat $0.00001 and has no Pricing API): DescribeSpotPriceHistory's XML
(https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeSpotPriceHistory.html) and the
Pricing API's GetProducts JSON, whose PriceList holds one JSON string per product
(https://docs.aws.amazon.com/aws-cost-management/latest/APIReference/API_pricing_GetProducts.html),
injected at the botocore level (tests/ec2/inject.py) on the clients the code under test uses."""

from __future__ import annotations

import json

from common import aws
from tests.peers.inject import answer, json_answer


def spot_history_xml(spot: dict[tuple[str, str], float]) -> bytes:
    items = "".join(
        f"<item><instanceType>{ty}</instanceType><productDescription>Linux/UNIX</productDescription>"
        f"<spotPrice>{price:.6f}</spotPrice><timestamp>2026-11-30T05:00:00.000Z</timestamp>"
        f"<availabilityZone>{zone}</availabilityZone></item>"
        for (ty, zone), price in spot.items()
    )
    return (
        '<DescribeSpotPriceHistoryResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
        f"<requestId>injected</requestId><spotPriceHistorySet>{items}</spotPriceHistorySet><nextToken/>"
        "</DescribeSpotPriceHistoryResponse>"
    ).encode()


def product(instance_type: str, usd: str, region: str = "us-east-1") -> str:
    sku = "SKU" + instance_type.replace(".", "").upper()
    return json.dumps(
        {
            "product": {
                "productFamily": "Compute Instance",
                "attributes": {
                    "instanceType": instance_type,
                    "regionCode": region,
                    "operatingSystem": "Linux",
                },
                "sku": sku,
            },
            "serviceCode": "AmazonEC2",
            "terms": {
                "OnDemand": {
                    f"{sku}.JRTCKXETXF": {
                        "priceDimensions": {
                            f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
                                "unit": "Hrs",
                                "pricePerUnit": {"USD": usd},
                                "description": f"${usd} per On Demand Linux {instance_type} Instance Hour",
                            }
                        },
                        "sku": sku,
                        "effectiveDate": "2026-11-01T00:00:00Z",
                    }
                }
            },
            "version": "20261101",
        }
    )


def inject(
    spot: dict[tuple[str, str], float], list_prices: dict[str, str], region: str = "us-east-1"
) -> None:
    """Answer DescribeSpotPriceHistory with ``spot`` and GetProducts with ``list_prices`` on the
    cached clients of common.aws (the ones production code asks for)."""

    def products(request):
        filters = {f["Field"]: f["Value"] for f in json.loads(request.body)["Filters"]}
        usd = list_prices.get(filters["instanceType"])
        return json_answer(
            {"FormatVersion": "aws_v1", "PriceList": [product(filters["instanceType"], usd)] if usd else []}
        )

    answer(
        aws.client("ec2", region, None), "DescribeSpotPriceHistory", lambda _r: (200, spot_history_xml(spot))
    )
    answer(aws.client("pricing", "us-east-1", None, attempts=1), "GetProducts", products)
