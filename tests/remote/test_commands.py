"""Command builders as strings: what actually goes to ssh, rsync and tmux."""

from __future__ import annotations

import shlex

import pytest

from ec2 import paths
from ec2.errors import ToolkitError
from ec2.registry import MachineRecord
from ec2.remote import gpu, runs
from ec2.remote.ssh import Machine, backoff_delays, quote_path, rsync_rsh, ssh_argv, ssh_options
from ec2.remote.sync import download_argv, parse_stats, rsync_target, sync_argv
from ec2.remote.trainrun import train_command, train_env


@pytest.fixture
def record(tmp_path, monkeypatch):
    monkeypatch.setenv("SPOTRUN_HOME", str(tmp_path / "s"))
    return MachineRecord(name="exp1", host="203.0.113.7", port=2222, user="ubuntu", key_path="/k/spotrun.pem")


def _opt(opts: list[str]) -> dict[str, str]:
    return dict(o.split("=", 1) for o in opts if "=" in o)


def test_ssh_options_check_host_keys_per_instance_and_reuse_connections(record):
    opts = ssh_options(record)
    o = _opt(opts)
    assert opts[:4] == ["-i", "/k/spotrun.pem", "-p", "2222"]
    assert o["User"] == "ubuntu" and o["IdentitiesOnly"] == "yes"
    assert o["StrictHostKeyChecking"] == "accept-new"
    assert o["UserKnownHostsFile"] == str(paths.known_hosts_file("exp1"))
    assert o["ControlMaster"] == "auto" and o["ControlPersist"]
    assert o["ControlPath"] == f"{paths.control_dir()}/%C"
    assert o["BatchMode"] == "yes"
    assert int(o["ConnectTimeout"]) > 0 and int(o["ServerAliveInterval"]) > 0
    assert "StrictHostKeyChecking=no" not in " ".join(opts)


def test_interactive_ssh_has_a_tty_and_no_batch_mode(record):
    argv = ssh_argv(record, "tmux attach", tty=True, batch=False)
    assert argv[0] == "ssh" and argv[-2:] == ["203.0.113.7", "tmux attach"] and "-t" in argv
    assert "BatchMode=yes" not in argv
    assert "StrictHostKeyChecking=accept-new" in argv


def test_without_reuse_no_control_socket(record):
    o = ssh_options(record, control=False)
    assert "ControlPath=none" in o and "ControlMaster=no" in o


def test_rsync_uses_the_same_ssh_options(record):
    assert shlex.split(rsync_rsh(record)) == ["ssh", *ssh_options(record)]


def test_sync_argv_honours_ignores_and_deletes_only_in_code_dir(record, tmp_path):
    argv = sync_argv(Machine(record), tmp_path)
    assert argv[0] == "rsync" and "-az" in argv and "--delete" in argv
    for never in (".git/", ".venv/", "/data/", "/outputs/", ".env", ".aws/", ".ssh/", "*.pem"):
        assert f"--exclude={never}" in argv
    assert "--filter=:- .gitignore" in argv and "--filter=:- .spotrunignore" in argv
    assert argv[-2] == f"{tmp_path.resolve()}/"
    # ~/spotrun is relative to the remote home for rsync.
    assert argv[-1] == "203.0.113.7:spotrun/code/"
    assert "--stats" in argv and "--itemize-changes" in argv
    assert "--info=progress2" in sync_argv(Machine(record), tmp_path, tty=True)


def test_sync_argv_spares_the_run_output_folders_inside_code(record, tmp_path):
    argv = sync_argv(
        Machine(record),
        tmp_path,
        protect=("out/run1", "out/run1/checkpoint/", "/abs/ckpt", "~/ckpt", "s3://b/ckpt", ".", ""),
    )
    assert [a for a in argv if a.startswith("--filter=P")] == [
        "--filter=P /out/run1/",
        "--filter=P /out/run1/checkpoint/",
    ]
    # Protect rules come before the excludes and ignore files, so they win.
    assert argv.index("--filter=P /out/run1/") < argv.index("--filter=:- .gitignore")


def test_download_never_deletes_local_files(record, tmp_path):
    argv = download_argv(Machine(record), "/r/code/trained_models/x", tmp_path)
    assert "--delete" not in argv
    assert "--exclude=.*.tmp" in argv  # a checkpoint still being written stays behind
    assert argv[-2:] == ["203.0.113.7:/r/code/trained_models/x/", f"{tmp_path}/"]


def test_rsync_target_and_quote_path_keep_home_relative_paths():
    assert rsync_target("h", "~/spotrun/code/") == "h:spotrun/code/"
    assert quote_path("~/spotrun/runs/a b") == "\"$HOME\"/'spotrun/runs/a b'"
    assert quote_path("/abs/x") == "/abs/x"


