"""A real HTTP instance metadata service (IMDSv2) on loopback, standing in for 169.254.169.254.

- `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` (1..21600) returns a token;
  without the header: 400. Every GET needs a live token in `X-aws-ec2-metadata-token`: 401 without.
- `GET /latest/meta-data/spot/instance-action`: 404 until the test calls `mark_interruption()`,
  then `{"action": "terminate", "time": "<now + 120 s>"}` (as AWS sends it).
- `GET /latest/meta-data/events/recommendations/rebalance`: 404 until `mark_rebalance()`.
- `GET /latest/meta-data/placement/region`, `placement/availability-zone`, `instance-id`,
  `instance-type` and `instance-life-cycle` (`spot` or `on-demand`): the identity a boot reads.
- `GET /latest/meta-data/iam/security-credentials/` → the role's name, and `.../<role>` → its
  temporary credentials (the documented JSON), as an instance with a profile answers.

`ImdsServer` is a context manager (the benchmark uses it); the `imds` fixture yields a running one.
`clear()` takes the marks back (a replacement instance has no notice).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

TOKEN_PATH = "/latest/api/token"
ACTION_PATH = "/latest/meta-data/spot/instance-action"
REBALANCE_PATH = "/latest/meta-data/events/recommendations/rebalance"
CREDENTIALS_PATH = "/latest/meta-data/iam/security-credentials/"


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


class ImdsServer:
    def __init__(self, region: str = "us-east-1", instance_id: str = "i-0123456789abcdef0"):
        self.region = region
        self.instance_id = instance_id
        self.instance_type = "g5.xlarge"
        self.zone = f"{region}a"
        self.lifecycle = "spot"
        self.local_ipv4 = "127.0.0.1"  # loopback: members on this test machine really reach it
        self.role = "spotrun-us-east-1-job"
        # The documented shape (EC2 user guide, "Retrieve security credentials from instance metadata").
        self.credentials = {
            "Code": "Success",
            "LastUpdated": "2026-12-01T00:00:00Z",
            "Type": "AWS-HMAC",
            "AccessKeyId": "ASIAIMDSROLEKEY00001",
            "SecretAccessKey": "imds-role-secret",
            "Token": "imds-role-session-token",
            "Expiration": "2099-12-01T06:00:00Z",
        }
        self._lock = threading.Lock()
        self._tokens: dict[str, float] = {}
        self._action: dict | None = None
        self._rebalance: dict | None = None
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.marked_at: float | None = None
        self._httpd: ThreadingHTTPServer | None = None

    # --- what tests do ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def mark_interruption(self, action: str = "terminate", in_seconds: float = 120) -> None:
        with self._lock:
            self.marked_at = time.time()
            when = datetime.now(timezone.utc) + timedelta(seconds=in_seconds)
            self._action = {"action": action, "time": _iso(when)}

    def mark_rebalance(self) -> None:
        with self._lock:
            self._rebalance = {"noticeTime": _iso(datetime.now(timezone.utc))}

    def clear(self) -> None:
        with self._lock:
            self._action = self._rebalance = None
            self.marked_at = None

    def served(self, path: str, status: int | None = None) -> int:
        with self._lock:
            return sum(1 for _m, p, s in self.requests if p == path and (status is None or s == status))

    # --- the protocol -------------------------------------------------------------------------------
    def _answer(self, method: str, path: str, headers) -> tuple[int, str]:
        with self._lock:
            if method == "PUT":
                if path != TOKEN_PATH:
                    return 403, ""
                ttl = headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
                if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                    return 400, ""
                token = secrets.token_urlsafe(24)
                self._tokens[token] = time.monotonic() + int(ttl)
                return 200, token
            expires = self._tokens.get(headers.get("X-aws-ec2-metadata-token", ""))
            if expires is None or expires < time.monotonic():
                return 401, ""
            if path == ACTION_PATH:
                return (200, json.dumps(self._action)) if self._action else (404, "")
            if path == REBALANCE_PATH:
                return (200, json.dumps(self._rebalance)) if self._rebalance else (404, "")
            if path == "/latest/meta-data/placement/region":
                return 200, self.region
            if path == "/latest/meta-data/instance-id":
                return 200, self.instance_id
            if path == "/latest/meta-data/instance-type":
                return 200, self.instance_type
            if path == "/latest/meta-data/placement/availability-zone":
                return 200, self.zone
            if path == "/latest/meta-data/instance-life-cycle":
                return 200, self.lifecycle
            if path == "/latest/meta-data/local-ipv4":
                return 200, self.local_ipv4
            if path == CREDENTIALS_PATH:
                return 200, self.role
            if path == CREDENTIALS_PATH + self.role:
                return 200, json.dumps(self.credentials)
            return 404, ""

    def __enter__(self) -> ImdsServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, method: str) -> None:
                status, body = server._answer(method, self.path, self.headers)
                with server._lock:
                    server.requests.append((method, self.path, status))
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802 - http.server's naming
                self._reply("GET")

            def do_PUT(self):  # noqa: N802
                self._reply("PUT")

            def log_message(self, *args):  # quiet
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def imds():
    """A running IMDSv2 stand-in; point code at it with SPOTRUN_IMDS_URL=imds.url."""
    with ImdsServer() as server:
        yield server


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """The synthetic dataset the preemption tests train on (4 sessions, as configs/demo.yaml wants),
    written once per test run (tests/peers/once.py): no test changes it."""
    import subprocess
    import sys
    from pathlib import Path

    from tests.peers.once import made_once

    repo = Path(__file__).resolve().parents[2]

    def make(folder: Path) -> None:
        script = str(repo / "scripts/make_synthetic_data.py")
        out = str(folder / "synthetic")
        subprocess.run(
            [sys.executable, script, "--out", out, "--sessions", "4", "--trials", "12"],
            check=True,
            capture_output=True,
        )

    return made_once(tmp_path_factory, "spotdata", make) / "synthetic"


def wait_until(check, timeout: float, what: str, every: float = 0.1):
    """Poll `check` until it returns something true (and return that), or fail naming `what`."""
    end = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(every)
    return found


def instance_env(imds_url: str, moto_url: str) -> dict[str, str]:
    """What a spot instance has without spotrun sending it: the metadata service and its IAM role
    (here moto's endpoint and fake keys), and one CPU thread for torch on a shared test machine."""
    return {
        "SPOTRUN_IMDS_URL": imds_url,
        "AWS_ENDPOINT_URL": moto_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture
def spot_host(imds, aws_env, monkeypatch, ready_venv, request):
    """An sshd standing in for a spot instance: its sessions see the IMDS fixture and moto through
    SetEnv (the instance role), never through spotrun. HOME/SPOTRUN_HOME point at a temp folder.
    Its remote folder holds a venv set up before, unless the test is marked ``fresh_setup``
    (tests/peers/ready_venv.py)."""
    import shutil
    import tempfile
    from pathlib import Path

    from tests.peers.ready_venv import wants_fresh_setup
    from tests.peers.sshd import SSHD, SshdServer, require_binaries

    require_binaries(SSHD, "ssh", "rsync", "tmux", "nc")
    root = Path(tempfile.mkdtemp(prefix="sp", dir="/tmp"))
    (root / "home").mkdir()
    if not wants_fresh_setup(request):
        ready_venv(root / "remote")
    monkeypatch.setenv("HOME", str(root / "home"))
    monkeypatch.setenv("SPOTRUN_HOME", str(root / "s"))
    try:
        with SshdServer(root, env=instance_env(imds.url, aws_env)) as server:
            yield server
    finally:
        shutil.rmtree(root, ignore_errors=True)
