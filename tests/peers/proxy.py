"""A counting, latency-adding HTTP proxy on loopback, in front of moto's server.

Clients are pointed at it with AWS_ENDPOINT_URL, so every S3 request the code under test makes
passes through it: it counts requests by method, GETs that carry a Range header, and response
body bytes, and can hold each request for a fixed latency (as a real S3 round trip would; moto
answers instantly). It forwards the Host header untouched, so SigV4 signatures still verify.

    with CountingProxy(upstream_url, latency_s=0.03) as proxy:
        os.environ["AWS_ENDPOINT_URL"] = proxy.url
        ...
        proxy.counts["GET"], proxy.ranged_gets, proxy.bytes_out

A slow S3: ``latency_methods`` limits the latency to some methods (``{"PUT"}``: slow uploads,
quick reads); ``upload_bps`` makes request bodies (uploads, multipart parts) share one link of that
many bytes/s, concurrent parts included, so a big file is slow and a small one is not;
``rate_bps`` paces every response body (through tests/peers/throttle.py's pump, as the slow SSH
link does), and ``stall_next(after)`` makes the next ranged GET's body stop after
``after`` bytes, its connection open, until ``release()`` (a stuck connection).

Fixture: ``s3_proxy`` (needs ``aws_env``): a proxy in front of the test's moto server with
AWS_ENDPOINT_URL pointed at it.
"""

from __future__ import annotations

import http.client
import io
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest

from tests.peers import throttle

_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}


class CountingProxy:
    def __init__(self, upstream: str, latency_s: float = 0.0):
        u = urlsplit(upstream)
        self.upstream = (u.hostname, u.port or 80)
        self.latency_s = latency_s
        self.latency_methods: set[str] | None = None  # None: every request waits latency_s
        self.upload_bps: float | None = None  # request bodies share a link this fast (None: at once)
        self._link_free_at = 0.0  # when the shared upload link has sent what it was given
        self.rate_bps: float | None = None  # response bodies at this many bytes/s (None: at once)
        self._stall_after: int | None = None
        self._unstall = threading.Event()
        self._lock = threading.Lock()
        self.reset()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
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
                if not n:
                    return b""
                if not proxy.upload_bps:
                    return self.rfile.read(n)
                # Read it as a slow link would carry it: the client keeps sending (no read timeout
                # while a part waits), and concurrent parts share the link.
                parts = []
                while n > 0:
                    chunk = self.rfile.read(min(n, 64 * 1024))
                    if not chunk:
                        break
                    proxy._upload_wait(len(chunk))
                    parts.append(chunk)
                    n -= len(chunk)
                return b"".join(parts)

            def _forward(self) -> None:
                body = self._body()
                fault = proxy._take_fault(self.command, self.path) or proxy._take_failure()
                if fault is not None:
                    status, code = fault
                    xml = (
                        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                        f"<Message>injected by the test proxy</Message></Error>"
                    ).encode()
                    proxy._count(f"{self.command} {status}", False, 0)
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(xml)))
                    self.end_headers()
                    if self.command != "HEAD":  # a HEAD answer has no body
                        self.wfile.write(xml)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                if proxy.latency_s and (
                    proxy.latency_methods is None or self.command in proxy.latency_methods
                ):
                    time.sleep(proxy.latency_s)
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    out_headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP]
                finally:
                    conn.close()
                proxy._count(self.command, "Range" in self.headers, len(data))
                self.send_response(resp.status, resp.reason)
                for k, v in out_headers:
                    if k.lower() != "content-length" or self.command == "HEAD":
                        self.send_header(k, v)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    if not proxy._send_body(
                        self.wfile, data, self.command == "GET" and "Range" in self.headers
                    ):
                        self.close_connection = True  # cut short: the client sees the connection drop

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread: threading.Thread | None = None

    def _upload_wait(self, nbytes: int) -> None:
        """Hold a reader until the shared upload link would have carried these bytes too."""
        if not self.upload_bps or not nbytes:
            return
        with self._lock:
            start = max(time.monotonic(), self._link_free_at)
            self._link_free_at = start + nbytes / self.upload_bps
            until = self._link_free_at
        time.sleep(max(until - time.monotonic(), 0))

    def _count(self, method: str, ranged: bool, nbytes: int) -> None:
        with self._lock:
            self.counts[method] += 1
            if method == "GET" and ranged:
                self.ranged_gets += 1
            self.bytes_out += nbytes

    def _send_body(self, wfile, data: bytes, ranged: bool) -> bool:
        """Write a response body, paced and stalled as asked; False when it was cut short."""
        with self._lock:
            stall, self._stall_after = (self._stall_after, None) if ranged else (None, self._stall_after)
        if not self.rate_bps and stall is None:
            wfile.write(data)
            return True
        body = io.BytesIO(data)

        def read(n: int) -> bytes:
            if stall is not None and body.tell() >= stall:
                wfile.flush()
                self._unstall.wait(300)
                return b""  # then the connection ends short, as a dropped one does
            return body.read(n if stall is None else min(n, stall - body.tell()))

        throttle.pump(read, wfile.write, self.rate_bps or float("inf"), threading.Event())
        return body.tell() == len(data)

    def stall_next(self, after: int) -> None:
        """The next ranged GET's body stops after ``after`` bytes, its connection held open, until
        ``release()`` (or 300 s); then the body ends short."""
        with self._lock:
            self._stall_after = after
            self._unstall.clear()

    def release(self) -> None:
        self._unstall.set()

    def reset(self) -> None:
        """Zero the counters (and drop pending faults)."""
        with self._lock:
            self.counts: Counter[str] = Counter()
            self.ranged_gets = 0
            self.bytes_out = 0
            self._faults: list[tuple[str, int, str]] = []
            self.injected = 0
            self._failures_left = 0
            self._failure: tuple[int, str] = (503, "SlowDown")
            self._every = 1
            self._seen = 0

    def inject(self, count: int, status: int = 503, code: str = "SlowDown", every: int = 1) -> None:
        """An S3 that struggles for a while: answer ``count`` requests of any kind, every
        ``every``-th one from now, with ``status``/``code``; ``injected`` counts those served."""
        with self._lock:
            self._failures_left, self._failure, self._every, self._seen = count, (status, code), every, 0

    def _take_failure(self) -> tuple[int, str] | None:
        with self._lock:
            if self._failures_left <= 0:
                return None
            self._seen += 1
            if self._seen % self._every:
                return None
            self._failures_left -= 1
            self.injected += 1
            return self._failure

    def fail_next(
        self, n: int, status: int = 503, code: str = "SlowDown", method: str = "GET", path_part: str = ""
    ) -> None:
        """Answer the next ``n`` ``method`` requests whose path contains ``path_part`` with S3's
        error document (``status``, ``code``), as S3 does when it throttles; they are counted as
        e.g. ``counts["GET 503"]``."""
        with self._lock:
            self._faults += [(method, path_part, status, code)] * n

    def _take_fault(self, method: str, path: str) -> tuple[int, str] | None:
        with self._lock:
            for k, (m, part, status, code) in enumerate(self._faults):
                if m == method and part in path:
                    del self._faults[k]
                    return status, code
        return None

    @property
    def gets(self) -> int:
        return self.counts["GET"]

    def start(self) -> CountingProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> CountingProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture
def s3_proxy(aws_env, monkeypatch):
    """A counting proxy in front of moto; AWS_ENDPOINT_URL points at the proxy."""
    with CountingProxy(aws_env) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        yield proxy
