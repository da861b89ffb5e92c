"""Which failed launch activities of an Auto Scaling group mean "no spot for us now" (so a group of
market: spot-then-on-demand may switch to on-demand), told apart from every other failure (a
profile IAM has not propagated yet, a bad template, a throttled call), which on-demand would not
cure and which must not switch the group for good.

A failed activity's StatusMessage carries the EC2 error code and message of the refused launch,
e.g. "Could not launch Spot Instances. InsufficientInstanceCapacity - There is no Spot capacity
available that matches your request. Launching EC2 instance failed." Every spot launch's message
begins "Could not launch Spot Instances", whatever the cause, so the word "spot" alone says nothing.

Sources:
- EC2 API error codes (InsufficientInstanceCapacity, InsufficientCapacity,
  MaxSpotInstanceCountExceeded, SpotMaxPriceTooLow):
  https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html
- Spot request status codes (capacity-not-available, capacity-oversubscribed, price-too-low):
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-request-status.html
- "There is no Spot capacity available that matches your request":
  https://repost.aws/knowledge-center/ec2-spot-instance-insufficient-capacity
- "Max spot instance count exceeded" (the spot vCPU quota):
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/using-spot-limits.html
- Auto Scaling's failed activities and their StatusMessage:
  https://docs.aws.amazon.com/autoscaling/ec2/userguide/ts-as-capacity.html
"""

from __future__ import annotations

import re

# (what it is, pattern): each a documented code or message of a spot launch refused for capacity,
# the account's spot quota, or the spot price.
SPOT_FAILURES = (
    ("InsufficientInstanceCapacity", re.compile(r"\bInsufficientInstanceCapacity\b")),
    ("InsufficientCapacity", re.compile(r"\bInsufficientCapacity\b")),
    ("no Spot capacity available", re.compile(r"no Spot capacity available", re.I)),
    ("capacity-not-available", re.compile(r"\bcapacity-not-available\b")),
    ("capacity-oversubscribed", re.compile(r"\bcapacity-oversubscribed\b")),
    ("MaxSpotInstanceCountExceeded", re.compile(r"\bMaxSpotInstanceCountExceeded\b")),
    ("Max spot instance count exceeded", re.compile(r"Max spot instance count exceeded", re.I)),
    ("SpotMaxPriceTooLow", re.compile(r"\bSpotMaxPriceTooLow\b")),
    ("price-too-low", re.compile(r"\bprice-too-low\b")),
)


def spot_failure(activity: dict) -> str | None:
    """What in a failed activity says spot itself failed (the first documented code or message
    found), or None for any other failure."""
    text = " ".join(str(activity.get(k) or "") for k in ("StatusMessage", "Description"))
    for what, pattern in SPOT_FAILURES:
        if pattern.search(text):
            return what
    return None
