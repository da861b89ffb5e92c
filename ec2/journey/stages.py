"""The named stages of one attempt of `fab run`, each callable alone: provision (launch), bootstrap
(sync + setup), restore (a laptop checkpoint back onto the instance), start (the command in tmux,
wrapped in the notice watcher), pull (outputs and checkpoints to the laptop), terminate.

`Plan` is what to run, resolved by the task from the configs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common import aws
from ec2.cloud import instances
from ec2.config import AwsConfig
from ec2.errors import ConnectionLost, ToolkitError
from ec2.journey.decide import Poll, parse_poll, poll_command
from ec2.registry import MachineRecord
from ec2.remote import gpu, runs, trainrun
from ec2.remote.carry import laptop_checkpoint, remote_checkpoint, restore_checkpoint
from ec2.remote.ssh import Machine
from ec2.remote.sync import download_dir, download_outputs, sync_code
from ec2.remote.trainrun import setup_command, train_env

Say = Callable[[str], None]


@dataclass
class Plan:
    command: str  # the remote command line (python -m ml.train ...)
    run: str = "train"
    env: dict[str, str] = field(default_factory=dict)  # besides AWS_REGION (see run_env)
    output_dir: str | None = None  # the trainer's (relative to code/, or absolute, or s3://)
    checkpoint_dir: str | None = None
    signal: str = trainrun.TRAINER_SIGNAL
    poll_s: float = 30.0  # how often the laptop looks at the instance and the run
    imds_poll_s: float = 5.0  # how often the watcher on the instance asks for notices
    on_rebalance: str = "none"  # AwsConfig.on_rebalance: checkpoint on a rebalance recommendation
    download_every_s: float = 600.0  # pull local checkpoints to the laptop this often
    unreachable_s: float = 300.0
    max_recoveries: int = 3
    keep: bool = False
    setup_python: str | None = None  # a ready python instead of the venv (a prepared machine)
    require_gpu: bool = True
    local_root: str = "."
    # The trainer's config and overrides: the command is then built per machine, one process per
    # GPU it has (or `gpus` of them). Without them, `command` runs as it is.
    train_config: str | None = None
    overrides: list[str] = field(default_factory=list)
    gpus: int | None = None
    # The run's S3 prefixes, granted to the instance's role (iam_instance_profile: auto).
    s3: tuple = ()

    def local_checkpoint(self, outputs: Path) -> Path | None:
        """Where downloads put the checkpoint folder on the laptop (None when it lives in S3)."""
        return laptop_checkpoint(outputs, self.output_dir, self.checkpoint_dir)

    def _checkpoint_inside_outputs(self) -> bool:
        return bool(
            self.output_dir
            and self.checkpoint_dir
            and self.checkpoint_dir.startswith(self.output_dir.rstrip("/") + "/")
        )


def watcher_args(plan: Plan, backup_uri: str | None, procs: int = 1) -> list[str]:
    ranks = procs if trainrun.uses_torchrun(procs) else 0
    return trainrun.watcher_args(
        plan.signal,
        plan.checkpoint_dir,
        backup_uri,
        plan.imds_poll_s,
        ranks=ranks,
        on_rebalance=plan.on_rebalance,
    )


def provision(
    cfg: AwsConfig, name: str, exclude: frozenset[tuple[str, str]], out: Say, s3: tuple = ()
) -> tuple[MachineRecord, object]:
    """Launch the cheapest type/zone with capacity, `exclude`d pairs left out; the record and the
    EC2 client of its region. ``s3``: the run's prefixes for the instance's role."""
    from ec2.cloud.launch import launch

    record = launch(cfg, name, exclude=exclude, s3=s3, out=out)
    return record, aws.client("ec2", record.region or cfg.region, cfg.profile)


def bootstrap(m: Machine, plan: Plan, out: Say) -> None:
    stats = sync_code(m, plan.local_root, protect=(plan.output_dir or "", plan.checkpoint_dir or ""))
    out(f"synced code to {m.name} ({stats.files_transferred} file(s))")
    result = m.run(setup_command(m.record.remote_dir, plan.setup_python, plan.require_gpu), check=False)
    if result.code != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise ToolkitError(
            f"setup failed on {m.name} (exit {result.code}): {' | '.join(tail)}; "
            "fix it, then `fab run` again (it resumes from the newest checkpoint)"
        )
    out(f"setup done on {m.name}")


def restore(m: Machine, plan: Plan, outputs: Path, out: Say) -> int | None:
    """Push the laptop's checkpoint folder to the instance; the files sent (None: nothing to send)."""
    if not plan.checkpoint_dir:
        return None
    files = restore_checkpoint(m, plan.local_checkpoint(outputs), plan.checkpoint_dir)
    if files is not None:
        out(f"restored the newest local checkpoint to {m.name}: {files} file(s)")
    return files


