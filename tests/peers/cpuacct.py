"""The CPU each test costs, its subprocesses included: a pytest plugin for finding where the suite's
time goes (docs/testing.md, "Where its time goes"). Not used by `make test` itself.

The suite is bound by CPU on the 2-core box, and most of that CPU is spent outside the worker that
runs a test: trainers under tmux under sshd, fab subprocesses, rsync. Every one of them descends
from the worker (tmux's server daemonises but keeps its cgroup), so each xdist worker is put in a
cgroup of its own (cgroup v1 `cpuacct`, root only) and a test's CPU is what its worker's cgroup
used while it ran.

    make test PYTEST_ADDOPTS="-p tests.peers.cpuacct" SPOTRUN_CPUACCT=/tmp/cpu
    python -m tests.peers.cpuacct /tmp/cpu        # CPU seconds per folder, file and test
"""

from __future__ import annotations

import collections
import json
import os
import sys
import time
from pathlib import Path

import pytest

CGROUPS = Path("/sys/fs/cgroup/cpuacct")
_cgroup: Path | None = None
_out = None


def _used_s() -> float:
    return int((_cgroup / "cpuacct.usage").read_text()) / 1e9


def pytest_configure(config) -> None:
    global _cgroup, _out
    worker, dest = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("SPOTRUN_CPUACCT")
    if not worker or not dest:
        return  # only under xdist, and only when asked where to write
    _cgroup = CGROUPS / f"spotrun-{worker}"
    _cgroup.mkdir(exist_ok=True)
    (_cgroup / "tasks").write_text(str(os.getpid()))
    Path(dest).mkdir(parents=True, exist_ok=True)
    _out = open(Path(dest) / f"{worker}.jsonl", "a")  # noqa: SIM115 - open for the worker's life


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if _cgroup is None:
        yield
        return
    cpu, began = _used_s(), time.time()
    yield
    row = {"id": item.nodeid, "cpu": _used_s() - cpu, "wall": time.time() - began, "began": began}
    _out.write(json.dumps(row) + "\n")
    _out.flush()


def summary(dest: Path, top: int = 30) -> list[str]:
    rows = [json.loads(line) for path in sorted(dest.glob("*.jsonl")) for line in path.open()]
    by_folder: collections.Counter = collections.Counter()
    by_file: collections.Counter = collections.Counter()
    for row in rows:
        file = row["id"].split("::")[0]
        by_file[file] += row["cpu"]
        by_folder[str(Path(file).parent)] += row["cpu"]
    lines = [f"{len(rows)} tests, {sum(r['cpu'] for r in rows):.0f} CPU-s"]
    lines += [f"{cpu:8.1f}  {name}/" for name, cpu in by_folder.most_common()]
    lines += [f"{cpu:8.1f}  {name}" for name, cpu in by_file.most_common(top)]
    lines += [f"{r['cpu']:8.1f}  {r['id']}" for r in sorted(rows, key=lambda r: -r["cpu"])[:top]]
    return lines


if __name__ == "__main__":
    print("\n".join(summary(Path(sys.argv[1]))))
