"""Every command README.md and docs/*.md show is accepted as written, every output they show is
what the command prints, and every link and file they name exists: a documented command cannot be
refused and a documented output cannot drift.

The commands are read from the pages themselves (fenced code blocks: lines starting with `fab`,
`make`, `python`, `.venv/bin/...`, a `$ ` prompt allowed; and inline `fab ...` spans, with optional
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
  the outcome the pages show: `fab --list`, `fab status`, `fab prices --hours 10`, `fab prices
  --types g5.xlarge,g6.xlarge`, `fab doctor` with the example's S3 arguments (exit 1: the bucket
  does not exist), `make aws-data-ls` (one line: the bucket does not exist), and
  `python scripts/plot_metrics.py` (a PNG). Where a page shows the whole output of one of these
  (`$ fab status`, `$ fab prices --hours 10`, `$ fab doctor ...` then its lines), the output is
  compared line by line with what the command prints now (ids, temporary paths and the local
  ssh/rsync versions masked).
Launching ones (`fab launch`, `run`, `train`, `sync`, ...) stop after argument checking: a full
launch needs an sshd-backed instance and is covered by tests/e2e.

README is the map: under 300 lines, every page of docs/ linked from it, every relative link of
README and docs/ resolving (to a file, and to a heading when it names one), and every repository
path they name in backticks existing.
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
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]

# Pages and tasks other branches of issue 19 add, linked from README's table already: until they
# exist here their links and commands are not checked. Once they exist
# test_pending_pages_and_tasks_are_still_pending fails: empty these sets then.
PENDING_PAGES: set[str] = set()
PENDING_TASKS: set[str] = set()
_RUNNERS = ("fab", "make", "python", "python3", "torchrun")
_PLACEHOLDER = re.compile(r"\.\.\.|\||<[^>]*>|\b[A-Z][A-Z0-9_]*\b(?!=)")


def _words(line: str) -> list[str] | None:
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return None
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):  # `SPOTRUN_DEBUG=1 fab ...`
        words = words[1:]
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
    """Commands in a page's code blocks, then its inline `fab ...` spans (added to ``inline``);
    README's without ``text``."""
    text = README.read_text() if text is None else text
    found: list[str] = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        lines = block.splitlines()
        # A block with `$ ` prompts shows a session: only the prompted lines are commands, the rest
        # is their output (which may itself start with `fab ...`).
        if any(line.strip().startswith("$ ") for line in lines):
            lines = [line for line in lines if line.strip().startswith("$ ")]
        for line in lines:
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


def _pending(command: str) -> bool:
    words = shlex.split(command)
    return words[0] == "fab" and len(words) > 1 and words[1] in PENDING_TASKS


INLINE: set[str] = set()
README_COMMANDS = readme_commands(inline=INLINE)
COMMANDS = [
    c
    for c in dict.fromkeys(c for page in PAGES for c in readme_commands(page.read_text(), INLINE))
    if not _pending(c)
]


def test_the_extraction_finds_the_examples():
    """The rule finds what README and docs/ show (so an empty list cannot pass the rest
    vacuously)."""
    assert any(c.startswith("make aws-doctor NAME=exp1") for c in README_COMMANDS)
    assert any(c.startswith("make aws-run NAME=exp1") for c in README_COMMANDS)
    assert "fab prices --hours 10" in README_COMMANDS  # README's capability table
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
    assert argv[0] in tasks.task_names, f"the docs name `fab {argv[0]}`, which is no task"
    body = inspect.unwrap(tasks[argv[0]].body)
    flags = {"--" + p.rstrip("_").replace("_", "-") for p in inspect.signature(body).parameters}
    for word in argv[1:]:
        if word.startswith("--"):
            assert word.split("=")[0] in flags, f"the docs name `fab {argv[0]} {word}`, which it lacks"


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
    # a documented command (its prefix) → (exit code, a fragment of the output the docs show)
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
    lookup) and images of this account (moto's), holding a DLAMI as the docs' outputs show."""
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
    _register_dlami()
    yield root
    aws.reset_clients()


DLAMI_NAME = "Deep Learning OSS Nvidia Driver AMI GPU PyTorch 2.10 (Ubuntu 24.04) 20261120"


def _register_dlami() -> None:
    """A DLAMI-named image of this account: create_image from an x86_64 instance (moto's
    register_image drops the architecture)."""
    import boto3

    ec2 = boto3.client("ec2", region_name="us-east-1")
    base = ec2.describe_images(
        Owners=["amazon"],
        Filters=[{"Name": "architecture", "Values": ["x86_64"]}, {"Name": "name", "Values": ["ubuntu*"]}],
    )["Images"][0]
    iid = ec2.run_instances(ImageId=base["ImageId"], MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    ec2.create_image(InstanceId=iid, Name=DLAMI_NAME)
    ec2.terminate_instances(InstanceIds=[iid])


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
    assert matches, f"no page shows {prefix!r} any more: update RUN_FOR_REAL"
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


# ---- the outputs the pages show are what the commands print -------------------------------------

# Tasks whose whole output a page may show and that need only the stand-ins; other outputs (a fab
# run, a make demo) are labelled on their page with the test or machine that produced them.
COMPARED_TASKS = {"status", "prices", "doctor", "data-ls"}
_MASKS = [
    (re.compile(r"ami-[0-9a-f]{8,17}"), "ami-*"),
    (re.compile(r"/tmp/\S*?/\.ssh/"), "~/.ssh/"),
    (re.compile(r"^(✓\s+(?:ssh|rsync)\s+).*$"), r"\1(local version)"),  # this machine's tools
]


def documented_outputs() -> list[tuple[str, str, list[str], int]]:
    """(page, command, output lines, exit status) for each `$ fab TASK ...` line of a code block
    followed by its whole output (none trimmed with `...`), up to `[exit N]` (0 when absent)."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```[a-z]*\n(.*?)```", page.read_text(), re.S):
            lines = block.rstrip("\n").splitlines()
            starts = [i for i, line in enumerate(lines) if line.startswith("$ ")] + [len(lines)]
            for i, end in zip(starts, starts[1:], strict=False):
                command, out = lines[i][2:], [line for line in lines[i + 1 : end] if line.strip()]
                words = shlex.split(command)
                if words[0] != "fab" or words[1] not in COMPARED_TASKS or "..." in command or not out:
                    continue
                if any(line.strip() == "..." for line in out):
                    continue
                code = 0
                if re.fullmatch(r"\[exit \d+\]", out[-1]):
                    code = int(out.pop()[6:-1])
                found.append((page.relative_to(REPO).as_posix(), command, out, code))
    return found


