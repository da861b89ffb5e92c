"""Every `fab` command imports fabfile (all tasks), and the instance's watcher and boot start at
every run: none of them may pull in torch, numpy or h5py, which cost seconds of CPU per command
(torch alone ~3 s: `fab status` went from 0.7 s to 4.7 s when tasks/bench.py reached ml.bench)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numpy", "h5py")


@pytest.mark.parametrize(
    "module", ["fabfile", "ec2.remote.spot_watch", "ec2.remote.boot", "ec2.remote.boot_nodes"]
)
def test_the_laptop_and_the_instances_helpers_import_no_ml_library(module):
    probe = f"import sys, {module}; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == [], f"{module} imports {out.stdout.strip()}"


def test_the_dataset_commands_read_hdf5_without_torch():
    """`fab data-push` and `fab data-ls` index HDF5 files (h5py, numpy) on the laptop; torch is the
    trainer's, not theirs (ml.data's loaders are imported on first use)."""
    probe = "import sys, ec2.cloud.datasets; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
