"""What a training run on the instance is made of, built once for every way of starting one
(`fab setup`/`fab train` in tasks/remote.py, `fab run` in ec2/journey/stages.py): the setup
command, the trainer's command line, its environment and the notice watcher's arguments.

Pure functions returning strings and lists, tested as such.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from common.s3uri import is_s3
from ec2.remote.runs import code_dir, venv_python
from ec2.remote.ssh import join_path, quote_path

SETUP_SCRIPT = "scripts/setup_instance.sh"
# The trainer checkpoints and exits 75 on SIGUSR1 (see ml.errors.STOPPED_RESUMABLE).
TRAINER_SIGNAL = "USR1"


def setup_command(remote_dir: str, python: str | None = None, require_gpu: bool = True) -> str:
    """`bash code/scripts/setup_instance.sh REMOTE_DIR`, with a stand-in python or no GPU check."""
    env = f"SPOTRUN_SETUP_PYTHON={quote_path(python)} " if python else ""
    env += "" if require_gpu else "SPOTRUN_REQUIRE_GPU=0 "
    script = quote_path(join_path(code_dir(remote_dir), SETUP_SCRIPT))
    return f"{env}bash {script} {quote_path(remote_dir)}"


# torchrun's usual c10d rendezvous port; members reach it through the cluster's members-only rule.
RDZV_PORT = 29400


@dataclass(frozen=True)
class Rendezvous:
    """torchrun's c10d rendezvous across machines: node 0's agent hosts the store at node 0's
    private address; every node names the same endpoint and run id."""

    nodes: int
    host: str
    run_id: str
    node: int  # this machine's place; node 0 hosts the store
    port: int = RDZV_PORT


def uses_torchrun(procs: int, rendezvous: Rendezvous | None = None) -> bool:
    return procs > 1 or rendezvous is not None


def module_command(remote_dir: str, module: str, procs: int = 1, rendezvous: Rendezvous | None = None) -> str:
    """`python -m MODULE` with the machine's venv python; with `procs` > 1 or across machines, the
    same under torchrun, one rank per GPU (`python -m torch.distributed.run` is torchrun itself, run
    by the venv's python, which sees the AMI's torch). No restarts: a stopped rank means the run
    stops (and resumes from its checkpoint). The trainer and `fab bench` start their ranks here."""
    python = quote_path(venv_python(remote_dir))
    if rendezvous is not None:
        r = rendezvous
        launcher = (
            f"-m torch.distributed.run --nnodes {int(r.nodes)} --nproc_per_node {int(procs)} "
            f"--rdzv_backend c10d --rdzv_endpoint {shlex.quote(f'{r.host}:{int(r.port)}')} "
            f"--rdzv_id {shlex.quote(r.run_id)} --rdzv_conf is_host={1 if r.node == 0 else 0} "
            "--max_restarts 0 "
        )
    elif procs > 1:
        launcher = f"-m torch.distributed.run --standalone --nproc_per_node {int(procs)} "
    else:
        launcher = ""
    return f"{python} {launcher}-m {module}"


def train_command(
    remote_dir: str,
    train_config: str,
    overrides: list[str],
    procs: int = 1,
    rendezvous: Rendezvous | None = None,
) -> str:
    """`python -m ml.train --config CONFIG [overrides]`, started as `module_command` starts it."""
    start = module_command(remote_dir, "ml.train", procs, rendezvous)
    return f"{start} --config {shlex.quote(train_config)}" + "".join(f" {shlex.quote(o)}" for o in overrides)


def train_env(region: str | None) -> dict[str, str]:
    """What a run needs to know about AWS: the region. Never credentials: the instance reads S3
    through its IAM instance profile. (The data location travels as the trainer's own
    `dataset.dataset_dir`, which it checks and saves with each checkpoint.)"""
    return {"AWS_REGION": region, "AWS_DEFAULT_REGION": region} if region else {}


def watcher_args(
    signal: str,
    checkpoint_dir: str | None,
    backup_uri: str | None,
    poll_s: float | None = None,
    ranks: int = 0,
    on_rebalance: str = "none",
) -> list[str]:
    """The notice watcher's arguments: the signal for the command, how often to ask IMDS, where
    the checkpoints go (so its `preempted` record says whether they are in S3) and, for a local
    checkpoint folder, where to copy it on a notice (checkpoint_backup_uri). Under torchrun
    (`ranks`: its ranks on this machine) the watcher signals the ranks themselves, not torchrun's
    agent, and reads the run's exit from theirs (see ec2/remote/spot_watch.py). `on_rebalance`
    checkpoint: a rebalance recommendation has the trainer save at once (AwsConfig.on_rebalance)."""
    args = ["--signal", signal]
    if on_rebalance != "none":
        args += ["--on-rebalance", on_rebalance]
    if ranks > 0:
        args += ["--ranks", str(int(ranks))]
    if poll_s is not None:
        args += ["--poll", f"{poll_s:g}"]
    if checkpoint_dir:
        args += ["--checkpoint-dir", checkpoint_dir]
        if backup_uri and not is_s3(checkpoint_dir):
            args += ["--upload-to", backup_uri]
    return args