def test_start_command_runs_in_tmux_with_log_exit_code_and_watcher():
    line = runs.start_command(
        "~/spotrun", "exp", "python -m ml.train --config c.yaml", watcher_args=["--signal", "USR1"]
    )
    assert "tmux new-session -d -s spotrun-exp" in line
    assert "set-option -w -t =spotrun-exp: remain-on-exit on" in line
    assert "respawn-pane -k -t =spotrun-exp:" in line
    pane = runs.pane_script(
        "~/spotrun", "exp", "python -m ml.train --config c.yaml", watcher_args=["--signal", "USR1"]
    )
    assert '-m ec2.remote.spot_watch --run-dir "$HOME"/spotrun/runs/exp --signal USR1 -- bash -c' in pane
    assert '| tee -a "$HOME"/spotrun/runs/exp/log' in pane
    assert 'echo ${PIPESTATUS[0]} > "$HOME"/spotrun/runs/exp/exit_code.tmp' in pane
    assert pane.startswith('cd "$HOME"/spotrun/code && ')
    # A second run of the same name is refused unless forced.
    assert f"exit {runs.EXISTS_CODE}" in line
    forced = runs.start_command("~/spotrun", "exp", "true", force=True)
    assert "kill-session" in forced and f"exit {runs.EXISTS_CODE}" not in forced


def test_train_command_and_env_carry_the_region_never_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    cmd = train_command("~/spotrun", "configs/demo.yaml", ["train.num_training_batches=5"])
    assert cmd == (
        '"$HOME"/spotrun/venv/bin/python -m ml.train --config configs/demo.yaml train.num_training_batches=5'
    )
    env = train_env("eu-west-1")
    assert env == {"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-1"} and train_env(None) == {}
    line = runs.start_command("~/spotrun", "exp", cmd, env=env)
    assert "export AWS_REGION=eu-west-1" in line and "SPOTRUN" not in line
    assert "AWS_ACCESS_KEY_ID" not in line and "AWS_SECRET" not in line and "AKIAEXAMPLE" not in line
    with pytest.raises(ToolkitError, match="IAM instance profile"):
        runs.start_command("~/spotrun", "exp", cmd, env={"AWS_SECRET_ACCESS_KEY": "x"})


@pytest.mark.parametrize("bad", ["", "a b", "../x", "x;rm", "-x"])
def test_run_names_are_checked(bad):
    with pytest.raises(ToolkitError, match="run name"):
        runs.session_name(bad)


def test_run_state_parsing():
    assert str(runs.parse_state("finished 0\n")) == "finished(0)"
    assert runs.parse_state("finished 75").exit_code == 75
    assert str(runs.parse_state("preempted")) == "preempted"
    assert str(runs.parse_state("running\n")) == "running"
    with pytest.raises(ToolkitError):
        runs.parse_state("bash: tmux: command not found")


def test_backoff_doubles():
    assert backoff_delays(4, 0.5) == [0.5, 1.0, 2.0]
    assert backoff_delays(1, 1) == []


RSYNC_STATS = """\
>f+++++++++ a.py
*deleting   old.py

Number of files: 5,012 (reg: 5,003, dir: 9)
Number of created files: 2 (reg: 2)
Number of regular files transferred: 1,234
Total file size: 63,123,456 bytes
Total transferred file size: 61,000,000 bytes
Literal data: 61,000,000 bytes
Total bytes sent: 1,500,123
Total bytes received: 4,567
"""


def test_rsync_stats_parsing():
    s = parse_stats(RSYNC_STATS)
    assert (s.files_transferred, s.bytes_transferred, s.bytes_sent) == (1234, 61_000_000, 1_500_123)
    assert s.itemized == [">f+++++++++ a.py", "*deleting   old.py"]


NVIDIA_SMI = """\
0, GPU-aaa, NVIDIA A10G, 87, 18000, 23028, 61, 180.52
1, GPU-bbb, NVIDIA A10G, 0, 0, 23028, 33, [N/A]
--spotrun-apps--
GPU-aaa, 4242, python, 17500
"""


def test_gpu_summary_from_captured_nvidia_smi():
    gpus, apps = gpu.parse(NVIDIA_SMI)
    assert [g.util_pct for g in gpus] == [87, 0] and gpus[1].power_w is None
    text = gpu.summary(gpus, apps)
    assert "NVIDIA A10G" in text and "18000 / 23028" in text and "61C" in text and "180.5W" in text
    assert "gpu 0  pid 4242" in text and "python" in text
    assert len(text.splitlines()) <= 10


def test_gpu_without_driver_says_so():
    with pytest.raises(ToolkitError, match="driver"):
        gpu.parse("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver")


def test_attach_and_logs_commands():
    assert runs.attach_command("exp") == "tmux attach -t =spotrun-exp"
    assert runs.log_command("~/spotrun", "exp") == 'tail -n 50 -F "$HOME"/spotrun/runs/exp/log'
    assert runs.log_command("/r", "exp", lines=5, follow=False) == "tail -n 5 /r/runs/exp/log"
