"""A detached run's instance gives up: its Auto Scaling group stops relaunching, and the cause is
left where `fab watch` and `fab status` show it.

    python3 giveup.py --group spotrun-NAME --region REGION CAUSE...

Used when the boot fails before the run's record is read (the user data's bundle download, the
boot's boto3 install, a corrupt bundle, S3 refused, the record unreadable): `max_recoveries` and
the deadline live in that record, so without this the group would launch another instance for
ever. It sets the group's desired capacity to 0 (SetDesiredCapacity) and writes the cause into the
group's tag GIVEUP_TAG (CreateOrUpdateTags). The group's tags and not S3: S3 refusing is one of the
failures, while the instance role's two Auto Scaling grants on its own group do not depend on it,
and `fab watch` reads the group anyway.

Standard library only, on purpose: the user data writes this file out and runs it with the
system's python3 before anything is installed, so it works with no boto3 and no `aws` binary (the
failures it reports include those). It signs the two Query API calls with Signature Version 4
itself, with the instance role's credentials from the metadata service (or the standard AWS_*
variables), at the standard endpoint (or AWS_ENDPOINT_URL_AUTO_SCALING / AWS_ENDPOINT_URL, as the
SDKs read them). ec2.remote.boot imports it for the failures it meets itself.
- SetDesiredCapacity: https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_SetDesiredCapacity.html
- CreateOrUpdateTags: https://docs.aws.amazon.com/autoscaling/ec2/APIReference/API_CreateOrUpdateTags.html
- Signature Version 4: https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html
- Role credentials from IMDSv2:
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instance-metadata-security-credentials.html
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone

GIVEUP_TAG = "spotrun:boot-failure"
# Auto Scaling tag values stop at 256 characters (API_Tag.html).
TAG_VALUE_MAX = 256
API_VERSION = "2011-01-01"
TIMEOUT_S = 10.0


class CallFailed(Exception):
    """An Auto Scaling call that did not succeed: the AWS error code and message, or why."""


def _imds_url() -> str:
    return os.environ.get("SPOTRUN_IMDS_URL", "http://169.254.169.254").rstrip("/")


def _imds_get(path: str) -> str:
    base = _imds_url()
    put = urllib.request.Request(
        base + "/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"}
    )
    with urllib.request.urlopen(put, timeout=2) as r:
        token = r.read().decode()
    get = urllib.request.Request(base + path, headers={"X-aws-ec2-metadata-token": token})
    with urllib.request.urlopen(get, timeout=2) as r:
        return r.read().decode()


def instance_id() -> str:
    try:
        return _imds_get("/latest/meta-data/instance-id").strip()
    except (OSError, urllib.error.URLError):
        return "this instance"


def credentials() -> tuple[str, str, str | None]:
    """(access key, secret key, session token): the standard variables, else the instance role."""
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        return (
            os.environ["AWS_ACCESS_KEY_ID"],
            os.environ["AWS_SECRET_ACCESS_KEY"],
            os.environ.get("AWS_SESSION_TOKEN"),
        )
    try:
        base = "/latest/meta-data/iam/security-credentials/"
        role = _imds_get(base).split()[0]
        got = json.loads(_imds_get(base + role))
    except (OSError, urllib.error.URLError, IndexError, ValueError) as e:
        raise CallFailed(f"no instance role credentials from the metadata service ({e})") from None
    return got["AccessKeyId"], got["SecretAccessKey"], got.get("Token")


def endpoint(region: str) -> str:
    configured = os.environ.get("AWS_ENDPOINT_URL_AUTO_SCALING") or os.environ.get("AWS_ENDPOINT_URL")
    if configured:
        return configured.rstrip("/")
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://autoscaling.{region}.{suffix}"


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signed_headers(url: str, body: bytes, region: str, creds, now: datetime) -> dict[str, str]:
    """The headers of a SigV4-signed form POST to Auto Scaling (a pure function: tests compare it
    with botocore's signer)."""
    access, secret, token = creds
    parts = urllib.parse.urlsplit(url)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    headers = {
        "content-type": "application/x-www-form-urlencoded; charset=utf-8",
        "host": parts.netloc,
        "x-amz-date": amz_date,
    }
    if token:
        headers["x-amz-security-token"] = token
    names = sorted(headers)
    canonical = "\n".join(
        [
            "POST",
            parts.path or "/",
            "",
            "".join(f"{n}:{headers[n].strip()}\n" for n in names),
            ";".join(names),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{day}/{region}/autoscaling/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + secret).encode(), day), region), "autoscaling"), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={';'.join(names)}, "
        f"Signature={signature}"
    )
    return headers


def call(region: str, action: str, params: dict[str, str]) -> None:
    """One Auto Scaling Query API call; CallFailed with AWS's code and message when refused."""
    url = endpoint(region) + "/"
    body = urllib.parse.urlencode({"Action": action, "Version": API_VERSION, **params}).encode()
    headers = signed_headers(url, body, region, credentials(), datetime.now(timezone.utc))
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as r:
            r.read()
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        code = re.search(r"<Code>([^<]*)</Code>", text)
        message = re.search(r"<Message>([^<]*)</Message>", text)
        said = message.group(1) if message else " ".join(text.split())[:200]
        why = f"{code.group(1) if code else e.code}: {said}"
        raise CallFailed(f"{action} refused: {why}") from None
    except (OSError, urllib.error.URLError) as e:
        raise CallFailed(f"{action} unreachable: {e}") from None


def tag_value(cause: str, who: str, now: datetime) -> str:
    one_line = " | ".join(line.strip() for line in cause.splitlines() if line.strip())
    return f"{now.strftime('%Y-%m-%dT%H:%M:%SZ')} {who}: {one_line}"[:TAG_VALUE_MAX]


def give_up(group: str, region: str, cause: str) -> list[str]:
    """Desired capacity 0, then the cause on the group's tag; what failed ([] when both held)."""
    failed = []
    try:
        call(
            region,
            "SetDesiredCapacity",
            {"AutoScalingGroupName": group, "DesiredCapacity": "0", "HonorCooldown": "false"},
        )
    except CallFailed as e:
        failed.append(str(e))
    value = tag_value(cause, instance_id(), datetime.now(timezone.utc))
    try:
        call(
            region,
            "CreateOrUpdateTags",
            {
                "Tags.member.1.ResourceId": group,
                "Tags.member.1.ResourceType": "auto-scaling-group",
                "Tags.member.1.Key": GIVEUP_TAG,
                "Tags.member.1.Value": value,
                "Tags.member.1.PropagateAtLaunch": "false",
            },
        )
    except CallFailed as e:
        failed.append(str(e))
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spotrun-giveup", description="stop a detached run's group")
    parser.add_argument("--group", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("cause", nargs="+")
    args = parser.parse_args(argv)
    cause = " ".join(args.cause)
    failed = give_up(args.group, args.region, cause)
    # cloud-init copies this to the console log (`aws ec2 get-console-output`).
    print(f"spotrun: boot failed: {cause}", file=sys.stderr)
    for line in failed:
        print(f"spotrun: could not stop {args.group}: {line}", file=sys.stderr)
    if not failed:
        print(
            f"spotrun: {args.group} set to desired capacity 0; the cause is its tag {GIVEUP_TAG}",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
