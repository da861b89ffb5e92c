"""scripts/setup_instance.sh's production branch against a stand-in Deep Learning AMI.

Current DLAMIs keep PyTorch in a venv of their own (/opt/pytorch). The stand-in is such a venv at
a temporary path: it holds a marker package of its own, and (through a .pth file of its own, as
real environments have) the runtime packages and torch of this checkout's .venv. The script must
build a venv that imports both, stay idempotent, and run its real GPU check.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "setup_instance.sh"


def site_packages(venv: Path) -> Path:
    out = subprocess.run(
        [venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


@pytest.fixture(scope="module")
def ami_venv(tmp_path_factory) -> Path:
    """A venv standing in for /opt/pytorch: its own marker package, torch and friends via a .pth."""
    ami = tmp_path_factory.mktemp("opt") / "pytorch"
    subprocess.run([sys.executable, "-m", "venv", str(ami)], check=True)
    sp = site_packages(ami)
    (sp / "ami_marker").mkdir()
    (sp / "ami_marker" / "__init__.py").write_text("WHERE = 'the AMI venv'\n")
    (sp / "_checkout_runtime.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return ami


def machine(tmp_path: Path) -> Path:
    remote = tmp_path / "spotrun"
    (remote / "code").mkdir(parents=True)
    shutil.copy(REPO / "requirements.lock", remote / "code" / "requirements.lock")
    return remote


def setup(
    remote: Path, ami: Path, *, gpu: bool = False, path: str | None = None
) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOTRUN_")}
    # Candidates in order: one that does not exist, one without torch (the interpreter under this
    # checkout's venv: torch is in the venv only), then the stand-in AMI venv.
    without_torch = Path(sys.base_prefix) / "bin" / "python3"
    env["SPOTRUN_BASE_PYTHONS"] = f"{remote}/no-such/python3 {without_torch} {ami}/bin/python3"
    if not gpu:
        env["SPOTRUN_REQUIRE_GPU"] = "0"
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        ["bash", str(SCRIPT), str(remote)], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def set_up(tmp_path_factory, ami_venv) -> tuple[Path, subprocess.CompletedProcess]:
    """One machine set up once (the pip check of every pinned package is most of a minute): the
    first setup's output, and the machine the later setups of these tests run on again."""
    remote = machine(tmp_path_factory.mktemp("machine"))
    return remote, setup(remote, ami_venv)


def test_venv_layers_over_the_ami_venv_and_is_idempotent(set_up, ami_venv):
    remote, first = set_up
    assert first.returncode == 0, first.stderr + first.stdout
    assert f"base python: {ami_venv}/bin/python3" in first.stdout
    venv_python = remote / "venv" / "bin" / "python"
    # Our own venv (not the AMI's python under another name) that sees the AMI venv's packages.
    assert (remote / "venv" / "pyvenv.cfg").is_file()
    probe = subprocess.run(
        [
            venv_python,
            "-c",
            "import sys, ami_marker, torch, boto3, s3fs, h5py, yaml, tqdm; "
            "print(sys.prefix, ami_marker.WHERE)",
        ],
        capture_output=True,
        text=True,
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split()[0] == str(remote / "venv") and "the AMI venv" in probe.stdout
    assert "torch" in first.stdout and "set up:" in first.stdout

    marker = (remote / "venv" / ".spotrun-setup").read_text()
    second = setup(remote, ami_venv)
    assert second.returncode == 0, second.stderr
    assert "already set up" in second.stdout
    assert (remote / "venv" / ".spotrun-setup").read_text() == marker
    # Without a GPU to check again, the versions are the ones torch reported at the first setup.
    versions = next(line for line in first.stdout.splitlines() if line.startswith("python "))
    assert "torch " in versions and versions in second.stdout.splitlines()


def test_a_venv_from_the_old_setup_is_repaired(tmp_path, ami_venv):
    """A venv made by the old script (plain --system-site-packages, no .pth) could not import torch;
    rerunning setup after an upgrade layers it over the AMI venv instead of failing verify."""
    remote = machine(tmp_path)
    subprocess.run(
        [ami_venv / "bin" / "python3", "-m", "venv", "--system-site-packages", str(remote / "venv")],
        check=True,
    )
    broken = subprocess.run(
        [remote / "venv" / "bin" / "python", "-c", "import ami_marker"], capture_output=True
    )
    assert broken.returncode != 0  # the bug the issue describes, reproduced
    fixed = setup(remote, ami_venv)
    assert fixed.returncode == 0, fixed.stderr + fixed.stdout
    subprocess.run([remote / "venv" / "bin" / "python", "-c", "import ami_marker, torch"], check=True)


def tools_path(tmp_path: Path, without: set[str]) -> str:
    """A PATH holding the usual tools except ``without``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in (
        "bash",
        "sh",
        "cat",
        "grep",
        "sha256sum",
        "cut",
        "mkdir",
        "rm",
        "chmod",
        "id",
        "printf",
        "tmux",
        "rsync",
        "env",
        "python3",
        "dirname",
        "readlink",
        "uname",
        "ls",
    ):
        found = shutil.which(tool)
        if found and tool not in without and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def test_the_real_gpu_check_refuses_a_machine_without_a_gpu(tmp_path, set_up, ami_venv):
    remote, first = set_up
    # Set up once without the check; the GPU check then runs on every later setup too (it is not
    # part of what makes a venv "already set up"), which is what these two calls exercise.
    assert first.returncode == 0, first.stderr + first.stdout
    no_smi = setup(remote, ami_venv, gpu=True, path=tools_path(tmp_path, without=set()))
    assert no_smi.returncode == 1
    assert "nvidia-smi not found" in no_smi.stderr
    # A driver that answers, but a torch that sees no GPU (this CPU build): the last check fails.
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'NVIDIA A10G, 550.54, 23028 MiB'\n")
    smi.chmod(0o755)
    no_cuda = setup(remote, ami_venv, gpu=True, path=tools_path(tmp_path, without=set()))
    assert no_cuda.returncode == 1
    assert "NVIDIA A10G" in no_cuda.stdout
    assert "torch.cuda.is_available() is False" in no_cuda.stderr


def test_missing_tmux_is_installed_or_named(tmp_path, ami_venv):
    """No tmux on the machine: setup tries apt-get, and when that cannot install it, says what to run."""
    remote = machine(tmp_path)
    path = tools_path(tmp_path, without={"tmux"})
    apt = tmp_path / "bin" / "apt-get"
    apt.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/apt.log\nexit 100\n')
    apt.chmod(0o755)
    result = setup(remote, ami_venv, path=path)
    assert result.returncode == 1
    assert "installing tmux" in result.stdout
    assert "tmux missing and could not be installed" in result.stderr
    assert "install -y -qq tmux" in (tmp_path / "apt.log").read_text()
