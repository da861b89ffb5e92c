"""The bad-input battery: what a careless or hurried user types, one table row per case.

Every case asserts the contract of issue 12:
- the exit code;
- exactly one `error:` line, holding the fragments that name the problem and the next step;
- no traceback;
- every file under HOME (~/.ssh, ~/.spotrun) and the project (configs, outputs, data) byte-identical
  before and after;
- no instance left in moto that was not there before.

Fab cases run the real task collection (fabfile.py) through invoke's Program in-process (fab's
own start-up costs seconds on a loaded 2-core machine), against moto's server and, where a
machine is registered, the real sshd fixture; `CLI` marks the ones also run through the real
`fab` executable. Trainer cases run `ml.train.main` / `scripts/make_synthetic_data.py`'s main
in-process, and a few through `python -m` / the script itself.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest

from tests.peers.fab_process import in_process, run_fab

REPO = Path(__file__).resolve().parents[1]
FAB = str(Path(sys.executable).parent / "fab")
LIVE_STATES = ["pending", "running", "stopping", "stopped"]


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    code: int
    says: tuple[str, ...]  # fragments of the one error line: the problem and the next step
    tool: str = "fab"  # fab | train | synth
    cli: bool = False  # also through the real executable
    owner: str = "reliab"  # "train": the fix is h-train's (trainer side)
    # A defect found only when a batch reads it (non-finite features: checked per batch, as the
    # features are read lazily, also from S3): the run has started, so its new log files exist;
    # still no checkpoint is written and no file that existed before changes.
    run_started: bool = False
    # Environment variables set for this case only (a profile or endpoint the user exported).
    env: tuple[tuple[str, str], ...] = ()


def fab(id, *argv, code=2, says=(), cli=False, env=()):
    return Case(id, tuple(argv), code, tuple(says), "fab", cli, env=tuple(env))


def train(id, *argv, code=2, says=(), cli=False, owner="train", run_started=False):
    return Case(id, tuple(argv), code, tuple(says), "train", cli, owner, run_started)


def synth(id, *argv, code=2, says=(), cli=False):
    return Case(id, tuple(argv), code, tuple(says), "synth", cli)


# {demo} {tiny} {tmp} {file} {malformed} {broken:...} in trainer arguments: filled in by the world fixture.
CASES = [
    # -- class 3: numbers out of range, on the command line and in configs/aws.yaml -------------------
    fab(
        "adopt-port-too-big",
        "adopt",
        "box2",
        "198.51.100.9",
        "--port",
        "99999",
        says=("--port", "1 to 65535", "e.g. --port 22"),
        cli=True,
    ),
    fab("adopt-port-zero", "adopt", "box2", "198.51.100.9", "--port", "0", says=("--port", "1 to 65535")),
    fab("adopt-port-negative", "adopt", "box2", "198.51.100.9", "--port=-22", says=("--port", "got -22")),
    fab("run-gpus-zero", "run", "--gpus", "0", says=("--gpus", "1 to 64")),
    fab("train-gpus-word", "train", "--name", "box", "--gpus", "all", says=("--gpus", "whole number")),
    fab("logs-node-negative", "logs", "--name", "box", "--node=-1", says=("--node", "0 to 63")),
    fab("logs-lines-zero", "logs", "--name", "box", "--lines", "0", says=("--lines", "1 to")),
    fab("run-max-recoveries-negative", "run", "--max-recoveries=-1", says=("--max-recoveries", "0 to 100")),
    fab("run-max-recoveries-huge", "run", "--max-recoveries", "5000", says=("--max-recoveries", "got 5000")),
    fab("run-download-every-zero", "run", "--download-every", "0", says=("--download-every", "1 or more")),
    fab("run-poll-negative", "run", "--poll=-3", says=("--poll", "from 0.1 to 86400")),
    fab("run-poll-tiny", "run", "--poll", "1e-9", says=("--poll", "got 1e-09")),
    fab("run-imds-poll-nan", "run", "--imds-poll", "nan", says=("--imds-poll", "finite")),
    fab("run-poll-inf", "run", "--poll", "inf", says=("--poll", "finite")),
    fab(
        "set-ssh-port-out-of-range",
        "launch",
        "--set",
        "ssh_port=99999",
        says=("--set 'ssh_port=99999'", "1 to 65535", "change that value"),
        cli=True,
    ),
    fab(
        "set-idle-minutes-negative", "launch", "--set", "idle_minutes=-1", says=("idle_minutes", "0 or more")
    ),
    fab("set-max-hours-zero", "launch", "--set", "max_hours=0", says=("max_hours", "greater than 0")),
    fab("set-max-hours-negative", "status", "--set", "max_hours=-2", says=("max_hours", "cost cap")),
    fab(
        "set-root-volume-small", "launch", "--set", "root_volume_gb=4", says=("root_volume_gb", "8 to 16384")
    ),
    fab("set-root-volume-huge", "launch", "--set", "root_volume_gb=100000", says=("root_volume_gb", "16384")),
    fab("set-max-price-zero", "launch", "--set", "max_price=0", says=("max_price", "greater than 0")),
    fab("set-running-timeout-zero", "launch", "--set", "running_timeout_s=0", says=("running_timeout_s",)),
    fab(
        "set-max-recoveries-negative",
        "run",
        "--set",
        "max_recoveries=-1",
        says=("max_recoveries", "0 to 100"),
    ),
    fab("set-ssh-port-not-a-number", "launch", "--set", "ssh_port=abc", says=("ssh_port", "integer")),
    fab(
        "file-ssh-port-out-of-range",
        "status",
        "--config",
        "configs/bad-port.yaml",
        says=("configs/bad-port.yaml", "ssh_port", "edit ssh_port in configs/bad-port.yaml"),
    ),
    # -- class 5: task arguments that are not numbers, unclosed quotes, missing files -----------------
    fab(
        "adopt-port-not-a-number",
        "adopt",
        "box2",
        "198.51.100.9",
        "--port",
        "abc",
        says=("--port 'abc' is not a whole number", "e.g. --port 22"),
        cli=True,
    ),
    fab(
        "run-max-recoveries-not-a-number",
        "run",
        "--max-recoveries",
        "x",
        says=("--max-recoveries 'x' is not a whole number",),
        cli=True,
    ),
    fab(
        "run-download-every-not-a-number",
        "run",
        "--download-every",
        "often",
        says=("--download-every 'often' is not a number",),
    ),
    fab("logs-lines-not-a-number", "logs", "--name", "box", "--lines", "lots", says=("--lines",)),
    fab("run-args-unclosed-quote", "run", "--args", "a='b", says=("--args", "close the quote"), cli=True),
    fab("train-args-unclosed-quote", "train", "--name", "box", "--args", 'x="1', says=("--args", "quote")),
    fab("sync-args-unclosed-quote", "sync", "--name", "box", "--args", "a='", says=("--args",)),
    fab(
        "run-train-config-missing",
        "run",
        "--train-config",
        "nope.yaml",
        says=("--train-config nope.yaml", "no such file"),
        cli=True,
    ),
    fab(
        "train-train-config-missing",
        "train",
        "--name",
        "box",
        "--train-config",
        "nope.yaml",
        says=("--train-config nope.yaml",),
    ),
    fab(
        "sync-train-config-missing",
        "sync",
        "--name",
        "box",
        "--train-config",
        "configs/nope.yaml",
        says=("--train-config",),
    ),
    fab(
        "adopt-key-missing",
        "adopt",
        "box2",
        "198.51.100.9",
        "--key",
        "/nonexistent/id_ed25519",
        says=("--key",),
    ),
    fab("run-cmd-empty", "run-cmd", "--name", "box", "--cmd", " ", says=("--cmd is empty",)),
    fab(
        "config-file-missing",
        "status",
        "--config",
        "configs/nope.yaml",
        says=("configs/nope.yaml", "--config"),
    ),
    fab("set-unknown-key", "status", "--set", "instance_type=g5.xlarge", says=("unknown key instance_type",)),
    fab("set-not-key-value", "status", "--set", "=3", says=("dotted.key=value",)),
    fab(
        "run-train-override-unknown-key",
        "run",
        "--train-config",
        "configs/demo.yaml",
        "--args",
        "model.n_unitz=3",
        says=("model.n_unitz",),
    ),
    fab(
        "run-resume-never",
        "run",
        "--train-config",
        "configs/demo.yaml",
        "--args",
        "resume=never",
        says=("resume=auto",),
    ),
    fab("unknown-machine", "logs", "--name", "ghost", code=1, says=("no machine named 'ghost'", "fab adopt")),
    fab(
        "unreachable-machine",
        "run-cmd",
        "--name",
        "dead",
        "--cmd",
        "true",
        code=1,
        says=("cannot reach dead", "fab status"),
    ),
    fab(
        "logs-of-missing-run",
        "logs",
        "--name",
        "box",
        "--run",
        "nope",
        code=1,
        says=("no run named 'nope' on box", "fab train"),
    ),
    fab(
        "terminate-nothing",
        "terminate",
        "--name",
        "nothing",
        "--yes",
        code=1,
        says=("no live spotrun instance named 'nothing'", "fab status"),
    ),
    fab("launch-without-dlami", "launch", "--name", "exp9", code=1, says=("AMI",)),
    fab("launch-unknown-region", "launch", "--set", "region=us-east-9", says=("us-east-9",)),
    # (tasks added by other helpers: the same table of argument checks applies)
    fab("prices-hours-zero", "prices", "--hours", "0", says=("--hours", "greater than 0")),
    fab("prices-type-malformed", "prices", "--types", "G5", says=("--types 'G5'", "e.g. g5.xlarge")),
    fab("doctor-request-quota-not-a-number", "doctor", "--request-quota", "x", says=("--request-quota",)),
    fab(
        "set-s3-access-malformed", "doctor", "--set", "s3_access=[x]", says=("--set 's3_access=[x]'", "s3://")
    ),
    # -- class 4: names that become paths or AWS names --------------------------------------------------
    fab(
        "set-key-name-traversal",
        "launch",
        "--set",
        "key_name=../../x",
        says=("key_name '../../x'", "'/'", "e.g. spotrun"),
        cli=True,
    ),
    fab("set-key-name-slash", "cleanup", "--set", "key_name=keys/mine", says=("key_name",)),
    fab("set-key-name-space", "launch", "--set", "key_name=my key", says=("key_name", "letters, digits")),
    fab("launch-name-traversal", "launch", "--name", "../evil", says=("--name '../evil'",)),
    fab("launch-name-space", "launch", "--name", "bad name", says=("--name", "e.g. --name exp1")),
    fab("set-name-traversal", "status", "--set", "name=../../x", says=("name '../../x'",)),
    fab("adopt-name-traversal", "adopt", "../../x", "198.51.100.9", says=("--name '../../x'",)),
    fab("adopt-host-with-newline", "adopt", "box2", "h\nProxyCommand touch /tmp/x", says=("--host",)),
    fab("adopt-user-with-space", "adopt", "box2", "198.51.100.9", "--user", "root x", says=("--user",)),
    fab("train-run-traversal", "train", "--name", "box", "--run", "../x", says=("--run '../x'",)),
    fab("logs-run-slash", "logs", "--name", "box", "--run", "a/b", says=("--run",)),
    fab("run-run-name-dotdot", "run", "--run-name", "..", says=("--run-name",)),
    fab("download-name-traversal", "download", "--name", "../../etc", says=("--name",)),
    fab("terminate-name-traversal", "terminate", "--name", "../x", "--yes", says=("--name",)),
    fab(
        "set-security-group-sg-prefix",
        "launch",
        "--set",
        "security_group_name=sg-123",
        says=("security_group_name", "sg-"),
    ),
    fab(
        "set-security-group-slash",
        "cleanup",
        "--set",
        "security_group_name=a/b",
        says=("security_group_name",),
    ),
    fab("set-tag-aws-prefix", "launch", "--set", "tags={aws:x: y}", says=("tag",)),
    fab("set-tag-spotrun-prefix", "launch", "--set", "tags={spotrun:name: x}", says=("spotrun:",)),
    fab("set-region-malformed", "launch", "--set", "region=Mars", says=("region 'Mars'", "e.g. us-east-1")),
    fab(
        "set-instance-type-malformed",
        "launch",
        "--set",
        "instance_types=[G5 XLARGE]",
        says=("instance_types[0]",),
    ),
    fab("set-ami-malformed", "launch", "--set", "ami=ami-xyz", says=("ami 'ami-xyz'",)),
    fab("set-ssh-user-newline", "launch", "--set", 'ssh_user="a\\nb"', says=("ssh_user",)),
    fab(
        "set-proxy-command-newline",
        "launch",
        "--set",
        'ssh_proxy_command="nc %h %p\\nHost *"',
        says=("ssh_proxy_command", "one line"),
    ),
    # -- the trainer: python -m ml.train and scripts/make_synthetic_data.py ------------------------------
    train("train-config-missing", "--config", "nope.yaml", says=("nope.yaml",), cli=True, owner="reliab"),
    train("train-yaml-malformed", "--config", "{malformed}", says=("malformed YAML",), owner="reliab"),
    train(
        "train-unknown-key",
        "--config",
        "{demo}",
        "{tiny}",
        "model.n_unitz=8",
        says=("model.n_unitz",),
        owner="reliab",
    ),
    train(
        "train-override-type-blamed-on-override",
        "--config",
        "{demo}",
        "{tiny}",
        "num_training_batches=many",
        says=("num_training_batches=many", "override"),
    ),
    train(
        "train-batches-zero",
        "--config",
        "{demo}",
        "{tiny}",
        "num_training_batches=0",
        says=("num_training_batches",),
    ),
    train(
        "train-batches-negative",
        "--config",
        "{demo}",
        "{tiny}",
        "num_training_batches=-5",
        says=("num_training_batches",),
    ),
    train(
        "train-workers-negative",
        "--config",
        "{demo}",
        "{tiny}",
        "dataset.num_dataloader_workers=-1",
        says=("num_dataloader_workers",),
    ),
    train(
        "train-input-features-zero",
        "--config",
        "{demo}",
        "{tiny}",
        "model.n_input_features=0",
        says=("n_input_features",),
    ),
    train(
        "train-batch-size-zero", "--config", "{demo}", "{tiny}", "dataset.batch_size=0", says=("batch_size",)
    ),
    train(
        "train-missing-session",
        "--config",
        "{demo}",
        "{tiny}",
        "dataset.sessions=[t15.2023.08.11, t15.2099.01.01]",
        code=3,
        says=("t15.2099.01.01",),
        owner="reliab",
    ),
    train(
        "train-output-dir-under-a-file",
        "--config",
        "{demo}",
        "{tiny}",
        "output_dir={file}/run",
        "checkpoint_dir={file}/run/checkpoint",
        code=6,
        says=("{file}", "choose another output_dir"),
    ),
    train(
        # /proc takes no new folders, even from root (a chmod'ed folder would not stop root).
        "train-output-dir-not-writable",
        "--config",
        "{demo}",
        "{tiny}",
        "output_dir=/proc/spotrun-run",
        "checkpoint_dir=/proc/spotrun-run/checkpoint",
        code=6,
        says=("/proc/spotrun-run", "writable output_dir"),
    ),
    train(
        "train-labels-missing",
        "--config",
        "{demo}",
        "{tiny}",
        "dataset.dataset_dir={broken:no_labels}",
        code=3,
        says=("seq_class_ids",),
    ),
    train(
        "train-features-not-finite",
        "--config",
        "{demo}",
        "{tiny}",
        "dataset.dataset_dir={broken:nan}",
        code=3,
        says=("finite",),
        run_started=True,
    ),
    train(
        "train-seq-len-disagrees",
        "--config",
        "{demo}",
        "{tiny}",
        "dataset.dataset_dir={broken:seq_len}",
        code=3,
        says=("seq_len",),
    ),
    synth("synth-sessions-zero", "--out", "{tmp}/s", "--sessions", "0", says=("--sessions",), cli=True),
    synth("synth-sessions-too-many", "--out", "{tmp}/s", "--sessions", "99", says=("--sessions",)),
    synth("synth-sessions-not-a-number", "--out", "{tmp}/s", "--sessions", "four", says=("--sessions",)),
    synth("synth-trials-negative", "--out", "{tmp}/s", "--trials=-1", says=("--trials",)),
    synth("synth-out-missing", "--sessions", "2", says=("--out",)),
    synth("synth-out-is-a-file", "--out", "{file}", says=("--out",)),
    # -- issue 22 class 5: S3 URIs by S3's own naming rules, in every command that takes one -----------
    fab(
        "data-ls-bucket-capitals",
        "data-ls",
        "s3://Brain-Data/hdf5",
        says=("'s3://Brain-Data/hdf5'", "has capitals", "did you mean 'brain-data'"),
        cli=True,
    ),
    fab(
        "data-push-bucket-space",
        "data-push",
        "--src",
        "{tmp}",
        "--dest",
        "s3://my bucket/data",
        says=("--dest 's3://my bucket/data'", "spaces", "e.g. --dest s3://my-bucket/data"),
    ),
    fab("data-ls-no-bucket", "data-ls", "s3:///hdf5", says=("names no bucket",)),
    fab("run-data-uri-short-bucket", "run", "--data-uri", "s3://ab/data", says=("--data-uri", "3 to 63")),
    fab(
        "set-backup-uri-double-dot",
        "launch",
        "--set",
        "checkpoint_backup_uri=s3://ckpt..bucket/x",
        says=("checkpoint_backup_uri", "two dots in a row"),
    ),
    fab(
        "set-s3-access-ip-bucket",
        "doctor",
        "--set",
        "s3_access=[s3://10.0.0.12/data]",
        says=("s3_access", "is an IP address"),
    ),
    train(
        "train-dataset-dir-underscore-bucket",
        "--config",
        "{demo}",
        "{tiny}",
        "dataset.dataset_dir=s3://brain_data/hdf5",
        says=("dataset.dataset_dir", "holds '_'", "lowercase letters, digits"),
        owner="inputs",
    ),
    train(
        "train-checkpoint-dir-no-bucket",
        "--config",
        "{demo}",
        "{tiny}",
        "checkpoint_dir=s3:///ckpt",
        says=("checkpoint_dir", "names no bucket"),
        owner="inputs",
        cli=True,
    ),
    # -- issue 22 class 3: values read from files, checked where they are read --------------------------
    train(
        "train-yaml-duplicate-key",
        "--config",
        "{dupyaml}",
        says=("key 'num_training_batches' given twice",),
        owner="inputs",
    ),
    train(
        "train-yaml-empty",
        "--config",
        "{emptyyaml}",
        says=("{emptyyaml}: the file is empty",),
        owner="inputs",
    ),
    train("train-config-binary", "--config", "{binary}", says=("not a text file",), owner="inputs", cli=True),
    fab(
        "fab-config-duplicate-key",
        "status",
        "--config",
        "configs/twice.yaml",
        says=("configs/twice.yaml line 3", "given twice"),
    ),
    train(
        "train-bad-trials-unknown-session",
        "--config",
        "{demo}",
        "{tiny}",
        "dataset.bad_trials_dict={t15.2099.01.01: {1: [0]}}",
        says=("t15.2099.01.01", "not in dataset.sessions"),
        owner="inputs",
    ),
    train(
        "train-bad-trials-not-a-list",
        "--config",
        "{demo}",
        "{tiny}",
        "dataset.bad_trials_dict={t15.2023.08.11: {1: 4}}",
        says=("bad_trials_dict.t15.2023.08.11.1", "list of trial numbers"),
        owner="inputs",
    ),
    train(
        "train-trial-groups-unpadded",
        "--config",
        "{demo}",
        "{tiny}",
        "dataset.dataset_dir={broken:unpadded}",
        code=3,
        says=("trial group 'trial_0'", "expected 'trial_0000'"),
        owner="inputs",
    ),
    train(
        "train-attribute-not-a-number",
        "--config",
        "{demo}",
        "{tiny}",
        "dataset.dataset_dir={broken:attr_text}",
        code=3,
        says=("attribute block_num is 'three'", "fix the file"),
        owner="inputs",
    ),
    train(
        "train-attribute-nan",
        "--config",
        "{demo}",
        "{tiny}",
        "dataset.dataset_dir={broken:attr_nan}",
        code=3,
        says=("attribute seq_len is nan", "not a whole number"),
        owner="inputs",
    ),
    # -- issue 22 class 3, memory: the model's size from the config, before it is built -----------------
    train(
        "train-model-too-large",
        "--config",
        "{demo}",
        "{tiny}",
        "model.n_units=300000",
        says=(
            "the model would not fit",
            "parameters (model.n_units 300000",
            "GB to train",
            "GB is available RAM",
        ),
        owner="inputs",
        cli=True,
    ),
    train(
        "train-data-checked-before-the-model",
        "--config",
        "{demo}",
        "{tiny}",
        "model.n_units=300000",
        "dataset.sessions=[t15.2023.08.11, t15.2099.01.01]",
        code=3,
        says=("t15.2099.01.01",),
        owner="inputs",
    ),
    # -- issue 22 "vague": the profile and the endpoint named --------------------------------------------
    fab(
        "aws-profile-from-environment-missing",
        "status",
        code=2,
        says=("AWS profile 'nobody' not found", "AWS_PROFILE"),
        env=[("AWS_PROFILE", "nobody")],
        cli=True,
    ),
    fab(
        "aws-endpoint-unreachable",
        "status",
        code=1,
        says=("cannot reach http://127.0.0.1:9", "set by AWS_ENDPOINT_URL", "unset AWS_ENDPOINT_URL"),
        env=[("AWS_ENDPOINT_URL", "http://127.0.0.1:9")],
    ),
]


# ---- the world every case runs in -------------------------------------------------------------------


def snapshot(*roots: Path) -> dict[str, str]:
    """path → sha256 of every regular file under the roots (symlinks by their target), leaving out
    ~/.cache/spotrun: a cache (the trial index of a data file, kept by its ETag/mtime) may fill
    while a run fails, and losing it loses nothing."""
    out = {}
    for root in roots:
        for dirpath, _, files in os.walk(root):
            if Path(dirpath).is_relative_to(root / ".cache" / "spotrun"):
                continue
            for f in files:
                p = Path(dirpath) / f
                if p.is_symlink():
                    out[str(p)] = "-> " + os.readlink(p)
                elif p.is_file():
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@dataclass
class World:
    root: Path
    home: Path
    project: Path
    data: Path
    env: dict[str, str]
    fills: dict[str, str] = field(default_factory=dict)

    def live_instances(self) -> set[str]:
        if "ec2" not in self.__dict__:  # one client for the battery: making one costs ~0.3 s
            self.__dict__["ec2"] = boto3.client(
                "ec2", region_name="us-east-1", endpoint_url=self.env["AWS_ENDPOINT_URL"]
            )
        found = self.__dict__["ec2"].describe_instances(
            Filters=[{"Name": "instance-state-name", "Values": LIVE_STATES}]
        )
        return {i["InstanceId"] for r in found["Reservations"] for i in r["Instances"]}

    def fill(self, argv: tuple[str, ...]) -> list[str]:
        out = []
        for a in argv:
            if a == "{tiny}":
                out += self.fills["tiny"].split("\0")
                continue
            for key, value in self.fills.items():
                a = a.replace("{" + key + "}", value)
            out.append(a)
        return out


def _broken_copies(data: Path, root: Path) -> dict[str, str]:
    """Copies of the dataset with one defect each in the first train file's first trial."""
    import h5py
    import numpy as np

    out = {}
    for defect in ("no_labels", "nan", "seq_len", "unpadded", "attr_text", "attr_nan"):
        dest = root / f"broken-{defect}"
        shutil.copytree(data, dest)
        train_file = sorted(dest.rglob("data_train.hdf5"))[0]
        with h5py.File(train_file, "r+") as f:
            trial = f[sorted(f.keys())[0]]
            if defect == "no_labels":
                del trial["seq_class_ids"]
            elif defect == "nan":  # in every trial: a tiny run's two batches meet one for sure
                for name in f:
                    feats = f[name]["input_features"][()]
                    feats[0, 0] = np.nan
                    f[name]["input_features"][...] = feats
            elif defect == "unpadded":  # trial_0000 → trial_0, ...: one naming rule refuses it
                for name in [n for n in f if n.startswith("trial_")]:
                    f.move(name, f"trial_{int(name[6:])}")
            elif defect == "attr_text":
                trial.attrs["block_num"] = "three"
            elif defect == "attr_nan":
                trial.attrs["seq_len"] = np.float64("nan")
            else:
                trial.attrs["seq_len"] = np.int64(trial["seq_class_ids"].shape[0] + 50)
        out[f"broken:{defect}"] = str(dest)
    return out


