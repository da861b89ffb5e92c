"""The gate in front of moto's server: every request a test sends to "AWS" (from pytest itself, and
from `fab`, the boot and the watcher run as subprocesses, which reach moto through
AWS_ENDPOINT_URL alone) passes through here, where

- tests/peers/aws_rules.py's table refuses what AWS's documentation says AWS refuses and moto
  accepts (the documented code and message, in the service's XML error shape), and
- tests/peers/iam_lag.py has EC2 and Auto Scaling refuse an instance profile for its first seconds;

- tests/peers/moto_gaps.py completes what AWS documents as valid and moto's server fails;

everything else goes on to moto unchanged (the Host header too, so signatures still verify).
`refused` lists each refusal as (rule id or "iam-lag", action), and `seen` every request as
(service, action or HTTP method), for tests that look.

tests/conftest.py's `moto_server` fixture yields the gate's URL, so no test talks to moto around it.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlsplit
from xml.sax.saxutils import escape

import boto3

from tests.peers import aws_rules, moto_gaps
from tests.peers.aws_rules import Call
from tests.peers.iam_lag import IamLag

_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
_SCOPE = re.compile(r"Credential=[^/]+/\d+/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request")


def error_body(service: str, code: str, message: str) -> bytes:
    """AWS's error document for ``service``: EC2's <Response><Errors>, the query services'
    <ErrorResponse>, S3's <Error>."""
    code, message, rid = escape(code), escape(message), str(uuid.uuid4())
    if service == "ec2":
        xml = (
            f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
            f"<RequestID>{rid}</RequestID></Response>"
        )
    elif service == "s3":
        xml = f"<Error><Code>{code}</Code><Message>{message}</Message><RequestId>{rid}</RequestId></Error>"
    else:
        xml = (
            f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message>"
            f"</Error><RequestId>{rid}</RequestId></ErrorResponse>"
        )
    return ('<?xml version="1.0" encoding="UTF-8"?>' + xml).encode()


class _Server(ThreadingHTTPServer):
    # Every test worker's clients, forked DataLoader workers included, connect here at once.
    request_queue_size = 128
    daemon_threads = True


class AwsGate:
    def __init__(self, upstream: str, lag: IamLag | None = None):
        self.upstream_url = upstream
        u = urlsplit(upstream)
        self.upstream = (u.hostname, u.port or 80)
        self.lag = lag or IamLag()
        self.refused: list[tuple[str, str]] = []
        self.seen: list[tuple[str, str]] = []
        self._clients: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()
        gate = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    parts = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(parts)
                        parts.append(self.rfile.read(size))
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _send(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
                self.send_response(status)
                for k, v in headers:
                    if k.lower() != "content-length" or self.command == "HEAD":
                        self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _handle(self) -> None:
                body = self._body()
                if self.path.startswith("/moto-api/reset"):
                    gate.reset()
                call = gate.call_of(self.command, self.path, self.headers, body)
                if call is not None:
                    with gate._lock:
                        gate.seen.append((call.service, call.action))
                refusal = gate.judge(call) if call else None
                if refusal is not None:
                    status, code, message = refusal
                    xml = error_body(call.service, code, message)
                    self._send(status, [("Content-Type", "text/xml")], xml)
                    return
                if call is not None:
                    body = moto_gaps.complete(call, body)
                status, headers, data = gate.forward(self.command, self.path, self.headers, body)
                if status == 500 and call is not None and b"<!doctype html>" in data[:100].lower():
                    # moto crashed on the request (werkzeug's HTML page): mostly an API AWS has and
                    # moto lacks. Clients retry a 500 as AWS's transient InternalError, with seconds
                    # of backoff each time; a 501 says what it is and no client retries it. The
                    # code reads it as any refusal (the check is unknown).
                    action = call.action or self.headers.get("X-Amz-Target", "").rpartition(".")[2]
                    why = (
                        f"the stand-in (moto) failed on {call.service} {action} (most likely not implemented)"
                    )
                    if self.headers.get("X-Amz-Target"):  # a JSON-protocol service's error shape
                        doc = json.dumps({"__type": "NotImplementedByStandIn", "message": why}).encode()
                        self._send(501, [("Content-Type", "application/x-amz-json-1.1")], doc)
                    else:
                        xml = error_body(call.service, "NotImplementedByStandIn", why)
                        self._send(501, [("Content-Type", "text/xml")], xml)
                    return
                if call is not None and 200 <= status < 300:
                    gate.lag.note(call)
                self._send(status, headers, data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"

    def reset(self) -> None:
        self.lag.reset()
        with self._lock:
            self.refused.clear()
            self.seen.clear()

    def moto(self, service: str, region: str):
        """A client straight to moto (the rules read AWS's state through it, not through the gate)."""
        with self._lock:
            key = (service, region)
            if key not in self._clients:
                self._clients[key] = boto3.client(
                    service,
                    region_name=region,
                    endpoint_url=self.upstream_url,
                    aws_access_key_id="testing",
                    aws_secret_access_key="testing",
                )
            return self._clients[key]

    def call_of(self, method: str, path: str, headers, body: bytes) -> Call | None:
        """The request as the rules see it; None for what no rule is about (moto's own API)."""
        query = urlsplit(path).query
        scope = _SCOPE.search(headers.get("Authorization", "") or unquote(query))
        if not scope:
            return None
        region, service = scope.groups()

        def moto(name: str):
            return self.moto(name, region)

        if service == "s3":
            parts = urlsplit(path).path.lstrip("/").split("/", 1)
            params = {"Bucket": parts[0], "Key": unquote(parts[1]) if len(parts) > 1 else ""}
            return Call("s3", method, params, region, moto)
        flat = dict(parse_qsl(query, keep_blank_values=True))
        if "x-www-form-urlencoded" in headers.get("Content-Type", ""):
            flat.update(parse_qsl(body.decode(), keep_blank_values=True))
        action = flat.pop("Action", "")
        flat.pop("Version", None)
        return Call(service, action, aws_rules.unflatten(flat), region, moto)

    def judge(self, call: Call) -> tuple[int, str, str] | None:
        """(status, code, message) when AWS would refuse ``call``; None to forward it."""
        broken = aws_rules.violation(call)
        if broken is not None:
            rule, message = broken
            with self._lock:
                self.refused.append((rule.rule_id, call.action))
            return rule.status, rule.code, message
        lagging = self.lag.refusal(call)
        if lagging is not None:
            with self._lock:
                self.refused.append(("iam-lag", call.action))
            return 400, *lagging
        return None

    def forward(self, method: str, path: str, headers, body: bytes):
        out = {k: v for k, v in headers.items() if k.lower() not in _HOP}
        if body or method in ("PUT", "POST"):
            out["Content-Length"] = str(len(body))
        for last in (False, True):
            conn = http.client.HTTPConnection(*self.upstream, timeout=120)
            try:
                conn.request(method, path, body=body or None, headers=out)
                resp = conn.getresponse()
                data = resp.read()
                back = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP]
                return resp.status, back, data
            except ConnectionRefusedError:
                # Not sent at all (a request moto may have acted on is never sent twice).
                if last:
                    raise
            finally:
                conn.close()
        raise AssertionError("unreachable")

    def start(self) -> AwsGate:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
