"""AWS API calls and wall time of the lifecycle against moto's server (started here):
launch → running → terminate, and `status` with 50 instances. One line per case.

    .venv/bin/python benchmarks/launch.py

Calls are counted with botocore's `before-call` event on every client the code makes. moto adds
no network latency, so the call count is the figure that carries over to AWS (each call there
costs ~50-200 ms); the wall time shows spotrun's own overhead.
"""

from __future__ import annotations

import collections
import io
import logging
import os
import shutil
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moto.server import ThreadedMotoServer  # noqa: E402

SETS = ["ssh_cidr=203.0.113.7/32", "ami_owners=[self]", "instance_types=[g4dn.xlarge, g5.xlarge, g6.xlarge]"]


class Counter:
    def __init__(self):
        self.calls = collections.Counter()

    def __call__(self, model, **kwargs):
        self.calls[model.name] += 1

    def reset(self) -> None:
        self.calls.clear()

    def total(self) -> int:
        return sum(self.calls.values())


def counted_clients(counter: Counter) -> None:
    """Hook every client common.aws makes, so each API call is counted."""
    from common import aws

    real = aws.client

    def client(service, region=None, profile=None):
        c = real(service, region, profile)
        if not getattr(c, "_spotrun_counted", False):
            c.meta.events.register("before-call", counter)
            c._spotrun_counted = True
        return c

    aws.client = client


def main() -> None:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    root = Path(tempfile.mkdtemp(prefix="srb", dir="/tmp"))
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{server._server.server_port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        HOME=str(root / "home"),
        SPOTRUN_HOME=str(root / "s"),
        AWS_CONFIG_FILE=str(root / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(root / "none"),
    )
    (root / "home").mkdir()
    try:
        import boto3
        from invoke import Context

        from common import aws
        from ec2.cloud import instances
        from ec2.cloud.launch import launch
        from ec2.config import load_aws_config
        from tasks import lifecycle
        from tests.peers.moto_ec2 import DLAMI_NAME, make_image

        ec2 = boto3.client("ec2", region_name="us-east-1")
        make_image(ec2, DLAMI_NAME)
        counter = Counter()
        counted_clients(counter)
        cfg = load_aws_config(None, SETS)
        sink = io.StringIO()

        # First launch creates the key pair and security group; the second reuses them.
        for case in ("launch (first: creates key, group)", "launch (again: reuses key, group)"):
            counter.reset()
            start = time.perf_counter()
            with redirect_stdout(sink):
                record = launch(cfg, "bench", wait_ssh=False)
            launched_s = time.perf_counter() - start
            launch_calls = counter.total()
            counter.reset()
            start = time.perf_counter()
            with redirect_stdout(sink):
                lifecycle.terminate(Context(), name="bench", yes=True, set_=SETS)
            term_s = time.perf_counter() - start
            print(
                f"{case} → running: {launch_calls} AWS calls, {launched_s * 1000:.0f} ms; "
                f"terminate (wait terminated): {counter.total()} calls, {term_s * 1000:.0f} ms; "
                f"instance {record.instance_id}"
            )

        real = aws.client("ec2", "us-east-1", None)
        image_id = ec2.describe_images(Owners=["self"])["Images"][0]["ImageId"]
        params = dict(
            ImageId=image_id,
            MinCount=1,
            MaxCount=1,
            InstanceType="g5.xlarge",
            Placement={"AvailabilityZone": "us-east-1a"},
            InstanceMarketOptions={"MarketType": "spot"},
        )
        for i in range(50):
            tags = [{"Key": "spotrun:name", "Value": f"s{i:02d}"}, {"Key": "spotrun:owner", "Value": "bench"}]
            real.run_instances(**params, TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])
        assert len(instances.find_instances(real)) == 50
        for label, no_runs in (("status, 50 instances (run-state probes off: none is reachable)", True),):
            counter.reset()
            start = time.perf_counter()
            out = io.StringIO()
            with redirect_stdout(out):
                lifecycle.status(Context(), no_runs=no_runs, set_=SETS)
            rows = sum(1 for line in out.getvalue().splitlines() if line.startswith("s"))
            print(
                f"{label}: {counter.total()} AWS calls ({dict(counter.calls)}), "
                f"{(time.perf_counter() - start) * 1000:.0f} ms, {rows} rows"
            )
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
