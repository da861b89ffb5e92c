"""Tasks that work on a registered machine over SSH: setup, sync, train, logs, attach, ssh,
run-cmd, download, gpu, and adopt/forget for machines spotrun did not launch.

Every task takes `--name` (default: `name` in configs/aws.yaml) and finds the machine in the
local registry. Thin: parse, call ec2/, print.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from invoke import task
from invoke.exceptions import Exit

from common import guard, outputs
from common.errors import ToolkitError
from ec2 import paths, registry
from ec2.cloud import instances
from ec2.journey import stages
from ec2.journey.plan import plan_for
from ec2.remote import gpu as gpu_summary
from ec2.remote import nodes as cluster_nodes
from ec2.remote import runs
from ec2.remote.carry import laptop_checkpoint, restore_checkpoint
from ec2.remote.ssh import Machine, close_master
from ec2.remote.sync import download_outputs, refuse_foreign_dest, sync_code, sync_to_volume
from ec2.remote.trainrun import RDZV_PORT, setup_command
from ml.config import load_train_config
from tasks.edge import aws_config, edge, machine_name

DEFAULT_TRAIN_CONFIG = "configs/rnn_args.yaml"


def _machine_of(cfg, name: str) -> Machine:
    record = registry.get(name)
    # A dropped connection to a launched instance first asks AWS whether it still runs.
    return Machine(record, still_there=instances.gone_check(record, cfg.profile))


def _machine(name: str | None, config: str | None, set_: list[str] | None) -> Machine:
    cfg = aws_config(config, set_)
    return _machine_of(cfg, machine_name(name, cfg))


def run_overrides(args: str, data_uri: str | None) -> list[str]:
    """The trainer's overrides: --args, and --data-uri as dataset.dataset_dir."""
    overrides = shlex.split(args or "")
    if data_uri:
        overrides.append(f"dataset.dataset_dir={data_uri}")
    return overrides


def _say(line: str) -> None:
    print(line, flush=True)


def _reached(m: Machine) -> Machine:
    """One quiet round trip before a streamed or interactive command (it also opens the shared
    connection): an unreachable machine then ends as one `error:` line after the retries, instead
    of ssh's own messages and a bare exit 255."""
    m.run("true")
    return m


def gpus_option(gpus) -> int | None:
    if gpus is None:
        return None
    try:
        return int(gpus)
    except ValueError:
        raise ToolkitError(f"--gpus {gpus!r} is not a number; give a GPU count such as --gpus 2") from None


@task(iterable=["set_"])
@edge
def adopt(
    c,
    name,
    host,
    port=22,
    user="ubuntu",
    key=None,
    remote_dir="~/spotrun",
    force=False,
    config=None,
    set_=None,
):
    """Register a machine spotrun did not launch (a lab box, an on-demand instance) for every SSH task."""
    cfg = aws_config(config, set_)
    key_path = Path(key).expanduser() if key else paths.key_file(cfg.key_name)
    if not key_path.is_file():
        raise ToolkitError(f"key file {key_path} not found; pass --key PATH to the private key for {host}")
    old = registry.load_all().get(name)
    # A launched instance's record is launch's, not adopt's: replacing it (and its SSH entry)
    # would leave a billing instance that no SSH task reaches by its name.
    guard.unless_forced(
        force,
        target=f"adopting {name!r}",
        lost=[f"the record and SSH entry of launched instance {old.instance_id} ({old.host})"]
        if old and not old.adopted
        else [],
        verb="replace",
        instead=f"adopt under another name (`fab status` shows {name}'s instance)",
    )
    record = registry.MachineRecord(
        name=name,
        host=host,
        port=int(port),
        user=user,
        key_path=str(key_path.resolve()),
        remote_dir=remote_dir,
        region=cfg.region,
    )
    registry.put(record)
    from ec2.remote import sshconfig

    sshconfig.write_entry(record)
    if old and old.adopted and (old.user, old.host, old.port) != (user, host, int(port)):
        print(f"{name} was {old.user}@{old.host}:{old.port}; replaced")
    print(f"adopted {name}: {user}@{host}:{port} (try `fab run-cmd --name {name} --cmd hostname`)")


