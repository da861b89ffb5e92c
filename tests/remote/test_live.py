"""Through a real sshd on loopback, with the real ssh, rsync and tmux."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from ec2 import paths, registry
from ec2.errors import ConnectionLost, InstanceGone, RemoteCommandFailed, RunAlreadyExists
from ec2.remote import runs, startrun
from ec2.remote.ssh import Machine
from ec2.remote.sync import (
    PARTIAL_DIR,
    download_argv,
    download_outputs,
    rsync_with_retries,
    sync_code,
    upload_dir,
)

REPO = Path(__file__).resolve().parents[2]


def start_plain(machine: Machine, run: str, command: str, **spec) -> startrun.Started:
    """A plain command as a run, started the one way (ec2.remote.startrun)."""
    return startrun.start(
        startrun.Ssh(machine), machine.record.remote_dir, startrun.RunSpec(run, command, **spec)
    )


def wait_state(machine: Machine, run: str, want: str, deadline_s: float = 15) -> runs.RunState:
    end = time.monotonic() + deadline_s
    while True:
        state = runs.run_state(machine, run)
        if state.state == want or time.monotonic() > end:
            return state
        time.sleep(0.2)


@pytest.fixture
def machine(sshd):
    return Machine(sshd.record(), attempts=2, backoff_s=0.1)


def test_commands_run_and_reuse_one_connection(machine):
    assert machine.run("echo hello").stdout == "hello\n"
    # The ControlMaster socket exists after the first call and serves the next ones.
    assert len(list(paths.control_dir().iterdir())) == 1
    assert " ssh-ed25519 " in machine.record.known_hosts.read_text()
    with pytest.raises(RemoteCommandFailed, match="exited 3") as err:
        machine.run("echo oops >&2; exit 3")
    assert err.value.code == 3 and "oops" in str(err.value)
    assert machine.run("exit 4", check=False).code == 4


def test_changed_host_key_is_refused_not_accepted(machine, sshd, tmp_path):
    machine.run("true")
    known = machine.record.known_hosts
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = (tmp_path / "other.pub").read_text().split()[:2]
    known.write_text(known.read_text().split(" ")[0] + " " + " ".join(other) + "\n")
    fresh = Machine(machine.record, attempts=1, control=False)
    with pytest.raises(ConnectionLost, match="HOST IDENTIFICATION|Host key verification failed"):
        fresh.run("true")


def test_run_in_tmux_reports_exit_code_and_refuses_a_second_run(machine):
    # The command waits for the test's go, so "running" is asserted while it surely runs (a
    # one-second sleep was over before a loaded machine's next ssh came back).
    go = f"{machine.record.remote_dir}/go-job"
    command = f"echo step 1; while [ ! -e {go} ]; do sleep 0.05; done; echo step 2; exit 3"
    start_plain(machine, "job", command, watch=False)
    assert str(runs.run_state(machine, "job")) == "running"
    machine.run(f"touch {go}")
    state = wait_state(machine, "job", "finished")
    assert str(state) == "finished(3)"
    rdir = runs.run_dir(machine.record.remote_dir, "job")
    assert machine.run(f"cat {rdir}/log").stdout == "step 1\nstep 2\n"
    assert machine.run(f"cat {rdir}/command").stdout.startswith("echo step 1")
    # The pane stays (remain-on-exit) so a crash is visible on attach.
    assert machine.run("tmux list-panes -t =spotrun-job: -F '#{pane_dead}'").stdout.strip() == "1"
    with pytest.raises(RunAlreadyExists, match="--force"):
        start_plain(machine, "job", "echo again", watch=False)
    start_plain(machine, "job", "echo again", force=True, watch=False)
    assert str(wait_state(machine, "job", "finished")) == "finished(0)"
    assert machine.run(f"cat {rdir}/log").stdout == "again\n"
    assert machine.run(f"ls -d {rdir}.prev-*").code == 0


def test_preempted_file_wins_and_no_run_is_none(machine):
    assert str(runs.run_state(machine, "nothing")) == "none"
    start_plain(machine, "p", "sleep 30", watch=False)
    rdir = runs.run_dir(machine.record.remote_dir, "p")
    machine.run(f"echo '{{}}' > {rdir}/preempted")
    assert str(runs.run_state(machine, "p")) == "preempted"


def _tree(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("print('a')\n")
    (root / "pkg" / "b.py").write_text("print('b')\n")
    (root / ".gitignore").write_text("*.pt\nscratch/\n")
    (root / ".spotrunignore").write_text("notes.txt\n")
    for never in (".git", ".venv", "data", "outputs", "scratch"):
        (root / never).mkdir()
        (root / never / "x").write_text("never sent\n")
    (root / "model.pt").write_bytes(b"0" * 1000)
    (root / "notes.txt").write_text("private\n")
    # Credentials are never sent, even with no ignore file naming them.
    for secret in (".env", ".env.local", "pkg/.env", ".aws/credentials", ".ssh/id_ed25519", "keys/k.pem"):
        (root / secret).parent.mkdir(parents=True, exist_ok=True)
        (root / secret).write_text("secret\n")
    # Only the top-level data/ is data: a package named data is code.
    (root / "pkg" / "data").mkdir()
    (root / "pkg" / "data" / "c.py").write_text("print('c')\n")
    return root


def test_sync_is_incremental_honours_ignores_and_deletes_in_code_dir(machine, tmp_path):
    tree = _tree(tmp_path / "proj")
    first = sync_code(machine, tree)
    assert first.files_transferred == 5  # a.py b.py data/c.py .gitignore .spotrunignore
    code = runs.code_dir(machine.record.remote_dir)
    listed = machine.run(f"cd {code} && find . -type f | sort").stdout.split()
    assert listed == ["./.gitignore", "./.spotrunignore", "./pkg/a.py", "./pkg/b.py", "./pkg/data/c.py"]
    again = sync_code(machine, tree)
    assert again.files_transferred == 0 and again.itemized == []
    (tree / "pkg" / "b.py").unlink()
    (tree / "pkg" / "a.py").write_text("print('changed')\n")
    third = sync_code(machine, tree)
    assert third.files_transferred == 1
    assert machine.run(f"cd {code} && ls pkg").stdout.split() == ["a.py", "data"]
    # --delete stays inside code/: a run dir beside it is untouched.
    runs_dir = runs.run_dir(machine.record.remote_dir, "keep")
    machine.run(f"mkdir -p {runs_dir} && touch {runs_dir}/log")
    sync_code(machine, tree)
    assert machine.run(f"test -f {runs_dir}/log", check=False).code == 0


def test_download_brings_outputs_and_only_what_is_new(machine, tmp_path):
    remote = machine.record.remote_dir
    start_plain(
        machine,
        "train",
        "mkdir -p out/checkpoint && echo w > out/checkpoint/last.pt "
        "&& echo 'step,loss' > out/metrics.csv && echo done",
        watch=False,
        output_dir="out",
    )
    assert str(wait_state(machine, "train", "finished")) == "finished(0)"
    dest = tmp_path / "outputs" / "test"
    stats = download_outputs(machine, "train", dest)
    assert (dest / "checkpoint" / "last.pt").read_text() == "w\n"
    assert (dest / "metrics.csv").exists()
    assert (dest / "run" / "log").read_text() == "done\n"
    assert (dest / "run" / "exit_code").read_text() == "0\n"
    assert stats["outputs"].files_transferred == 2
    (dest / "mine.txt").write_text("local notes")
    machine.run(f"echo more >> {remote}/code/out/metrics.csv")
    again = download_outputs(machine, "train", dest)
    assert again["outputs"].files_transferred == 1 and again["run"].files_transferred == 0
    assert (dest / "mine.txt").exists()


def test_closed_port_is_retried_then_reported(sshd, monkeypatch):
    record = sshd.record(name="gone")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    m = Machine(dataclasses.replace(record, port=closed), attempts=3, backoff_s=0.05)
    t0 = time.monotonic()
    with pytest.raises(ConnectionLost, match="after 3 attempt.*fab status"):
        m.run("true")
    assert time.monotonic() - t0 >= 0.15  # 0.05 + 0.1 of back-off
    with pytest.raises(ConnectionLost, match="sync"):
        sync_code(m, REPO / "tests" / "remote")
    assert str(runs.run_state(m, "train")) == "unreachable"


def test_a_command_killed_as_its_machine_goes_is_the_machine_gone_not_a_failed_command(sshd):
    """A machine shutting down kills its processes; a script whose child is killed exits 143, and
    sshd may pass that on before the connection drops: the task reaches the machine once more,
    and a machine that has gone ends as InstanceGone (AWS asked, as after a dropped connection),
    not as a failed command. Here the command stops the sshd listener, then its child dies of
    SIGTERM. (No shared connection: on a machine that goes it goes too; here it would outlive the
    listener.)"""
    asked = []

    def gone() -> None:
        asked.append(True)
        raise InstanceGone("exp1 (i-0123) is shutting-down: AWS ended it")

    killed_child = "sh -c 'kill -TERM $$'; exit $?"
    m = Machine(sshd.record(), attempts=2, backoff_s=0.1, control=False, still_there=gone)
    with pytest.raises(RemoteCommandFailed, match="exited 143"):
        m.run(killed_child)  # the machine answers: the command's own failure
    assert m.stream(killed_child) == 143
    assert asked == []
    with pytest.raises(InstanceGone, match="AWS ended it"):
        m.run(f"kill -TERM {sshd._proc.pid}; {killed_child}")
    sshd.restart()
    with pytest.raises(InstanceGone, match="AWS ended it"):
        m.stream(f"kill -TERM {sshd._proc.pid}; {killed_child}")
    assert len(asked) == 2


def test_a_streamed_command_whose_machine_goes_ends_as_gone_when_aws_says_so_after_the_drop(sshd):
    """`fab setup` and `fab logs` stream: the connection drops first and AWS reports the instance
    ended a moment later (still running at the first ask). The reach after the drop asks again at
    its last try, so the task ends as InstanceGone, not as "setup failed (exit 255)"."""
    asked = []

    def aws_catches_up() -> None:
        asked.append(True)
        if len(asked) > 1:
            raise InstanceGone("exp1 (i-0123) is terminated: AWS ended it")

    m = Machine(sshd.record(), attempts=3, backoff_s=0.1, control=False, still_there=aws_catches_up)
    with pytest.raises(InstanceGone, match="AWS ended it"):
        m.stream(f"kill -TERM {sshd._proc.pid}; kill -TERM $PPID")  # the listener, then this connection
    assert len(asked) == 2


def test_sshd_stopped_mid_download_is_reported(machine, sshd, tmp_path):
    remote = machine.record.remote_dir
    machine.run(f"mkdir -p {remote}/code/big && head -c 30000000 /dev/urandom > {remote}/code/big/blob")
    dest = tmp_path / "dl"
    stopper = threading.Timer(0.5, sshd.stop)
    stopper.start()
    slow = Machine(machine.record, attempts=2, backoff_s=0.1)
    (dest / PARTIAL_DIR).mkdir(parents=True)  # download_argv's temp dir (download_dir makes it)
    argv = download_argv(slow, f"{remote}/code/big", dest)
    argv.insert(1, "--bwlimit=2000")  # keeps the transfer going long enough to be cut
    with pytest.raises(ConnectionLost, match="download"):
        rsync_with_retries(slow, argv, "download")
    stopper.join()
    assert not (dest / "blob").exists()


def test_setup_script_with_stand_in_env_is_idempotent(machine):
    sync_code(machine, REPO)
    remote = machine.record.remote_dir
    env = f"SPOTRUN_SETUP_PYTHON={REPO / '.venv/bin/python'} SPOTRUN_REQUIRE_GPU=0"
    first = machine.run(f"{env} bash {remote}/code/scripts/setup_instance.sh {remote}")
    assert "torch " in first.stdout and "set up:" in first.stdout
    marker = machine.run(f"stat -c %Y {remote}/venv/.spotrun-setup").stdout
    second = machine.run(f"{env} bash {remote}/code/scripts/setup_instance.sh {remote}")
    assert "already set up" in second.stdout
    assert machine.run(f"stat -c %Y {remote}/venv/.spotrun-setup").stdout == marker
    out = machine.run(
        f"cd {remote}/code && {remote}/venv/bin/python -c 'import h5py, ec2.remote.runs; print(1)'"
    )
    assert out.stdout == "1\n"
    failed = machine.run(
        f"SPOTRUN_SETUP_PYTHON={REPO / '.venv/bin/python'} bash "
        f"{remote}/code/scripts/setup_instance.sh {remote}",
        check=False,
    )
    # Without a GPU the CUDA check must fail, naming the problem.
    assert failed.code != 0 and ("nvidia-smi" in failed.stderr or "cuda" in failed.stderr.lower())


def test_fab_cli_unknown_name_is_one_line(sshd, tmp_path):
    env = {**os.environ, "CI": os.environ.get("CI", "")}
    proc = subprocess.run(
        [str(REPO / ".venv/bin/fab"), "-r", str(REPO), "run-cmd", "--name", "nope", "--cmd", "true"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: no machine named 'nope'")
    assert "Traceback" not in proc.stderr


def test_fab_run_cmd_returns_the_remote_exit_code(sshd, tmp_path):
    sshd.record(name="box")
    fab = [str(REPO / ".venv/bin/fab"), "-r", str(REPO)]
    ok = subprocess.run(
        [*fab, "run-cmd", "--name", "box", "--cmd", "echo hi"], capture_output=True, text=True, cwd=tmp_path
    )
    assert ok.returncode == 0 and ok.stdout == "hi\n"
    bad = subprocess.run(
        [*fab, "run-cmd", "--name", "box", "--cmd", "exit 7"], capture_output=True, text=True, cwd=tmp_path
    )
    assert bad.returncode == 7


def test_fab_run_cmd_on_an_unreachable_machine_is_one_line(sshd, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    registry.put(dataclasses.replace(sshd.record(name="gone"), port=closed))
    env = {**os.environ, "SPOTRUN_SSH_ATTEMPTS": "2", "SPOTRUN_SSH_BACKOFF_S": "0.05"}
    for task in (["run-cmd", "--cmd", "true"], ["ssh"], ["attach"]):
        proc = subprocess.run(
            [str(REPO / ".venv/bin/fab"), "-r", str(REPO), task[0], "--name", "gone", *task[1:]],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.startswith("error: cannot reach gone") and proc.stderr.count("\n") == 1
        assert "after 2 attempt(s)" in proc.stderr and "fab status" in proc.stderr


def test_upload_dir_puts_a_checkpoint_where_the_trainer_looks(machine, tmp_path):
    ckpt = tmp_path / "outputs" / "box" / "checkpoint"
    ckpt.mkdir(parents=True)
    (ckpt / "last.pt").write_bytes(b"weights")
    stats = upload_dir(machine, ckpt, "trained_models/run/checkpoint")
    assert stats.files_transferred == 1 and stats.bytes_transferred == 7
    code = runs.code_dir(machine.record.remote_dir)
    assert machine.run(f"cat {code}/trained_models/run/checkpoint/last.pt").stdout == "weights"
    assert upload_dir(machine, ckpt, "trained_models/run/checkpoint").files_transferred == 0