def run_env(m: Machine, plan: Plan) -> dict[str, str]:
    """The run's environment on this instance: the plan's, with the region the instance was
    launched in (which may have come from AWS_REGION on the laptop, not from the config)."""
    return {**plan.env, **train_env(m.record.region)}


def start(m: Machine, plan: Plan, backup_uri: str | None, out: Say) -> int | None:
    """Start the run; the GPUs the trainer uses (0: the CPU; None: a plain command)."""
    command, procs, gpus = plan.command, 1, None
    if plan.train_config is not None:
        present = gpu.count_gpus(m)
        procs = gpu.processes_for(present, plan.gpus)
        gpus = procs if present else 0
        command = trainrun.train_command(m.record.remote_dir, plan.train_config, plan.overrides, procs)
    runs.start_run(
        m,
        plan.run,
        command,
        force=True,
        env=run_env(m, plan),
        watcher_args=watcher_args(plan, backup_uri, procs),
        output_dir=plan.output_dir,
        gpus=procs,
    )
    on = f" on {procs} GPUs (torchrun)" if procs > 1 else ""
    out(f"started run {plan.run!r} on {m.name}{on}")
    return gpus


def _download(m: Machine, plan: Plan, outputs: Path) -> None:
    # The run dir records the trainer's output_dir, resolved against code/ on the machine.
    download_outputs(m, plan.run, outputs)
    local = plan.local_checkpoint(outputs)
    if local is not None and plan.output_dir and not plan._checkpoint_inside_outputs():
        remote = remote_checkpoint(m, plan.checkpoint_dir)
        local.mkdir(parents=True, exist_ok=True)
        download_dir(m, remote, local)


def pull(m: Machine, plan: Plan, outputs: Path, what: str, out: Say) -> str | None:
    """Bring outputs (and a checkpoint folder outside them) back while the machine still answers.
    "all" when everything came back, "log" when only the run's log did, None when nothing did."""
    for attempt in range(2):
        try:
            _download(m, plan, outputs)
            return "all"
        except ConnectionLost as e:
            out(f"could not download {what} from {m.name}: {e}")
            return None
        except ToolkitError as e:
            # Most often rsync exit 24: the trainer replaced a checkpoint (its temporary file
            # vanished) mid-copy. Once more fetches the new one; only what changed moves.
            if attempt == 1:
                out(f"could not download {what} from {m.name}: {e}")
    # A command that failed early made no outputs; its log is what matters then.
    try:
        download_dir(m, runs.run_dir(m.record.remote_dir, plan.run), outputs / "run")
    except ToolkitError:
        return None
    return "log"


def poll(m: Machine, run: str) -> Poll | None:
    """One quick look at the run on the machine (decide.poll_command); None when it does not answer."""
    quick = Machine(m.record, attempts=1, control=m.control)
    try:
        result = quick.run(poll_command(m.record.remote_dir, run), timeout=30, retry=False)
    except ToolkitError:
        return None
    return parse_poll(result.stdout)


def instance_state(ec2, instance_id: str) -> str:
    """The instance's state in AWS, or "gone" when AWS no longer lists it."""
    info = instances.describe_instance(ec2, instance_id)
    return "gone" if info is None else info.state


def terminate(ec2, name: str, instance_id: str, out: Say) -> None:
    instances.terminate_instances(ec2, [instance_id], wait=True)
    instances.forget_local(name)
    out(f"terminated {instance_id}")
