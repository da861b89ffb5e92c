"""Runs on the instance: a command in tmux session `spotrun-<run>` that survives a dropped SSH
connection, its output teed to `runs/<run>/log`, its exit code written to `runs/<run>/exit_code`
when it ends, and the pane kept (`remain-on-exit`) so a crash stays visible on `fab attach`.

Layout under the machine's remote_dir (see the contract "On the instance"):
    code/  venv/  runs/<run>/{command,log,exit_code,preempted,gpus}

`gpus` holds how many trainer processes (one per GPU) the run started, for `fab status`. Every
run is started through ec2/remote/startrun.py, which builds its line with `start_command`.

Every remote command line is built here by a pure function and tested as a string.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from common import pidfile
from common.steps import last_step  # noqa: F401 (the boot and the laptop read steps alike)
from ec2 import names
from ec2.errors import ToolkitError
from ec2.remote.ssh import Machine, join_path, quote_path

# Our own "a run of that name exists" status (never 255: that is ssh's connection error).
EXISTS_CODE = 17
# Environment variables that carry credentials: never sent (the instance uses its IAM profile).
_CREDENTIAL_VARS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"}


def check_run_name(run: str) -> str:
    return names.run_name(run, "run name")


def session_name(run: str) -> str:
    return f"spotrun-{check_run_name(run)}"


def code_dir(remote_dir: str) -> str:
    return join_path(remote_dir, "code")


def venv_python(remote_dir: str) -> str:
    return join_path(remote_dir, "venv", "bin", "python")


def run_dir(remote_dir: str, run: str) -> str:
    return join_path(remote_dir, "runs", check_run_name(run))


def watcher_wrap(remote_dir: str, run: str, command: str, watcher_args: list[str] | None = None) -> str:
    """Wrap the command in the spot-notice watcher (ec2.remote.spot_watch, run from the synced code)."""
    return " ".join(
        [
            quote_path(venv_python(remote_dir)),
            "-m ec2.remote.spot_watch --run-dir",
            quote_path(run_dir(remote_dir, run)),
            *map(shlex.quote, watcher_args or []),
            "-- bash -c",
            shlex.quote(command),
        ]
    )


def safe_env(env: dict[str, str] | None) -> dict[str, str]:
    env = dict(env or {})
    leaked = sorted(k for k in env if k in _CREDENTIAL_VARS)
    if leaked:
        raise ToolkitError(
            f"refusing to send {', '.join(leaked)} to the instance; it reads S3 through its "
            "IAM instance profile (set iam_instance_profile in configs/aws.yaml)"
        )
    return env


def pane_script(
    remote_dir: str,
    run: str,
    command: str,
    env: dict[str, str] | None = None,
    watch: bool = True,
    watcher_args: list[str] | None = None,
) -> str:
    """What runs in the tmux pane: the (wrapped) command, teed to the log, then the exit code."""
    rdir = quote_path(run_dir(remote_dir, run))
    exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in sorted(safe_env(env).items()))
    inner = watcher_wrap(remote_dir, run, command, watcher_args) if watch else command
    return (
        f"cd {quote_path(code_dir(remote_dir))} && {exports}"
        f"{{ {inner} ; }} 2>&1 | tee -a {rdir}/log; "
        f"echo ${{PIPESTATUS[0]}} > {rdir}/exit_code.tmp && mv {rdir}/exit_code.tmp {rdir}/exit_code"
    )


def start_command(
    remote_dir: str,
    run: str,
    command: str,
    *,
    env: dict[str, str] | None = None,
    force: bool = False,
    watch: bool = True,
    watcher_args: list[str] | None = None,
    output_dir: str | None = None,
    gpus: int | None = None,
) -> str:
    """The remote shell line that starts a run (or exits EXISTS_CODE when one exists).
    `output_dir` (the trainer's, relative to code/) is recorded for `fab download`, `gpus` (the
    trainer processes) for `fab status`."""
    session = shlex.quote(session_name(run))
    target = shlex.quote(f"={session_name(run)}")
    window = shlex.quote(f"={session_name(run)}:")
    rdir = quote_path(run_dir(remote_dir, run))
    script = pane_script(remote_dir, run, command, env, watch, watcher_args)
    if force:
        # Keep the old run's files beside the new one rather than deleting them.
        guard = (
            f"tmux kill-session -t {target} 2>/dev/null || true; "
            f"if [ -e {rdir} ]; then mv {rdir} {rdir}.prev-$(date +%s); fi; "
        )
    else:
        guard = (
            f"if tmux has-session -t {target} 2>/dev/null || [ -e {rdir} ]; then "
            f"echo 'run exists' >&2; exit {EXISTS_CODE}; fi; "
        )
    return (
        "set -e; "
        + guard
        + f"mkdir -p {rdir} {quote_path(code_dir(remote_dir))}; "
        + f"printf '%s\\n' {shlex.quote(command)} > {rdir}/command; "
        + (f"printf '%s\\n' {shlex.quote(output_dir)} > {rdir}/output_dir; " if output_dir else "")
        + (f"echo {int(gpus)} > {rdir}/gpus; " if gpus else "")
        # Start an idle shell, set remain-on-exit, then respawn with the command: no race with a
        # command that ends at once.
        # A tmux server still exiting (the last session of a run that just ended) makes the new
        # session fail with "server exited unexpectedly"; a moment later a new server starts.
        + f"for try in 1 2 3 4; do tmux new-session -d -s {session} -x 200 -y 50 && break; "
        + 'if [ "$try" = 4 ]; then exit 1; fi; sleep "$try"; done; '
        + f"tmux set-option -w -t {window} remain-on-exit on; "
        + f"tmux respawn-pane -k -t {window} {shlex.quote('bash -c ' + shlex.quote(script))}"
    )


@dataclass(frozen=True)
class RunState:
    state: str  # running | finished | preempted | none | unreachable
    exit_code: int | None = None
    gpus: int | None = None  # trainer processes the run started (recorded by the start line)

    def __str__(self) -> str:
        text = f"finished({self.exit_code})" if self.state == "finished" else self.state
        return f"{text} on {self.gpus} GPUs" if self.gpus and self.gpus > 1 else text


def state_command(remote_dir: str, run: str) -> str:
    rdir = quote_path(run_dir(remote_dir, run))
    target = shlex.quote(f"={session_name(run)}")
    return (
        f"if [ -e {rdir}/preempted ]; then echo preempted; "
        f"elif [ -e {rdir}/exit_code ]; then echo finished $(cat {rdir}/exit_code); "
        f"elif tmux has-session -t {target} 2>/dev/null; then echo running; "
        "else echo none; fi; "
        f"echo gpus $(cat {rdir}/gpus 2>/dev/null)"
    )


def parse_state(text: str) -> RunState:
    lines = text.strip().splitlines()
    words = lines[0].split() if lines else []
    tail = lines[1].split() if len(lines) > 1 else []
    gpus = int(tail[1]) if tail[:1] == ["gpus"] and len(tail) == 2 and tail[1].isdigit() else None
    if words[:1] == ["finished"] and len(words) == 2 and words[1].lstrip("-").isdigit():
        return RunState("finished", int(words[1]), gpus)
    if words in (["preempted"], ["running"], ["none"]):
        return RunState(words[0], gpus=gpus)
    raise ToolkitError(f"unexpected run state answer {text.strip()!r}; check the instance with `fab ssh`")


def run_state(machine: Machine, run: str = "train", timeout: float = 15) -> RunState:
    """The run's state per the contract; `unreachable` rather than an error when SSH fails."""
    quick = Machine(machine.record, attempts=1, control=machine.control)
    try:
        result = quick.run(state_command(machine.record.remote_dir, run), timeout=timeout, retry=False)
    except ToolkitError:
        return RunState("unreachable")
    return parse_state(result.stdout)


