"""The named stages of one attempt of `fab run`, each callable alone: provision (launch), bootstrap
(sync + setup), restore (a laptop checkpoint back onto the instance), start / start_nodes (the run
in tmux, wrapped in the notice watcher, through ec2.remote.startrun), pull (outputs and checkpoints
to the laptop), terminate. `fab train` uses reach_s3 (the instance role to the run's S3 prefixes)
and start / start_nodes on machines it did not launch here.

`Plan` is what to run (ec2/journey/plan.py, re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from common import aws
from common.checks import MULTI_NODE, require_s3_checkpoints
from ec2.cloud import instances
from ec2.config import AwsConfig
from ec2.errors import ConnectionLost, ToolkitError
from ec2.journey.decide import Poll, parse_poll, poll_command
from ec2.journey.plan import Plan, machine_region, watcher_args
from ec2.registry import MachineRecord
from ec2.remote import nodes, runs, startrun
from ec2.remote.carry import remote_checkpoint, restore_checkpoint
from ec2.remote.ssh import Machine
from ec2.remote.sync import download_dir, download_outputs, sync_code
from ec2.remote.trainrun import train_env

__all__ = ["Plan", "watcher_args"]  # where callers have found them

Say = Callable[[str], None]


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
    result = startrun.setup(startrun.Ssh(m), m.record.remote_dir, plan.setup_python, plan.require_gpu)
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


def run_env(m: Machine, plan: Plan, cfg: AwsConfig | None = None) -> dict[str, str]:
    """The run's environment on this instance: the plan's, with the region the instance was
    launched in (which may have come from AWS_REGION on the laptop, not from the config); an
    adopted machine's from the config or the environment."""
    region = machine_region(m.record, cfg) if cfg is not None else m.record.region
    return {**plan.env, **train_env(region)}


def start(
    m: Machine, plan: Plan, cfg: AwsConfig, *, force: bool = True, watch: bool = True
) -> startrun.Started:
    """Start the run on one machine (ec2.remote.startrun): the trainer one process per GPU (or
    --gpus), or the plain command; a local checkpoint folder is copied to checkpoint_backup_uri on
    a notice."""
    spec = plan.spec(run_env(m, plan, cfg), cfg.checkpoint_backup_uri, force=force, watch=watch)
    return startrun.start(startrun.Ssh(m), m.record.remote_dir, spec)


def members(plan: Plan, name: str, count: int) -> list[Machine]:
    """A cluster's members NAME-0.. from the registry, once its checkpoints are known to be in S3
    (the first refusal: before the registry is asked)."""
    require_s3_checkpoints(plan.checkpoint_dir, MULTI_NODE)
    return [Machine(r) for r in nodes.members(name, count)]


def start_nodes(
    cfg: AwsConfig, machines: list[Machine], plan: Plan, *, rendezvous_id: str, port: int, force: bool = True
) -> startrun.Started:
    """torchrun on every node of a cluster (ec2.remote.nodes), checkpoints in S3 (rank 0 writes)."""
    require_s3_checkpoints(plan.checkpoint_dir, MULTI_NODE)
    spec = plan.spec(run_env(machines[0], plan, cfg), force=force)
    return nodes.start_training(machines, spec, rendezvous_id=rendezvous_id, port=port)


def reach_s3(cfg: AwsConfig, record: MachineRecord, plan: Plan, out: Say = print) -> None:
    """Widen a launched instance's spotrun role to the run's S3 prefixes before the run needs
    them (`fab train` on a machine `fab launch` made; `fab run` grants them at launch)."""
    region = machine_region(record, cfg)
    if not record.instance_id or not region or not plan.s3:
        return  # an adopted machine, or nothing in S3
    from ec2.cloud import account, iam

    owner = account.caller_arn(region, cfg.profile)
    iam.widen_for_instance(
        aws.client("ec2", region, cfg.profile),
        aws.client("iam", region, cfg.profile),
        record.instance_id,
        list(plan.s3),
        owner,
        out,
    )


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
