"""Shared fixtures: real local peers (moto's server over HTTP), a clean AWS environment.

Peer fixtures for sshd and IMDS live in tests/peers/ and are imported here so every test
folder can use them.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import pytest


def _moto_default_images_only() -> None:
    """moto's EC2 loads its 44 default images and, unless MOTO_AMIS_PATH is set, some 1,300 more
    per region (latest_amis, ECS-optimised), each with a volume and a snapshot: 0.35 s of CPU
    for every EC2 backend it makes, again after every reset (each test's aws_env). The tests use
    only the default images (tests/peers/moto_ec2.make_image starts from a default Ubuntu one),
    so point moto at a copy of exactly those. Set before moto's EC2 models are imported."""
    if "MOTO_AMIS_PATH" in os.environ:
        return
    import gzip
    import importlib.util

    moto_dir = Path(importlib.util.find_spec("moto").origin).parent
    images = gzip.decompress((moto_dir / "ec2" / "resources" / "amis.json.gz").read_bytes())
    out = Path(tempfile.gettempdir()) / f"spotrun-moto-amis-{len(images)}.json"
    if not out.is_file():
        part = out.with_name(f"{out.name}.{os.getpid()}")  # workers start at once: whole or absent
        part.write_bytes(images)
        part.replace(out)
    os.environ["MOTO_AMIS_PATH"] = str(out)


_moto_default_images_only()

from moto.server import ThreadedMotoServer  # noqa: E402 (after MOTO_AMIS_PATH is set)

from tests.peers.aws_gate import AwsGate  # noqa: E402

# Peers that need more than a few lines: sshd, IMDS, a latency/counting HTTP proxy, moto's EC2 as
# a user's account (a DLAMI, the check-IP stand-in, a refusing client).
pytest_plugins = [
    "tests.peers.sshd",
    "tests.peers.imds",
    "tests.peers.proxy",
    "tests.peers.silent",
    "tests.peers.moto_ec2",
    "tests.peers.sandbox",
    "tests.peers.placement_groups",
    "tests.peers.ready_venv",
]

# Keep torch from fighting the other test processes for the machine's two cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Tests that run `make` check what a user's own `make` prints. Under `make test` the parent's
# MAKELEVEL/MAKEFLAGS would make every child print "Entering directory" lines around it.
for _var in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS"):
    os.environ.pop(_var, None)


def pytest_collection_modifyitems(config, items):
    """The journeys first in every xdist worker's share (tests/peers/order.py says why). The
    order is the same in every worker (xdist checks that)."""
    from tests.peers.order import journeys_first

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers >= 2:
        items[:] = journeys_first(items, workers, lambda item: item.nodeid.startswith("tests/e2e/"))


def pytest_collection_finish(session):
    """A worker's imports (torch, moto, botocore's service models) are some half a million objects
    that live as long as it does, and every full garbage collection walks them all again; moto's
    request handling makes garbage fast enough for dozens of those per worker. Frozen out of the
    collector, with a larger first-generation threshold, the collector's time in tests/journey and
    tests/ec2 went from 8.7 to 3.8 CPU-s (of 58): docs/testing.md, "Where its time goes"."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


_REAL_HOME = os.environ.get("HOME", "")
_REAL_PIP_CONFIG = Path.home() / ".config" / "pip" / "pip.conf"


@pytest.fixture(autouse=True)
def laptop_home(monkeypatch):
    """Every test's laptop has its own HOME and SPOTRUN_HOME, so no test (or the background work of
    one) writes the registry, ~/.ssh/config or price caches of whoever runs the suite. The folder is
    short: ssh control sockets live under it. pip keeps the machine's index settings. A HOME some
    wider fixture already moved away from the real one (a module's shared world) is left as it is."""
    if os.environ.get("HOME") != _REAL_HOME and os.environ.get("SPOTRUN_HOME"):
        yield Path(os.environ["HOME"])
        return
    root = Path(tempfile.mkdtemp(prefix="srh", dir="/tmp"))
    (root / "home").mkdir()
    if _REAL_PIP_CONFIG.is_file() and "PIP_CONFIG_FILE" not in os.environ:
        monkeypatch.setenv("PIP_CONFIG_FILE", str(_REAL_PIP_CONFIG))
    monkeypatch.setenv("HOME", str(root / "home"))
    monkeypatch.setenv("SPOTRUN_HOME", str(root / "s"))
    yield root / "home"
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def aws_gate():
    """moto's server on a free loopback port behind the gate that holds it to AWS's documented
    rules and IAM's propagation delay (tests/peers/aws_gate.py); yields the gate."""
    # werkzeug logs every request at INFO, which pytest's log capture formats and keeps for the
    # test that made it: thousands of lines per journey, CPU for nobody. Errors still show.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    gate = AwsGate(f"http://127.0.0.1:{server._server.server_port}").start()
    yield gate
    gate.stop()
    server.stop()


@pytest.fixture(scope="session")
def moto_server(aws_gate):
    """The endpoint URL every test's AWS traffic goes to: moto, through the gate."""
    return aws_gate.url


@pytest.fixture
def aws_env(moto_server, monkeypatch, tmp_path):
    """Point every boto3/s3fs client at moto through the standard variables, with fake
    credentials and no ~/.aws files; reset moto's state so each test starts empty."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"))
    for var in list(os.environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    return moto_server


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """A small synthetic dataset (4 sessions, 24 train trials each; session 0 train-only), written
    once per test run by ml.data.synthetic (tests/peers/once.py); yields its folder."""
    from ml.data.synthetic import write_synthetic
    from tests.peers.once import made_once

    return made_once(
        tmp_path_factory, "synthetic", lambda out: write_synthetic(out, n_sessions=4, n_trials=24, seed=0)
    )


@pytest.fixture
def no_aws(monkeypatch, tmp_path):
    """No AWS at all: no credentials, no profile files, no instance metadata, a fresh HOME (so no
    cached prices). What a laptop offline or without credentials looks like to the toolkit."""
    from common import aws

    for var in list(os.environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("HOME", str(tmp_path))
    aws.reset_clients()
    yield
    aws.reset_clients()
