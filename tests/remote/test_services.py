"""`fab tensorboard` and `fab jupyter` against the real sshd: the server starts in its own tmux
session on the machine, listens on loopback only, and answers through the tunnel.

The machine's venv is a throwaway venv layered over the project's .venv (a .pth naming its
site-packages, as `fab setup` layers over the AMI's PyTorch), so nothing is installed into .venv.
JupyterLab is not a project dependency: the production install command (`pip install` of the
pinned version into the venv) is run once per machine into a cached layer under the temp folder,
and the machine's venv is layered over that too (the install is then found and skipped).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sysconfig
import tempfile
import time
import urllib.error
from pathlib import Path

import pytest
from invoke import Context

from ec2.remote import runs, services
from ec2.remote.ssh import Machine
from tasks import remote as t
from tests.peers.fab_process import fab_process, free_port, get, read_line_with
from tests.peers.trainkit import TINY_TRAIN

REPO = Path(__file__).resolve().parents[2]
VENV_PYTHON = REPO / ".venv" / "bin" / "python"


def site_packages(venv: Path) -> str:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def layered_venv(venv: Path, *over: str) -> Path:
    """A venv of its own (packages installed into it stay there) that also sees `over`."""
    subprocess.run([str(VENV_PYTHON), "-m", "venv", "--without-pip", str(venv)], check=True)
    dirs = [*over, sysconfig.get_paths()["purelib"]]
    lines = "".join(f"import site; site.addsitedir({d!r})\n" for d in dirs)
    (Path(site_packages(venv)) / "_spotrun_test_layer.pth").write_text(lines)
    return venv


@pytest.fixture(scope="session")
def jupyter_layer() -> str:
    """site-packages with JupyterLab, installed by the production command; built once per machine."""
    root = Path(tempfile.gettempdir()) / f"spotrun-test-{services.JUPYTERLAB_SPEC}"
    if not (root / "ready").exists():
        build = Path(tempfile.mkdtemp(prefix="spotrun-jl-", dir=tempfile.gettempdir()))
        layered_venv(build / "venv")
        subprocess.run(["bash", "-c", services.jupyter_install_command(str(build))], check=True, timeout=600)
        (build / "ready").touch()
        try:
            build.rename(root)
        except OSError:  # another test process built it first
            shutil.rmtree(build, ignore_errors=True)
    return site_packages(root / "venv")


def test_service_commands_as_strings():
    start = services.start_command("~/spotrun", "tensorboard", "CMD", 6006)
    assert "tmux has-session -t =spotsvc-tensorboard" in start
    assert 'echo running $(cat "$HOME"/spotrun/services/tensorboard.port)' in start
    assert "tmux new-session -d -s spotsvc-tensorboard" in start and "echo started 6006" in start
    assert 'cd "$HOME"/spotrun/code && exec CMD >>' in start
    tb = services.tensorboard_command("~/spotrun", "trained_models/x", 6006)
    assert tb == (
        '"$HOME"/spotrun/venv/bin/python -m tensorboard.main --logdir trained_models/x '
        "--host 127.0.0.1 --port 6006"
    )
    install = services.jupyter_install_command("~/spotrun")
    assert install == (
        "\"$HOME\"/spotrun/venv/bin/python -c 'import jupyterlab' 2>/dev/null || "
        '"$HOME"/spotrun/venv/bin/python -m pip install --disable-pip-version-check jupyterlab==4.6.6'
    )
    command, env = services.jupyter_command("~/spotrun", 8888)
    assert "--ip=127.0.0.1 --port=8888 --ServerApp.port_retries=0" in command and "token" not in command
    assert env == 'JUPYTER_TOKEN="$(cat "$HOME"/spotrun/services/jupyter.token)" '


def listening_on(port: int) -> list[str]:
    out = subprocess.run(["ss", "-Htln", f"( sport = :{port} )"], capture_output=True, text=True).stdout
    return [line.split()[3] for line in out.splitlines() if line.strip()]


def stop_fab(proc) -> str:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    return proc.stderr.read()


@pytest.mark.slow  # JupyterLab's first start: ~30 s on a loaded 2-core machine
def test_fab_jupyter_starts_jupyterlab_and_answers_through_the_tunnel(sshd, jupyter_layer, tmp_path):
    record = sshd.record(name="box")
    remote = Path(record.remote_dir)
    layered_venv(remote / "venv", jupyter_layer)
    (remote / "code").mkdir(parents=True)
    (remote / "code" / "notebook_here.txt").write_text("x")
    local, port = free_port(), free_port()
    proc = fab_process(
        "jupyter", "--name", "box", "--port", str(port), "--local-port", str(local), cwd=tmp_path
    )
    try:
        url = read_line_with(proc, "token=", timeout_s=180).split()[0]
        token = (remote / "services" / "jupyter.token").read_text()
        assert url == f"http://127.0.0.1:{local}/lab?token={token}" and len(token) == 48
        assert oct((remote / "services" / "jupyter.token").stat().st_mode & 0o777) == "0o600"
        status, body = get(url)
        assert status == 200 and "JupyterLab" in body
        # Without the token: refused. Rooted at the code folder.
        with pytest.raises(urllib.error.HTTPError) as refused:
            get(f"http://127.0.0.1:{local}/api/contents")
        assert refused.value.code == 403
        listing = json.loads(get(f"http://127.0.0.1:{local}/api/contents?token={token}")[1])
        assert "notebook_here.txt" in [item["name"] for item in listing["content"]]
        assert listening_on(port) and all(a.startswith("127.0.0.1:") for a in listening_on(port))
        stop_fab(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Ctrl-C closed the tunnel, not the server; a second `fab jupyter` finds it running.
    assert listening_on(port) and not listening_on(local)
    again = fab_process(
        "jupyter", "--name", "box", "--port", str(port), "--local-port", str(local), cwd=tmp_path
    )
    try:
        assert read_line_with(again, "token=", timeout_s=120).split()[0] == url
        assert get(url)[0] == 200
        stop_fab(again)
    finally:
        if again.poll() is None:
            again.kill()
    Machine(record).run(services.stop_command("jupyter"))


@pytest.mark.slow  # sync, a 3-step run and TensorBoard's start: ~60 s on a loaded 2-core machine
def test_fab_tensorboard_serves_the_runs_output_folder(sshd, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # `fab sync` sends the current project
    record = sshd.record(name="box")
    m = Machine(record)
    layered_venv(Path(record.remote_dir) / "venv")
    c = Context()
    t.sync(c, name="box")
    code = runs.code_dir(record.remote_dir)
    m.run(
        f"cd {code} && {VENV_PYTHON} scripts/make_synthetic_data.py --out data/synthetic "
        "--sessions 4 --trials 6"
    )
    t.train(
        c,
        name="box",
        train_config="configs/demo.yaml",
        args=" ".join([*TINY_TRAIN, "num_training_batches=3", "output_dir=trained_models/tb"]),
        no_watch=True,
    )
    end = time.monotonic() + 180
    while (state := runs.run_state(m, "train")).state == "running" and time.monotonic() < end:
        time.sleep(1)
    assert str(state) == "finished(0)", m.run(
        runs.log_command(record.remote_dir, "train", follow=False)
    ).stdout

    local, port = free_port(), free_port()
    proc = fab_process(
        "tensorboard", "--name", "box", "--port", str(port), "--local-port", str(local), cwd=tmp_path
    )
    try:
        url = read_line_with(proc, "http://", timeout_s=120).split()[0]
        assert url == f"http://127.0.0.1:{local}/"
        status, body = get(url)
        assert status == 200 and "<html" in body.lower()
        # It reads the run's output folder: the trainer's scalars are there.
        assert wait_for_runs(url) == ["tensorboard"]
        assert all(a.startswith("127.0.0.1:") for a in listening_on(port))
        stop_fab(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    m.run(services.stop_command("tensorboard"))


def wait_for_runs(url: str, timeout_s: float = 60) -> list[str]:
    """TensorBoard scans the logdir in the background: its run list fills in after a moment."""
    end = time.monotonic() + timeout_s
    while True:
        found = json.loads(get(f"{url}data/runs")[1])
        if found or time.monotonic() > end:
            return found
        time.sleep(1)


def test_tensorboard_without_a_recorded_output_folder_is_one_line(sshd, tmp_path, capfd):
    sshd.record(name="box")
    proc = fab_process(
        "tensorboard", "--name", "box", "--run", "nope", "--local-port", str(free_port()), cwd=tmp_path
    )
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert err.startswith("error: run 'nope' on box has no output folder recorded") and err.count("\n") == 1


def test_jupyter_with_no_venv_is_one_line(sshd, tmp_path):
    record = sshd.record(name="box")
    os.makedirs(Path(record.remote_dir) / "code")
    proc = fab_process("jupyter", "--name", "box", "--local-port", str(free_port()), cwd=tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    last = err.strip().splitlines()[-1]
    assert (
        last.startswith("error: installing jupyterlab==4.6.6 into the venv on box failed")
        and "fab setup" in last
    )
