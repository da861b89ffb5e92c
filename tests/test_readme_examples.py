"""Every command README.md shows is accepted as written, so a documented command cannot be refused.

The commands are read from README itself (fenced code blocks: lines starting with `fab`, `make`,
`python`, `.venv/bin/...`, a `$ ` prompt allowed; and inline `fab ...` spans, with optional
`[--flag value]` parts kept when their value is concrete), so a new example is covered without
touching this file. Synopses (`PATH|s3://...`, `NAME`, `<name>`, `...`) are not runnable and are
left out by that rule.

Each command is checked to the depth it can be without an instance:
- every `fab` command: parsed by the real task collection, every argument through tasks/edge.py's
  checks, its `--set` values through the AWS config loader, and its `--train-config`/`--args`
  through the trainer's config loader: none may be refused (the task body is not run);
- every `make` line: `make -n` expands it (the target exists, its variables are enough) and each
  `fab`/`python -m ml.*` line it runs gets the check above;
- `python -m ml.train`, `torchrun ... -m ml.train`: the trainer's argument parser and config;
- and these run for real against the stand-ins (moto's server, a temporary HOME and project), to
  the outcome README shows: `fab --list`, `fab status`, `fab prices --hours 10`, `fab prices
  --types g5.xlarge,g6.xlarge`, `fab doctor` with the example's S3 arguments (exit 1: the bucket
  does not exist, as README shows), `make aws-data-ls` (one line: the bucket does not exist), and
  `python scripts/plot_metrics.py` (a PNG).
Launching ones (`fab launch`, `run`, `train`, `sync`, ...) stop after argument checking: a full
launch needs an sshd-backed instance and is covered by tests/e2e.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
_RUNNERS = ("fab", "make", "python", "python3", "torchrun")
_PLACEHOLDER = re.compile(r"\.\.\.|\||<[^>]*>|\b[A-Z][A-Z0-9_]*\b(?!=)")


def _words(line: str) -> list[str] | None:
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    if words and words[0].startswith(".venv/bin/"):
        words[0] = words[0].removeprefix(".venv/bin/")
    return words if words and words[0] in _RUNNERS else None


def _expand_optional(span: str) -> str:
    """`fab prices [--hours H] [--types g5.xlarge,g6.xlarge]` → `fab prices --types g5.xlarge,...`:
    an optional part is kept when it holds no placeholder."""
    return re.sub(
        r"\s+\[(--[^\]]*)\]", lambda m: "" if _PLACEHOLDER.search(m.group(1)) else " " + m.group(1), span
    )


# Inline spans that name a task or a flag in a sentence ("`fab run --nodes` replaces a lost node")
# rather than give a whole command: checked as a mention (the task and its flags exist).
MENTION = re.compile(r"needed value and was not given one|did not receive required positional")


def readme_commands(text: str | None = None, inline: set[str] | None = None) -> list[str]:
    """Commands in README's code blocks, then its inline `fab ...` spans (added to ``inline``)."""
    text = README.read_text() if text is None else text
    found: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.strip().removeprefix("$ ").strip()
            words = _words(line)
            if words and not _PLACEHOLDER.search(shlex.join(words[1:]).replace("s3://", "")):
                found.append(shlex.join(words))
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`(fab [^`\n]+)`", prose):
        span = _expand_optional(span)
        words = _words(span)
        if words and len(words) > 1 and not _PLACEHOLDER.search(shlex.join(words[1:])):
            found.append(shlex.join(words))
            if inline is not None:
                inline.add(shlex.join(words))
    return list(dict.fromkeys(found))


INLINE: set[str] = set()
COMMANDS = readme_commands(inline=INLINE)


def test_the_extraction_finds_the_examples():
    """The rule finds what README shows (so an empty list cannot pass the rest vacuously)."""
    assert "fab prices --types g5.xlarge,g6.xlarge" in COMMANDS  # the inline synopsis, expanded
    assert any(c.startswith("make aws-doctor NAME=exp1") for c in COMMANDS)
    assert any(c.startswith("fab doctor --name exp1") for c in COMMANDS)
    assert any(c.startswith("python -m ml.train --config configs/demo.yaml") for c in COMMANDS)
    assert not any("PATH" in c or "<name>" in c for c in COMMANDS)
    assert len(COMMANDS) >= 30


# ---- argument checking: the task collection, edge checks and both config loaders -----------------


class _Accepted(BaseException):
    """Raised in place of running a task body once its arguments passed (not an Exception: the
    edge turns those into an error line)."""

    def __init__(self, arguments: dict):
        self.arguments = arguments


def fab_mentions(argv: list[str]) -> None:
    """`fab TASK --flag ...` as a mention: the task exists and has every flag named."""
    import inspect

    from invoke import Collection

    import fabfile

    tasks = Collection.from_module(fabfile)
    assert argv[0] in tasks.task_names, f"README names `fab {argv[0]}`, which is no task"
    body = inspect.unwrap(tasks[argv[0]].body)
    flags = {"--" + p.rstrip("_").replace("_", "-") for p in inspect.signature(body).parameters}
    for word in argv[1:]:
        if word.startswith("--"):
            assert word.split("=")[0] in flags, f"README names `fab {argv[0]} {word}`, which it lacks"


def fab_accepts(argv: list[str], monkeypatch, mention_ok: bool = False) -> dict | None:
    """The checked arguments of `fab argv` (None for `fab --list`); raises on a refusal."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    from fabric import Config, Executor
    from fabric.main import Fab
    from invoke import Collection

    import fabfile
    from tasks import edge

    real = edge.check_arguments

    def check_then_stop(func, bound, checks):
        real(func, bound, checks)
        raise _Accepted(dict(bound.arguments))

    monkeypatch.setattr(edge, "check_arguments", check_then_stop)
    program = Fab(
        name="Fabric",
        version="test",
        namespace=Collection.from_module(fabfile),
        executor_class=Executor,
        config_class=Config,
    )
    out = io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(out):
            program.run(["fab", *argv])
    except _Accepted as ok:
        arguments = ok.arguments
    except SystemExit as e:
        if e.code and mention_ok and MENTION.search(out.getvalue()):
            fab_mentions(argv)
            return None
        assert not e.code, f"fab {shlex.join(argv)} refused:\n{out.getvalue()}"
        return None
    else:
        return None
    from ec2.config import load_aws_config
    from ml.config import load_train_config

    load_aws_config(None, list(arguments.get("set_") or []))
    if arguments.get("args") or arguments.get("train_config"):
        config = arguments.get("train_config") or "configs/demo.yaml"
        load_train_config(REPO / config, shlex.split(arguments.get("args") or ""))
    return arguments


def trainer_accepts(argv: list[str]) -> None:
    from ml.config import load_train_config
    from ml.train import parse_args

    args = parse_args(argv)
    load_train_config(REPO / args.config, args.overrides)


def make_expands(argv: list[str]) -> list[list[str]]:
    """The fab / python -m ml.* command lines `make argv` would run."""
    proc = subprocess.run(
        ["make", "-n", "-s", "-C", str(REPO), *argv[1:]], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"{shlex.join(argv)}: {proc.stderr}"
    runs = []
    for line in proc.stdout.splitlines():
        words = _words(line.strip())
        if (
            words
            and words[0] == "fab"
            or (words and words[:2] == ["python", "-m"] and words[2].startswith("ml."))
        ):
            runs.append(words)
    return runs


def check_accepted(argv: list[str], monkeypatch, mention_ok: bool = False) -> None:
    if argv[0] == "fab":
        fab_accepts(argv[1:], monkeypatch, mention_ok)
    elif argv[0] == "make":
        for words in make_expands(argv):
            check_accepted(words, monkeypatch)
    elif argv[0] == "torchrun":
        trainer_accepts(argv[argv.index("ml.train") + 1 :])
    elif argv[:3] == ["python", "-m", "ml.train"]:
        trainer_accepts(argv[3:])
    # python scripts/... run for real below.


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_command_is_accepted(command, monkeypatch):
    monkeypatch.chdir(REPO)
    check_accepted(shlex.split(command), monkeypatch, mention_ok=command in INLINE)


# ---- run for real against the stand-ins ---------------------------------------------------------

RUN_FOR_REAL = {
    # README command (its prefix) → (exit code, a fragment of the output README shows)
    "fab --list": (0, "prices"),
    "fab status": (0, ""),
    "fab prices --hours 10": (0, "us-east-1, Linux, 10 h:"),
    "fab prices --types g5.xlarge,g6.xlarge": (0, "g6.xlarge"),
    "fab doctor --name exp1 --train-config configs/rnn_args.yaml": (1, "failed: "),
    # (make itself exits 2 when the recipe fails)
    "make aws-data-ls DEST=s3://my-bucket/data": (2, "error: s3://my-bucket: S3 NoSuchBucket"),
    "python scripts/plot_metrics.py trained_models/demo/metrics.csv": (0, ".png"),
}


@pytest.fixture
def project(aws_env, tmp_path, monkeypatch):
    """README's working folder: configs/ as shipped, but SSH from a fixed address (no checkip
    lookup) and images of this account (moto's)."""
    from common import aws

    root = tmp_path / "p"
    shutil.copytree(REPO / "configs", root / "configs")
    aws_yaml = root / "configs" / "aws.yaml"
    aws_yaml.write_text(
        aws_yaml.read_text()
        .replace("ssh_cidr: auto", "ssh_cidr: 203.0.113.7/32")
        .replace("ami_owners: [amazon]", "ami_owners: [self]")
    )
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SPOTRUN_HOME", str(tmp_path / "home" / ".spotrun"))
    monkeypatch.chdir(root)
    aws.reset_clients()
    yield root
    aws.reset_clients()


def _run(argv: list[str], root: Path) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, PYTHONPATH=str(REPO))
    if argv[0] == "make":  # from the checkout, as README runs it (fab finds fabfile.py there)
        argv = ["make", "-s", "-C", str(REPO), f"BIN={Path(sys.executable).parent}", *argv[1:]]
    elif argv[0] == "fab":
        argv = [str(Path(sys.executable).parent / "fab"), "-r", str(REPO), *argv[1:]]
    elif argv[0] == "python":
        argv = [sys.executable, *[str(REPO / a) if a.startswith("scripts/") else a for a in argv[1:]]]
    return subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("prefix", list(RUN_FOR_REAL))
def test_readme_commands_run_to_their_outcome(prefix, project):
    matches = [c for c in COMMANDS if c.startswith(prefix)]
    assert matches, f"README no longer shows {prefix!r}: update RUN_FOR_REAL"
    code, says = RUN_FOR_REAL[prefix]
    if "plot_metrics" in prefix:
        from tests.peers.trainkit import write_metrics

        (project / "trained_models" / "demo").mkdir(parents=True)
        write_metrics(project / "trained_models" / "demo" / "metrics.csv")
    proc = _run(shlex.split(matches[0]), project)
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    assert proc.returncode == code, f"{matches[0]}: exit {proc.returncode}\n{output}"
    assert says in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == (1 if code and not prefix.startswith("fab doctor") else 0), output
