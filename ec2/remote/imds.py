"""A small IMDSv2 client (standard library only): it runs on the instance beside the training
command, with whatever Python the instance has.

IMDSv2 is a session protocol: `PUT /latest/api/token` with a TTL header returns a token, and every
GET carries it in `X-aws-ec2-metadata-token`. A 401 means the token expired: fetch a new one.
https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/configuring-instance-metadata-service.html

The address is a setting (`SPOTRUN_IMDS_URL`, default http://169.254.169.254) so tests point it at
a loopback server, with no branch in this code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

DEFAULT_URL = "http://169.254.169.254"
TOKEN_TTL_S = 21600
# The link-local service answers in milliseconds; a longer wait means there is none (not on EC2).
TIMEOUT_S = 2.0

INSTANCE_ACTION = "/latest/meta-data/spot/instance-action"
REBALANCE = "/latest/meta-data/events/recommendations/rebalance"
REGION = "/latest/meta-data/placement/region"
INSTANCE_ID = "/latest/meta-data/instance-id"
INSTANCE_TYPE = "/latest/meta-data/instance-type"
ZONE = "/latest/meta-data/placement/availability-zone"
LIFECYCLE = "/latest/meta-data/instance-life-cycle"
# The primary private IPv4 address (a detached cluster member tells the others where it is).
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-categories.html
LOCAL_IPV4 = "/latest/meta-data/local-ipv4"


class ImdsUnreachable(Exception):
    """No metadata service answered (a machine that is not an EC2 instance, or IMDS disabled)."""


def imds_url() -> str:
    return os.environ.get("SPOTRUN_IMDS_URL", DEFAULT_URL).rstrip("/")


@dataclass(frozen=True)
class Notice:
    """A spot interruption notice: `action` is terminate, stop or hibernate; `time` is when
    (ISO 8601, UTC) AWS takes the instance back."""

    action: str
    time: str
    raw: str

    def seconds_left(self, now: float | None = None) -> float | None:
        when = parse_time(self.time)
        return None if when is None else when - (now if now is not None else time.time())


def parse_time(text: str) -> float | None:
    """AWS writes `2025-01-01T12:00:00Z`; anything unparsable gives None (treated as 'soon')."""
    from datetime import datetime, timezone

    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except (TypeError, ValueError):
        return None


class Imds:
    """Token-holding client. `get` returns the body, or None for 404 (nothing to report)."""

    def __init__(self, base_url: str | None = None, timeout: float = TIMEOUT_S):
        self.base_url = (base_url or imds_url()).rstrip("/")
        self.timeout = timeout
        self._token: str | None = None
        self._token_expires = 0.0

    def _open(self, request: urllib.request.Request):
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError:
            raise
        except (urllib.error.URLError, OSError) as e:
            raise ImdsUnreachable(f"{self.base_url}: {getattr(e, 'reason', e)}") from None

    def token(self) -> str:
        if self._token is None or time.monotonic() > self._token_expires:
            req = urllib.request.Request(
                self.base_url + "/latest/api/token",
                method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)},
            )
            try:
                with self._open(req) as resp:
                    self._token = resp.read().decode().strip()
            except urllib.error.HTTPError as e:
                raise ImdsUnreachable(f"{self.base_url}: token request refused (HTTP {e.code})") from None
            # Renew well before AWS would expire it.
            self._token_expires = time.monotonic() + TOKEN_TTL_S - 60
        return self._token

    def get(self, path: str) -> str | None:
        for attempt in range(2):
            headers = {"X-aws-ec2-metadata-token": self.token()}
            req = urllib.request.Request(self.base_url + path, headers=headers)
            try:
                with self._open(req) as resp:
                    return resp.read().decode()
            except urllib.error.HTTPError as e:
                if e.code == 404:
                    return None
                if e.code == 401 and attempt == 0:
                    self._token = None  # expired or rotated: one fresh token, then give up
                    continue
                raise ImdsUnreachable(f"{self.base_url}{path}: HTTP {e.code}") from None
        return None

    def instance_action(self) -> Notice | None:
        body = self.get(INSTANCE_ACTION)
        if body is None:
            return None
        try:
            data = json.loads(body)
        except json.JSONDecodeError:
            data = {}
        return Notice(action=str(data.get("action", "terminate")), time=str(data.get("time", "")), raw=body)

    def rebalance(self) -> str | None:
        """The rebalance recommendation's body (JSON with `noticeTime`), or None."""
        return self.get(REBALANCE)

    def region(self) -> str | None:
        return self.get(REGION)

    def private_ip(self) -> str | None:
        return self.get(LOCAL_IPV4)

    def identity(self) -> Identity:
        """Who this instance is (a boot records it per attempt): id, type, zone, spot or on-demand."""
        return Identity(
            instance_id=self.get(INSTANCE_ID) or "",
            instance_type=self.get(INSTANCE_TYPE),
            zone=self.get(ZONE),
            market="spot" if self.get(LIFECYCLE) == "spot" else "on-demand",
            region=self.region(),
        )


@dataclass(frozen=True)
class Identity:
    instance_id: str
    instance_type: str | None
    zone: str | None
    market: str
    region: str | None


def identity_json(client: Imds | None = None) -> dict:
    """This machine's identity as JSON-ready data, or ``{"ec2": false, "why": ...}`` when no
    metadata service answers (a lab box, a laptop): what `fab bench` records as the machine."""
    try:
        who = (client or Imds()).identity()
    except ImdsUnreachable as e:
        return {"ec2": False, "why": str(e)}
    return {"ec2": True, **dataclasses.asdict(who)}


if __name__ == "__main__":  # `python -m ec2.remote.imds`: print the identity (fab bench reads it)
    print(json.dumps(identity_json()))