def _masked(lines: list[str]) -> list[str]:
    masked = []
    for line in lines:
        for pattern, replacement in _MASKS:
            line = pattern.sub(replacement, line)
        masked.append(line.rstrip())
    return masked


OUTPUTS = documented_outputs()


def test_the_documented_outputs_are_found():
    shown = {(page, shlex.split(command)[1]) for page, command, _, _ in OUTPUTS}
    assert {
        ("docs/doctor-and-prices.md", "doctor"),
        ("docs/doctor-and-prices.md", "prices"),
        ("docs/launch-and-capacity.md", "status"),
        ("docs/data-and-s3.md", "data-ls"),
    } <= shown


@pytest.mark.parametrize("page, command, shown, code", OUTPUTS, ids=[f"{o[0]}:{o[1][:40]}" for o in OUTPUTS])
def test_a_documented_output_is_what_the_command_prints(page, command, shown, code, project):
    if any("3 session" in line for line in shown):  # the page's bucket of three sessions
        import boto3

        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="my-bucket")
        for session in ("t15.2023.08.11", "t15.2023.08.13", "t15.2023.08.18"):
            s3.put_object(Bucket="my-bucket", Key=f"hdf5_data_final/{session}/data_train.hdf5", Body=b"x")
    proc = _run(shlex.split(command), project)
    printed = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert _masked(printed) == _masked(shown), f"{page} shows another output for {command}"
    assert proc.returncode == code, f"{page}: {command} exits {proc.returncode}, the page says {code}"


# ---- README is the map: its size, its links, the files the pages name ---------------------------


def test_readme_is_a_map_under_300_lines():
    assert len(README.read_text().splitlines()) < 300


def test_every_docs_page_is_linked_from_readme():
    linked = {m.split("#")[0] for m in re.findall(r"\]\((docs/[^)\s]+)\)", README.read_text())}
    unlinked = [
        p.relative_to(REPO).as_posix() for p in PAGES[1:] if p.relative_to(REPO).as_posix() not in linked
    ]
    assert not unlinked, f"pages README does not link: {unlinked}"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _links() -> list[tuple[Path, str]]:
    return [
        (page, target)
        for page in PAGES
        for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", page.read_text(), flags=re.S))
        if not re.match(r"[a-z]+:", target)
    ]


def test_every_relative_link_resolves_to_a_file_and_heading():
    links = _links()
    assert len(links) >= 30
    broken = []
    for page, target in links:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if file.relative_to(REPO).as_posix() in PENDING_PAGES:
            continue
        if not file.exists():
            broken.append(f"{page.name}: {target} (no such file)")
        elif anchor and file.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", file.read_text(), flags=re.S), re.M)
            if anchor not in {_anchor(h) for h in headings}:
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


_TRACKED = (
    "common/",
    "ec2/",
    "ml/",
    "tasks/",
    "tests/",
    "scripts/",
    "configs/",
    "benchmarks/",
    "docs/",
    ".ci/",
)


def test_every_repository_path_the_pages_name_exists():
    named = {
        (page.name, path)
        for page in PAGES
        for path in re.findall(r"`([A-Za-z0-9_.][A-Za-z0-9_./-]*)`", page.read_text())
        if path.startswith(_TRACKED)
    }
    assert len(named) >= 20
    missing = sorted(f"{page}: {path}" for page, path in named if not (REPO / path).exists())
    assert not missing, missing


def test_pending_pages_and_tasks_are_still_pending():
    """Once another branch's page or task is here, its README row is checked like every other:
    empty PENDING_PAGES / PENDING_TASKS."""
    from invoke import Collection

    import fabfile

    assert not [p for p in PENDING_PAGES if (REPO / p).exists()], "remove it from PENDING_PAGES"
    tasks = Collection.from_module(fabfile).task_names
    assert not [t for t in PENDING_TASKS if t in tasks], "remove it from PENDING_TASKS"