@task(iterable=["set_"])
@edge
def forget(c, name=None, config=None, set_=None):
    """Drop a machine from the registry and SSH config without terminating anything."""
    name = machine_name(name, aws_config(config, set_))
    record = registry.get(name)
    from ec2.remote import sshconfig

    sshconfig.remove_entry(name)
    registry.remove(name)
    record.known_hosts.unlink(missing_ok=True)
    close_master(record)
    print(f"forgot {name} (the machine itself is untouched)")


@task(iterable=["set_"])
@edge
def setup(c, name=None, python=None, no_gpu=False, nodes=1, config=None, set_=None):
    """Bootstrap the machine (sync code, venv over the AMI's PyTorch, CUDA check); --nodes N: all at once."""
    if int(nodes) > 1:
        name = machine_name(name, aws_config(config, set_))
        members = [Machine(r) for r in cluster_nodes.members(name, int(nodes))]
        cluster_nodes.set_up(members, python, require_gpu=not no_gpu, out=_say)
        return
    m = _machine(name, config, set_)
    sync_code(m, ".")
    code = m.stream(setup_command(m.record.remote_dir, python, require_gpu=not no_gpu))
    if code:
        raise ToolkitError(
            f"setup failed on {m.name} (exit {code}); see the lines above, fix, and rerun `fab setup`"
        )


@task(iterable=["set_"])
@edge
def sync(
    c,
    name=None,
    train_config=DEFAULT_TRAIN_CONFIG,
    args="",
    to_volume=False,
    path=None,
    config=None,
    set_=None,
):
    """Push the code (incremental, honours ignore files); a fresh machine also gets the saved checkpoint.
    --to-volume: to the workspace volume instead (the project, or --path FOLDER), kept across instances."""
    m = _machine(name, config, set_)
    if to_volume:
        dest, stats = sync_to_volume(m, aws_config(config, set_).volume_mount, path)
        moved = stats.files_transferred
        print(f"synced to {m.name}:{dest} (the volume; nothing deleted there): {moved} file(s)")
        return
    if path:
        raise ToolkitError("--path goes with --to-volume (the code folder always gets the whole project)")
    trainer = None
    if Path(train_config).is_file():
        trainer = load_train_config(train_config, shlex.split(args or ""))
    protect = (trainer.output_dir, trainer.checkpoint_dir) if trainer else ()
    stats = sync_code(m, ".", echo=True, protect=protect)
    print(f"synced to {m.name}: {stats.files_transferred} file(s), {stats.bytes_sent} bytes sent")
    # A relaunched machine gets the checkpoint `fab download` kept on the laptop (local
    # checkpoint_dir only), so `fab train` resumes from it.
    if trainer:
        local = laptop_checkpoint(paths.outputs_dir(m.name), trainer.output_dir, trainer.checkpoint_dir)
        files = restore_checkpoint(m, local, trainer.checkpoint_dir)
        if files is not None:
            print(
                f"restored {local}/ to {m.name}:{trainer.checkpoint_dir} ({files} file(s)); "
                "`fab train` resumes from it"
            )


