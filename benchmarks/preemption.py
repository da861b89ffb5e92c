"""Seconds from a spot notice to the checkpoint being present in S3, and steps lost per interruption.

Real parts, all local: moto's S3 server, the loopback IMDS, the notice watcher (ec2.spot_watch) and
the real trainer as subprocesses. Cases: the demo model and the full 45-session baseline
(configs/rnn_args.yaml shape, 44M parameters, AdamW state: last.pt is ~0.5 GB) on the CPU with a
tiny batch; each with checkpoint_dir in S3 (the trainer copies it up itself) and with a local
checkpoint folder that the watcher copies up (--upload-to).

    .venv/bin/python benchmarks/preemption.py [--only demo|baseline]

"notice→S3" runs from the moment the IMDS answers with the notice to the moment last.pt can be
read back from S3 (HEAD succeeds). moto adds no network latency or bandwidth limit, so on AWS the
copy part scales with the instance's S3 throughput (~0.5-1 GB/s on g5/g6 instances).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import boto3  # noqa: E402
import botocore.exceptions  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from tests.peers.imds import ImdsServer  # noqa: E402

COMMON = [
    "batches_per_train_log=1",
    "batches_per_val_step=100000",
    "batches_per_save=0",
    "use_amp=false",
    "num_threads=1",
    "progress_bar=false",
    "dataset.num_dataloader_workers=0",
    "lr_warmup_steps=1",
    "lr_warmup_steps_day=1",
    "num_training_batches=100000",
    "device=cpu",
]
CASES = {
    "demo": ("configs/demo.yaml", 4, ["dataset.batch_size=4"], 5),
    "baseline": (
        "configs/rnn_args.yaml",
        45,
        ["dataset.batch_size=2", "dataset.days_per_batch=2", "dataset.dataset_probability_val=[]"],
        2,
    ),
}


def make_data(root: Path, sessions: int) -> Path:
    out = root / f"data{sessions}"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts/make_synthetic_data.py"),
            "--out",
            str(out),
            "--sessions",
            str(sessions),
            "--trials",
            "3",
        ],
        check=True,
        capture_output=True,
    )
    return out


def present(s3, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except botocore.exceptions.ClientError:
        return False


def one_case(name: str, mode: str, root: Path, imds: ImdsServer, s3) -> str:
    config, sessions, extra, warm_steps = CASES[name]
    data = make_data(root, sessions)
    bucket, prefix = "bench-preempt", f"{name}-{mode}"
    ckpt_local = root / f"{name}-{mode}-ckpt"
    if mode == "s3":
        ckpt, watch = f"s3://{bucket}/{prefix}", ["--checkpoint-dir", f"s3://{bucket}/{prefix}"]
    else:
        ckpt = str(ckpt_local)
        watch = ["--checkpoint-dir", ckpt, "--upload-to", f"s3://{bucket}/{prefix}"]
    argv = [
        sys.executable,
        "-m",
        "ec2.remote.spot_watch",
        "--run-dir",
        str(root / f"{name}-{mode}-run"),
        "--signal",
        "USR1",
        "--poll",
        "1",
        *watch,
        "--",
        sys.executable,
        "-m",
        "ml.train",
        "--config",
        config,
        *COMMON,
        *extra,
        f"dataset.dataset_dir={data}",
        f"output_dir={root / f'{name}-{mode}-out'}",
        f"checkpoint_dir={ckpt}",
    ]
    imds.clear()
    env = {**os.environ, "PYTHONPATH": str(REPO), "SPOTRUN_IMDS_URL": imds.url, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    last_before: list[int] = []

    def read():
        for line in proc.stdout:
            lines.append(line)
            m = re.match(r"Train batch (\d+):", line)
            if m and imds.marked_at is None:
                if int(m.group(1)) + 1 >= warm_steps:
                    last_before.append(int(m.group(1)))
                    imds.mark_interruption()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    key = f"{prefix}/last.pt"
    while imds.marked_at is None:
        if proc.poll() is not None:
            raise SystemExit(f"{name}/{mode}: trainer ended before the notice:\n{''.join(lines)[-3000:]}")
        time.sleep(0.02)
    # The watcher polls every second (5 s in production: add up to that to the figure).
    while not present(s3, bucket, key):
        if time.time() - imds.marked_at > 300:
            raise SystemExit(f"{name}/{mode}: no checkpoint in S3 after 300 s")
        time.sleep(0.05)
    seconds = time.time() - imds.marked_at
    proc.wait(timeout=300)
    reader.join(timeout=10)
    output = "".join(lines)
    stopped = re.search(r"stopped by \S+ at step (\d+)", output)
    if proc.returncode != 75 or not stopped:
        raise SystemExit(f"{name}/{mode}: exit {proc.returncode}\n{output[-3000:]}")
    saved = int(stopped.group(1))
    lost = max(0, last_before[0] + 1 - saved)
    size = s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    params = re.search(r"model: ([\d,]+) parameters", output)
    return (
        f"preemption {name:8s} checkpoint {'in S3' if mode == 's3' else 'local→S3':9s} "
        f"params {params.group(1) if params else '?':>11s}  last.pt {size / 1e6:7.1f} MB  "
        f"notice→S3 {seconds:5.1f} s (watcher poll 1 s)  stopped at step {saved}, steps lost {lost}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=sorted(CASES), help="run one model only")
    args = p.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per case, not per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{server._server.server_port}"
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="bench-preempt")
    try:
        with tempfile.TemporaryDirectory(prefix="bp") as tmp, ImdsServer() as imds:
            for name in [args.only] if args.only else list(CASES):
                for mode in ("s3", "local"):
                    print(one_case(name, mode, Path(tmp), imds, s3), flush=True)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
