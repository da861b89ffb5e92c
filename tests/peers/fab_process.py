"""`fab` as a user starts it from a shell: its own process, SIGINT at its default, and what a test
reads from it (a line, an HTTP answer through what it opened, a free local port); or the same task
collection run in this process, for tables of many cases."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import threading
import traceback
import urllib.request
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# A suite started in the background by a non-interactive shell (`make test &`, nohup, some CI
# runners) inherits SIGINT *ignored*, and so would `fab`: Ctrl-C never arrives and the test waits
# out its timeout. That is what failed under load once. Reset SIGINT to its default before exec.
DEFAULT_SIGINT = [
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fab_process(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, *DEFAULT_SIGINT, str(REPO / ".venv/bin/fab"), "-r", str(REPO), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=cwd,
    )


def read_line_with(proc: subprocess.Popen, needle: str, timeout_s: float = 60) -> str:
    """The first stdout line containing `needle` (fails with stderr if fab exits first)."""
    box: list[str] = []

    def reader():
        for line in proc.stdout:
            if needle in line:
                box.append(line)
                return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout_s)
    if not box:
        proc.kill()
        raise AssertionError(f"no line with {needle!r}; stderr: {proc.stderr.read()}")
    return box[0]


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read().decode()


def in_process(call) -> tuple[int, str]:
    """Run ``call`` with stdout/stderr captured; its exit code and everything it printed."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = call()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: B036 (a bug must show up as a failed case, not stop the battery)
            traceback.print_exc(file=err)
            code = "raised"
    return code, out.getvalue() + err.getvalue()


def run_fab(argv: list[str]) -> tuple[int, str]:
    """The real task collection (fabfile.py) through invoke's Program in this process: fab's own
    start-up costs seconds on a loaded 2-core machine."""
    from fabric import Config, Executor
    from fabric.main import Fab
    from invoke import Collection

    import fabfile

    program = Fab(
        name="Fabric",
        version="test",
        namespace=Collection.from_module(fabfile),
        executor_class=Executor,
        config_class=Config,
    )
    return in_process(lambda: program.run(["fab", *argv]))