@pytest.fixture(scope="module")
def world(moto_server):
    from common import aws
    from ec2 import registry
    from ec2.remote import sshconfig
    from ec2.remote.ssh import Machine
    from tests.peers.sshd import SSHD, SshdServer, require_binaries
    from tests.peers.trainkit import DEMO, make_data, tiny

    require_binaries(SSHD, "ssh", "rsync", "tmux")
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"))
    root = Path(tempfile.mkdtemp(prefix="srb", dir="/tmp"))
    home, project = root / "home", root / "p"
    (home / ".ssh").mkdir(parents=True)
    (project / "configs").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SPOTRUN_"))}
    env.update(
        HOME=str(home),
        SPOTRUN_HOME=str(home / ".spotrun"),
        AWS_ENDPOINT_URL=moto_server,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(root / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(root / "aws-credentials"),
        SPOTRUN_SSH_ATTEMPTS="1",
        OMP_NUM_THREADS="1",
    )
    mp = pytest.MonkeyPatch()
    for k in [k for k in os.environ if k.startswith(("AWS_", "SPOTRUN_"))]:
        mp.delenv(k)
    for k, v in env.items():
        mp.setenv(k, v)
    aws.reset_clients()
    (project / "configs" / "aws.yaml").write_text(
        "ssh_cidr: 203.0.113.7/32\nami_owners: [self]\ninstance_types: [g5.xlarge]\nzones: [us-east-1a]\n"
    )
    (project / "configs" / "bad-port.yaml").write_text("ssh_port: 70000\n")
    shutil.copy(DEMO, project / "configs" / "demo.yaml")
    (project / "hello.py").write_text("print('hello')\n")
    ckpt = project / "outputs" / "box" / "checkpoint"
    ckpt.mkdir(parents=True)
    (ckpt / "last.pt").write_bytes(os.urandom(2048))  # what `fab download` kept: never to be lost
    data = make_data(root / "data")
    run = root / "t" / "run"
    malformed = root / "malformed.yaml"
    malformed.write_text("model:\n  n_units: [128\n")
    a_file = root / "a-file"
    a_file.write_text("not a folder\n")
    dupyaml = root / "twice.yaml"  # a block pasted twice: the second would win silently
    dupyaml.write_text("num_training_batches: 2\nseed: 1\nnum_training_batches: 200\n")
    emptyyaml = root / "empty.yaml"
    emptyyaml.write_text("# nothing set yet\n")
    binary = root / "model.pt"
    binary.write_bytes(b"PK\x03\x04" + os.urandom(256))
    (project / "configs" / "twice.yaml").write_text("region: us-east-1\nssh_port: 22\nregion: us-west-2\n")
    mp.chdir(project)
    server = SshdServer(root / "sshd").__enter__()
    try:
        server.record(name="box", remote_dir=str(server.root / "remote"))
        registry.put(
            registry.MachineRecord(name="dead", host="127.0.0.1", port=9, key_path=str(server.key_path))
        )
        for name in ("box", "dead"):
            sshconfig.write_entry(registry.get(name))
        # First contact records box's host key (accept-new): done here, not inside a case.
        Machine(registry.get("box")).run("true")
        # One instance that lives through the whole battery: no case may touch it.
        ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto_server)
        # (one of moto's stock AMIs by id: listing them all costs seconds)
        ec2.run_instances(ImageId="ami-03cf127a", MinCount=1, MaxCount=1)
        world = World(root, home, project, data, env)
        world.fills = {
            "demo": str(project / "configs" / "demo.yaml"),
            "tiny": "\0".join(tiny(data, run, 2)),
            "tmp": str(root / "t"),
            "file": str(a_file),
            "malformed": str(malformed),
            "dupyaml": str(dupyaml),
            "emptyyaml": str(emptyyaml),
            "binary": str(binary),
            **_broken_copies(data, root),
        }
        yield world
    finally:
        server.__exit__(None, None, None)
        mp.undo()
        aws.reset_clients()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def in_the_worlds_home(laptop_home, request, monkeypatch):
    """laptop_home (autouse) gives every test a HOME of its own; a test that uses this module's world
    runs in the world's HOME instead (its registry, ~/.ssh, ~/.spotrun), as the commands it runs in
    this process must: without this they found an empty registry."""
    if "world" in request.fixturenames:
        world = request.getfixturevalue("world")
        monkeypatch.setenv("HOME", world.env["HOME"])
        monkeypatch.setenv("SPOTRUN_HOME", world.env["SPOTRUN_HOME"])


