"""What a spot run logs around an interruption: the fits-the-notice check on the first real
checkpoint, a rebalance recommendation with on_rebalance: checkpoint, then the notice.

Real parts, all local: moto's S3 server behind the test proxy (tests/peers/proxy.py; it can hold
every upload request for --put-latency seconds), the loopback IMDS stand-in answering as a spot
instance, the notice watcher and the real trainer as subprocesses, on the CPU. Prints the
watcher's and the trainer's lines about checkpoints, then the `preempted` record's checkpoint part.

    .venv/bin/python benchmarks/notice.py [--model demo|baseline] [--put-latency S] [--upload-mbps R]
                                          [--nvme-dir DIR]
                                          [--no-rebalance]

`baseline` is the full 45-session model (44M parameters; last.pt ~0.5 GB with AdamW's state).
--upload-mbps makes every upload share one link that fast (the demo's 47.5 MB last.pt at 0.7 MB/s
takes over a minute, more than half of the two-minute notice); moto adds no latency or bandwidth
limit of its own, so without these the figures are this machine's disk and loopback, not S3's.
"""

from __future__ import annotations

import argparse
import json
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
from moto.server import ThreadedMotoServer  # noqa: E402

from tests.peers.imds import ImdsServer  # noqa: E402
from tests.peers.proxy import CountingProxy  # noqa: E402

COMMON = [
    "batches_per_train_log=1",
    "batches_per_val_step=100000",
    "batches_per_save=0",  # last.pt at the validation of step 0: the first, timed, checkpoint
    "use_amp=false",
    "num_threads=1",
    "progress_bar=false",
    "dataset.num_dataloader_workers=0",
    "lr_warmup_steps=1",
    "lr_warmup_steps_day=1",
    "num_training_batches=100000",
    "device=cpu",
]
MODELS = {
    "demo": ("configs/demo.yaml", 4, ["dataset.batch_size=4"]),
    "baseline": (
        "configs/rnn_args.yaml",
        45,
        ["dataset.batch_size=2", "dataset.days_per_batch=2", "dataset.dataset_probability_val=[]"],
    ),
}
SHOWN = re.compile(r"spot_watch:|checkpoint|rebalance|stopped by|spot instance|SIGUSR2")


def wait_for(lines: list[str], pattern: str, proc: subprocess.Popen, timeout: float = 600) -> re.Match:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for line in lines:
            if m := re.search(pattern, line):
                return m
        if proc.poll() is not None:
            raise SystemExit(f"exited {proc.returncode} before {pattern!r}:\n{''.join(lines)[-3000:]}")
        time.sleep(0.1)
    raise SystemExit(f"no {pattern!r} in {timeout:g} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="demo")
    p.add_argument("--put-latency", type=float, default=0.0, help="seconds each upload request waits")
    p.add_argument("--upload-mbps", type=float, help="uploads share a link of this many MB/s")
    p.add_argument("--nvme-dir", help="checkpoint_nvme_dir for the run (default: the DLAMI mount)")
    p.add_argument("--no-rebalance", action="store_true", help="the notice only")
    args = p.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    moto = f"http://127.0.0.1:{server._server.server_port}"
    os.environ.update(
        {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    )
    boto3.client("s3", endpoint_url=moto).create_bucket(Bucket="bench-notice")
    config, sessions, extra = MODELS[args.model]
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bn") as tmp,
            ImdsServer() as imds,
            CountingProxy(moto) as proxy,
        ):
            proxy.latency_s, proxy.latency_methods = args.put_latency, {"PUT"}
            proxy.upload_bps = args.upload_mbps * 1e6 if args.upload_mbps else None
            data = Path(tmp) / "data"
            subprocess.run(
                [sys.executable, "scripts/make_synthetic_data.py", "--out", str(data)]
                + ["--sessions", str(sessions), "--trials", "3"],
                cwd=REPO,
                check=True,
                capture_output=True,
            )
            run_dir = Path(tmp) / "run"
            argv = [
                *(sys.executable, "-m", "ec2.remote.spot_watch", "--run-dir", str(run_dir)),
                *("--signal", "USR1", "--poll", "1", "--on-rebalance", "checkpoint"),
                *("--checkpoint-dir", "s3://bench-notice/run", "--"),
                *(sys.executable, "-m", "ml.train", "--config", config, *COMMON, *extra),
                f"dataset.dataset_dir={data}",
                f"output_dir={Path(tmp) / 'out'}",
                "checkpoint_dir=s3://bench-notice/run",
                *([f"checkpoint_nvme_dir={args.nvme_dir}"] if args.nvme_dir else []),
            ]
            env = {
                **os.environ,
                "PYTHONPATH": str(REPO),
                "SPOTRUN_IMDS_URL": imds.url,
                "AWS_ENDPOINT_URL": proxy.url,
                "OMP_NUM_THREADS": "1",
            }
            proc = subprocess.Popen(
                argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            lines: list[str] = []
            threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
            try:
                wait_for(lines, r"checkpoint: save", proc)
                if not args.no_rebalance:
                    imds.mark_rebalance()
                    m = wait_for(lines, r"saved last\.pt at step (\d+)", proc)
                    wait_for(lines, rf"Train batch {int(m.group(1)) + 2}:", proc)
                imds.mark_interruption()
                code = proc.wait(timeout=600)
            finally:
                if proc.poll() is None:
                    proc.terminate()  # the watcher passes it on: the trainer stops too
                    proc.wait(timeout=120)
            time.sleep(0.5)
            for line in lines:
                if SHOWN.search(line):
                    print(line.rstrip())
            record = json.loads((run_dir / "preempted").read_text())
            print(
                f"exit {code}; preempted: checkpoint {json.dumps(record['checkpoint'])}, "
                f"notice to safe {record['seconds_notice_to_safe']} s"
            )
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
