"""The one way a run is started on a machine, whoever starts it: `fab train` (tasks/remote.py),
`fab run` (ec2/journey/engine.py), a cluster's nodes (ec2/remote/nodes.py) and a detached run's
boot on the instance itself (ec2/remote/boot.py).

What to start is a `RunSpec`: the trainer (its config and overrides: one process per GPU, or
`gpus` of them, under torchrun when more than one or across machines) or a plain command. `line`
builds the shell line that starts it (ec2.remote.runs: tmux, the notice watcher, the log, the exit
code, the `gpus` file and, for the trainer, the watcher's `--ranks`); it is built here once, and
only where it runs differs: over SSH (`Ssh`, a `Machine`) or on this machine as the login user
(`Local`, the boot, which runs as root on the instance).
"""

from __future__ import annotations

import getpass
import pwd
import subprocess
from dataclasses import dataclass, field
from typing import Protocol

from ec2.errors import RemoteCommandFailed, RunAlreadyExists
from ec2.remote import gpu, runs
from ec2.remote.ssh import Machine, Result
from ec2.remote.trainrun import Rendezvous, setup_command, train_command


@dataclass(frozen=True)
class RunSpec:
    run: str
    command: str | None = None  # a plain command, run as it is, one process
    train_config: str | None = None  # or the trainer: the command is built per machine
    overrides: tuple[str, ...] = ()
    gpus: int | None = None  # trainer processes per machine (None: one per GPU present)
    # The notice watcher's own arguments (signal, poll, checkpoint folder); `--ranks` (the
    # trainer's processes on the machine) is added per machine.
    watcher_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    output_dir: str | None = None
    watch: bool = True
    force: bool = False

    @property
    def trainer(self) -> bool:
        return self.train_config is not None


class Shell(Protocol):
    """Where a run starts: a shell line run there, its Result (never raising on a non-zero exit)."""

    name: str

    def sh(self, line: str) -> Result: ...


class Ssh:
    """A machine over SSH. Not retried: a dropped connection after the start would have a retry
    refuse the run it started."""

    def __init__(self, machine: Machine):
        self.machine, self.name = machine, machine.name

    def sh(self, line: str) -> Result:
        return self.machine.run(line, check=False, retry=False)


def as_user(user: str, line: str) -> list[str]:
    """argv running a shell line as the login user with their HOME (the boot itself is root), so
    the venv, the run's files and its tmux server belong to the user that `fab ssh` logs in as."""
    if user == getpass.getuser():
        return ["bash", "-c", line]
    home = pwd.getpwnam(user).pw_dir
    return ["runuser", "-u", user, "--", "env", f"HOME={home}", "bash", "-c", line]


class Local:
    """This machine, as `user` (the detached run's boot, on the instance)."""

    def __init__(self, user: str):
        self.user, self.name = user, "this instance"

    def sh(self, line: str) -> Result:
        done = subprocess.run(as_user(self.user, line), capture_output=True, text=True)
        return Result(done.returncode, done.stdout, done.stderr)


def count_gpus(where: Shell) -> int:
    """The GPUs `nvidia-smi -L` lists there (0 without a driver)."""
    return gpu.parse_count(where.sh(gpu.COUNT_COMMAND).stdout)


def processes(spec: RunSpec, present: int) -> int:
    """Trainer processes on a machine with `present` GPUs; a plain command is one."""
    return gpu.processes_for(present, spec.gpus) if spec.trainer else 1


def line(spec: RunSpec, remote_dir: str, procs: int, rendezvous: Rendezvous | None = None) -> str:
    """The shell line that starts the run with `procs` processes (a pure function)."""
    if spec.trainer:
        command = train_command(remote_dir, spec.train_config, list(spec.overrides), procs, rendezvous)
        # The trainer announces its handlers (ml/stopping.py), alone or under torchrun: the watcher
        # holds a notice until then. Sent to a trainer still importing torch (seconds; more on a
        # busy machine), SIGUSR1's default action would kill it: exit 138, read as a failure.
        ranks = ["--ranks", str(int(procs))]
    else:
        command, ranks = spec.command, []
    return runs.start_command(
        remote_dir,
        spec.run,
        command,
        env=spec.env,
        force=spec.force,
        watch=spec.watch,
        watcher_args=[*spec.watcher_args, *ranks],
        output_dir=spec.output_dir,
        gpus=procs if spec.trainer else None,
    )


@dataclass(frozen=True)
class Started:
    procs: int  # processes started (1 for a plain command)
    gpus: int | None  # GPUs the trainer uses (0: the CPU; None: a plain command)
    run_dir: str


def start(
    where: Shell,
    remote_dir: str,
    spec: RunSpec,
    *,
    present: int | None = None,
    rendezvous: Rendezvous | None = None,
) -> Started:
    """Start the run there; `present`: its GPUs when already counted (a cluster counts them all
    first). RunAlreadyExists when a run of that name exists and `force` is off."""
    if present is None:
        present = count_gpus(where) if spec.trainer else 0
    procs = processes(spec, present)
    result = where.sh(line(spec, remote_dir, procs, rendezvous))
    if result.code == runs.EXISTS_CODE:
        raise RunAlreadyExists(
            f"a run named {spec.run!r} already exists on {where.name}; pick another --run name, "
            f"or pass --force to stop it and start again (its files are kept as {spec.run}.prev-*)"
        )
    if result.code != 0:
        raise RemoteCommandFailed(result.code, f"start run {spec.run}", result.stderr)
    gpus = (procs if present else 0) if spec.trainer else None
    return Started(procs, gpus, runs.run_dir(remote_dir, spec.run))


def setup(where: Shell, remote_dir: str, python: str | None, require_gpu: bool) -> Result:
    """The machine's venv over the AMI's PyTorch (scripts/setup_instance.sh), as `fab setup` runs it."""
    return where.sh(setup_command(remote_dir, python, require_gpu))