# ---- running a case ----------------------------------------------------------------------------------


def _synth_main():
    spec = importlib.util.spec_from_file_location(
        "make_synthetic_data", REPO / "scripts" / "make_synthetic_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run_case(case: Case, world: World, *, cli: bool) -> tuple[int, str]:
    if case.env:
        from common import aws

        mp = pytest.MonkeyPatch()
        for key, value in case.env:
            mp.setenv(key, value)
        aws.reset_clients()  # sessions are cached per (region, profile), not per environment
        try:
            return _run_case(case, world, cli=cli, env=dict(case.env))
        finally:
            mp.undo()
            aws.reset_clients()
    return _run_case(case, world, cli=cli)


def _run_case(case: Case, world: World, *, cli: bool, env: dict | None = None) -> tuple[int, str]:
    argv = world.fill(case.argv)
    if cli:
        command = {
            "fab": [FAB, "-r", str(REPO)],
            "train": [sys.executable, "-m", "ml.train"],
            "synth": [sys.executable, str(REPO / "scripts" / "make_synthetic_data.py")],
        }[case.tool]
        env = dict(world.env, PYTHONPATH=str(REPO), **(env or {}))
        proc = subprocess.run(
            [*command, *argv], cwd=world.project, env=env, capture_output=True, text=True, timeout=120
        )
        return proc.returncode, proc.stdout + proc.stderr
    if case.tool == "fab":
        return run_fab(argv)
    if case.tool == "train":
        from ml.train import main

        return in_process(lambda: main(argv))
    return in_process(lambda: _synth_main()(argv))


def check(case: Case, world: World, *, cli: bool) -> None:
    before_files = snapshot(world.home, world.project, world.root / "data", world.root / "t")
    before_instances = world.live_instances()
    code, output = run_case(case, world, cli=cli)
    errors = [line for line in output.splitlines() if line.startswith("error:") or ": error:" in line]
    assert "Traceback" not in output, output
    assert len(errors) == 1, f"expected exactly one error: line, got:\n{output}"
    line = world.fill((errors[0],))[0]
    for fragment in world.fill(case.says):
        assert fragment in line, f"{fragment!r} missing from {line!r}"
    assert code == case.code, f"exit {code}, expected {case.code}: {output}"
    after_files = snapshot(world.home, world.project, world.root / "data", world.root / "t")
    if case.run_started:
        new = {p: h for p, h in after_files.items() if p not in before_files}
        assert not [p for p in new if p.endswith(".pt") or "checkpoint" in p], new
        assert all(p.startswith(world.fills["tmp"] + "/run/") for p in new), new
        after_files = {p: h for p, h in after_files.items() if p in before_files}
        shutil.rmtree(world.fills["tmp"] + "/run", ignore_errors=True)
    assert after_files == before_files
    assert world.live_instances() == before_instances


def test_the_battery_is_big_enough():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
    assert sum(c.cli for c in CASES) >= 8 and {c.tool for c in CASES if c.cli} == {"fab", "train", "synth"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, world):
    check(case, world, cli=False)


@pytest.mark.parametrize("case", [c for c in CASES if c.cli], ids=[c.id for c in CASES if c.cli])
def test_bad_input_through_the_real_executable(case, world):
    check(case, world, cli=True)