def log_command(remote_dir: str, run: str, *, lines: int = 50, follow: bool = True) -> str:
    log = quote_path(run_dir(remote_dir, run)) + "/log"
    if follow:
        return f"tail -n {int(lines)} -F {log}"
    return f"tail -n {int(lines)} {log}"


def attach_command(run: str) -> str:
    return f"tmux attach -t {shlex.quote('=' + session_name(run))}"


def stop_command(run: str) -> str:
    return f"tmux kill-session -t {shlex.quote('=' + session_name(run))}"


def graceful_stop_command(remote_dir: str, run: str) -> str:
    """TERM to the run's notice watcher, which passes it on: the trainer finishes its step, saves
    (to S3 when checkpoint_dir is there) and exits 75. Exit 1 when no watched run is alive (a
    watcher that has ended leaves its file, and its pid may be another process's by now)."""
    return pidfile.signal_command(quote_path(run_dir(remote_dir, run)) + "/watcher.pid", "TERM")


def in_dir_command(remote_dir: str, cmd: str, cwd: str | None = None) -> str:
    """`cmd` run in the code folder (where `fab sync` puts the code), or in `cwd` (relative: inside
    the code folder). A missing code folder (nothing synced yet) falls back to the home folder with
    a note; a missing `cwd` is an error (exit 1) before the command runs."""
    code = quote_path(code_dir(remote_dir))
    if cwd is None:
        note = f"note: {code_dir(remote_dir)} does not exist yet (fab sync); running in the home folder"
        enter = f"cd {code} 2>/dev/null || echo {shlex.quote(note)} >&2"
    else:
        target = cwd if cwd.startswith(("/", "~")) else f"{code_dir(remote_dir)}/{cwd}"
        enter = f"cd {quote_path(target)} || exit 1"
    return f"{enter}\n{cmd}"