@task(iterable=["set_"])
@edge
def train(
    c,
    name=None,
    train_config=DEFAULT_TRAIN_CONFIG,
    args="",
    cmd=None,
    run="train",
    force=False,
    data_uri=None,
    no_watch=False,
    gpus=None,
    nodes=1,
    rdzv_port=RDZV_PORT,
    config=None,
    set_=None,
):
    """Start training (or --cmd) in tmux, one process per GPU (--gpus N); output teed to runs/RUN/log."""
    if cmd and data_uri:
        raise ToolkitError(
            "--data-uri sets the trainer's dataset.dataset_dir; a --cmd command takes its data "
            "location in its own arguments"
        )
    if cmd and int(nodes) > 1:
        raise ToolkitError("--cmd runs on one machine; leave out --nodes (or --cmd)")
    cfg = aws_config(config, set_)  # each config read once, here (the train config by plan_for)
    name = machine_name(name, cfg)
    # The Plan `fab run` builds: what runs, where its checkpoints and outputs go, its S3 prefixes.
    plan = plan_for(
        cfg, train_config, run_overrides(args, data_uri), command=cmd, run=run, gpus=gpus_option(gpus)
    )
    if int(nodes) > 1:
        machines = stages.members(plan, name, int(nodes))
        # The members share one role (ec2/cloud/cluster.py): widening it for node 0 covers them all.
        stages.reach_s3(cfg, machines[0].record, plan)
        started = stages.start_nodes(
            cfg, machines, plan, rendezvous_id=f"{name}-{run}", port=int(rdzv_port), force=force
        )
        host = cluster_nodes.rendezvous_host(machines[0].record)
        print(
            f"started run {run!r} on {nodes} nodes x {started.procs} process(es) "
            f"({', '.join(m.name for m in machines)}; rendezvous {host}:{rdzv_port}); "
            f"follow with `fab logs --name {name} --node K`"
        )
        return
    m = _machine_of(cfg, name)
    stages.reach_s3(cfg, m.record, plan)
    started = stages.start(m, plan, cfg, force=force, watch=not no_watch)
    on = f" on {started.procs} GPUs (torchrun)" if started.procs > 1 else ""
    print(
        f"started run {run!r} on {m.name}{on} (log: {started.run_dir}/log); "
        f"follow with `fab logs --name {m.name}`"
    )


@task(iterable=["set_"])
@edge
def logs(c, name=None, run="train", lines=50, no_follow=False, node=None, config=None, set_=None):
    """Follow a run's log (Ctrl-C stops following, not the run); --no-follow prints the tail; --node K."""
    if node is not None:
        name = cluster_nodes.member_name(machine_name(name, aws_config(config, set_)), int(node))
    m = _machine(name, config, set_)
    state = runs.run_state(m, run)
    if state.state == "unreachable":
        raise m.lost("logs")
    if state.state == "none" and not no_follow:
        # tail -F would wait forever for a log that never comes.
        raise ToolkitError(f"no run named {run!r} on {m.name}; start one with `fab train --name {m.name}`")
    try:
        code = m.stream(runs.log_command(m.record.remote_dir, run, lines=int(lines), follow=not no_follow))
    except KeyboardInterrupt:
        return  # only the tail stops; the run goes on in tmux
    if code:
        raise Exit(code=code)


@task(iterable=["set_"])
@edge
def attach(c, name=None, run="train", config=None, set_=None):
    """Attach to the run's tmux session (detach with Ctrl-b d; the run goes on)."""
    m = _reached(_machine(name, config, set_))
    m.exec_interactive(runs.attach_command(run))


@task(iterable=["set_"])
@edge
def ssh(c, name=None, config=None, set_=None):
    """Open an interactive shell on the machine."""
    _reached(_machine(name, config, set_)).exec_interactive()


@task(iterable=["set_"])
@edge
def run_cmd(c, cmd, name=None, cwd=None, config=None, set_=None):
    """Run any command on the machine, in the code folder (--cwd elsewhere); exits with its exit code."""
    m = _reached(_machine(name, config, set_))
    code = m.stream(runs.in_dir_command(m.record.remote_dir, cmd, cwd))
    if code:
        raise Exit(code=code)


@task(iterable=["set_"])
@edge
def download(c, name=None, run="train", dest=None, output_dir=None, force=False, config=None, set_=None):
    """Pull the run's checkpoints, logs, metrics and plots to outputs/NAME/ (only what is new)."""
    m = _machine(name, config, set_)
    if dest is not None:
        dest_path = outputs.folder(dest, "--dest")
        refuse_foreign_dest(dest_path, force)
    else:
        dest_path = outputs.folder(paths.outputs_dir(m.name), "the outputs folder")
    stats = download_outputs(m, run, dest_path, output_dir=output_dir, echo=True)
    moved = sum(s.files_transferred for s in stats.values())
    print(f"downloaded {moved} new file(s) to {dest_path}/", file=sys.stderr)


@task(iterable=["set_"])
@edge
def gpu(c, name=None, config=None, set_=None):
    """One-screen GPU summary: utilisation, memory, temperature, power, processes."""
    m = _machine(name, config, set_)
    result = m.run(gpu_summary.GPU_COMMAND, check=False)
    print(gpu_summary.summary(*gpu_summary.parse(result.stdout)))
