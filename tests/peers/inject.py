"""Answers AWS would give, injected at the botocore level where no local peer can give them.

`answer(client, "RunInstances", fn)` registers a before-send hook on a real client: ``fn(request)``
returns (HTTP status, body bytes) to answer instead of the peer, or None to let the request through
to moto. The body is the service's documented wire format (EC2/IAM XML, JSON for the JSON
services), so botocore's own parser and error handling run exactly as they would against AWS.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from botocore.awsrequest import AWSResponse


class _Raw:
    def __init__(self, body: bytes):
        self._body = body

    def stream(self, **_):
        yield self._body


def answer(client, operation: str, fn: Callable) -> list:
    """Hook ``fn`` in front of ``operation`` on ``client``; returns the list of requests it saw."""
    seen: list = []
    service = client.meta.service_model.service_id.hyphenize()

    def handler(request, **_):
        if _operation_of(request, client) != operation:
            return None
        seen.append(request)
        got = fn(request)
        if got is None:
            return None
        status, body = got
        content_type = "text/xml" if body.lstrip().startswith(b"<") else "application/x-amz-json-1.1"
        return AWSResponse(request.url, status, {"Content-Type": content_type}, _Raw(body))

    client.meta.events.register(f"before-send.{service}", handler)
    return seen


def _operation_of(request, client) -> str:
    target = request.headers.get("X-Amz-Target")
    if target:
        return (target.decode() if isinstance(target, bytes) else target).rsplit(".", 1)[-1]
    body = request.body or b""
    if isinstance(body, str):
        body = body.encode()
    for part in body.split(b"&"):
        if part.startswith(b"Action="):
            return part[len(b"Action=") :].decode()
    return ""


def ec2_error(code: str, message: str) -> tuple[int, bytes]:
    """EC2's documented error response (query protocol)."""
    body = (
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
        "<RequestID>5c0a6f2e-injected</RequestID></Response>"
    )
    return 400, body.encode()


def iam_error(code: str, message: str, status: int = 403) -> tuple[int, bytes]:
    """IAM's documented error response."""
    body = (
        '<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><Error><Type>Sender</Type>'
        f"<Code>{code}</Code><Message>{message}</Message></Error><RequestId>injected</RequestId></ErrorResponse>"
    )
    return status, body.encode()


def json_answer(payload: dict, status: int = 200) -> tuple[int, bytes]:
    return status, json.dumps(payload).encode()
