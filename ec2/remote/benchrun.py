"""`fab bench` on one machine: run `python -m ml.bench` (the trainer's own step, see ml/bench.py)
over SSH in the environment `fab train` uses (the code folder, the machine's venv python, the
region, and one rank per GPU under torchrun, started by the trainer's own launcher code), then read
back its JSON result and the machine's identity from instance metadata
(`python -m ec2.remote.imds`: type, zone, spot or on-demand; not on EC2 says so).

Command lines are built by pure functions and tested as strings; `measure` only runs them.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass

from ec2.errors import RemoteCommandFailed, ToolkitError
from ec2.remote import gpu, startrun
from ec2.remote.runs import code_dir, run_dir, safe_env, venv_python
from ec2.remote.ssh import Machine, quote_path
from ec2.remote.trainrun import module_command

# Our own result folder on the machine: runs/bench/ (a run name `fab train` may also use; the
# file name keeps it apart from a run's log).
BENCH_RUN = "bench"


def result_path(remote_dir: str) -> str:
    return f"{run_dir(remote_dir, BENCH_RUN)}/result.json"


def bench_command(
    remote_dir: str,
    train_config: str,
    overrides: list[str],
    steps: int,
    warmup: int,
    env: dict[str, str] | None = None,
    procs: int = 1,
) -> str:
    """`cd code && [exports] venv/bin/python [-m torch.distributed.run ...] -m ml.bench --config C
    --steps N --warmup W --out R [overrides]`, in the code folder with the venv's python and
    `procs` ranks, as `fab train` runs the trainer (the launcher is trainrun.module_command)."""
    exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in sorted(safe_env(env).items()))
    out = result_path(remote_dir)
    return (
        f"cd {quote_path(code_dir(remote_dir))} && {exports}"
        f"mkdir -p {quote_path(run_dir(remote_dir, BENCH_RUN))} && rm -f {quote_path(out)} && "
        f"{module_command(remote_dir, 'ml.bench', procs)} --config {shlex.quote(train_config)} "
        f"--steps {int(steps)} --warmup {int(warmup)} --out {quote_path(out)}"
        + "".join(f" {shlex.quote(o)}" for o in overrides)
    )


def ready_command(remote_dir: str) -> str:
    """Exit 0 when `fab setup` has run: the code folder and the venv's python are there."""
    return f"test -d {quote_path(code_dir(remote_dir))} && test -x {quote_path(venv_python(remote_dir))}"


def report_command(remote_dir: str) -> str:
    """The result file, then the identity line from instance metadata (two JSON lines)."""
    return (
        f"cd {quote_path(code_dir(remote_dir))} && tr -d '\\n' < {quote_path(result_path(remote_dir))} && "
        f"echo && {quote_path(venv_python(remote_dir))} -m ec2.remote.imds"
    )


@dataclass(frozen=True)
class Measured:
    result: dict  # ml.bench's JSON
    identity: dict  # ec2.remote.imds.identity_json on the machine
    wall_s: float  # the bench command's wall time, as the laptop saw it (what it billed)
    processes: int = 1  # ranks started (one per GPU, or --gpus of them)
    gpus: int = 0  # GPUs those ranks used: the ranks, or 0 on a machine without GPUs (as `fab run` counts)


def parse_report(text: str) -> tuple[dict, dict]:
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        return json.loads(lines[0]), json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise ToolkitError(
            f"the bench result could not be read back ({text.strip()[:200]!r}); rerun `fab bench`"
        ) from None


def measure(
    m: Machine,
    train_config: str,
    overrides: list[str],
    steps: int,
    warmup: int,
    env: dict[str, str] | None = None,
    echo: bool = True,
    gpus: int | None = None,
) -> Measured:
    """Run the benchmark on ``m`` (streamed when ``echo``; captured, e.g. beside other machines)
    with one rank per GPU there, or ``gpus`` of them (`--gpus`, checked as `fab train` checks it)."""
    rdir = m.record.remote_dir
    if m.run(ready_command(rdir), check=False).code != 0:
        raise ToolkitError(
            f"{m.name} has no synced code or venv under {rdir}; run `fab setup --name {m.name}` "
            "first (it syncs the code and builds the venv fab train and fab bench use)"
        )
    present = startrun.count_gpus(startrun.Ssh(m))
    procs = gpu.processes_for(present, gpus)
    command = bench_command(rdir, train_config, overrides, steps, warmup, env, procs)
    started = time.monotonic()
    if echo:
        code, tail = m.stream(command), ""
    else:
        done = m.run(command, check=False, retry=False)
        code, tail = done.code, " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        m.reach_after_signal_death(code)
    wall = time.monotonic() - started
    if code:
        raise RemoteCommandFailed(code, f"python -m ml.bench on {m.name}", tail)
    result, identity = parse_report(m.run(report_command(m.record.remote_dir)).stdout)
    return Measured(result, identity, wall, procs, procs if present else 0)
