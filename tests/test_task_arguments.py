"""The edge's contract as a class: every fab task's arguments are checked by tasks/edge.py, every
number (in a task or in configs/aws.yaml) has a declared range, every name that becomes a path is
checked by ec2/names.py, and failures are one line (or, for a bug, a traceback and a plea)."""

from __future__ import annotations

import dataclasses
import inspect
import io
from contextlib import redirect_stderr

import pytest
from invoke import Collection, Context
from invoke.exceptions import Exit

import fabfile
from common.checks import Range, declared_checks
from ec2 import names, paths
from ec2.config import AwsConfig, load_aws_config
from tasks import edge


def _tasks():
    return sorted(Collection.from_module(fabfile).tasks.items())


@pytest.mark.parametrize("task_name, task", _tasks(), ids=[n for n, _ in _tasks()])
def test_every_task_goes_through_the_edge_and_every_number_has_a_range(task_name, task):
    """A task a helper adds later fails here until its numbers have a range in edge.ARGUMENTS (or
    its own @edge(checks=...)), and it must use @edge at all."""
    assert hasattr(task.body, "edge_checks"), f"{task_name}: put @edge under @task"
    original = inspect.signature(inspect.unwrap(task.body))
    for pname, param in list(original.parameters.items())[1:]:
        # Every flag but an on/off switch: numbers that default to None (--gpus, --node) too.
        if not isinstance(param.default, bool):
            declared = task.body.edge_checks.get(pname) or edge.ARGUMENTS.get(pname)
            assert declared is not None, (
                f"fab {task_name} {edge.flag(pname)}: declare its check (a range for a number) in "
                "tasks/edge.py"
            )
        # invoke must not convert numbers itself (a typo would end in its traceback).
        shown = inspect.signature(task.body).parameters[pname].default
        assert not (isinstance(shown, (int, float)) and not isinstance(shown, bool)), pname


def test_every_number_in_aws_yaml_has_a_range():
    checks = declared_checks(AwsConfig)
    for f in dataclasses.fields(AwsConfig):
        if f.type in ("int", "float", "float | None", "int | None"):
            assert isinstance(checks.get(f.name), Range), f"{f.name} needs checked(default, Range(...))"


@pytest.mark.parametrize(
    "override, where",
    [("ssh_port=0", "ssh_port"), ("ssh_port=65536", "ssh_port"), ("idle_minutes=-1", "idle_minutes")],
)
def test_config_ranges_name_the_override(override, where):
    with pytest.raises(edge.ConfigError) as e:
        load_aws_config(None, [override])
    assert str(e.value).startswith(f"--set '{override}': {where} must be")


def test_config_range_blames_the_file(tmp_path):
    bad = tmp_path / "aws.yaml"
    bad.write_text("idle_minutes: -5\n")
    with pytest.raises(
        edge.ConfigError, match=rf"^{bad}: idle_minutes must be 0 or more .* edit idle_minutes"
    ):
        load_aws_config(bad)
    # Edges of the ranges are accepted.
    cfg = load_aws_config(None, ["ssh_port=65535", "idle_minutes=0", "max_recoveries=0", "root_volume_gb=8"])
    assert (cfg.ssh_port, cfg.idle_minutes) == (65535, 0)


@pytest.mark.parametrize(
    "rule, good, bad",
    [
        (
            names.INSTANCE,
            ["exp1", "a.b_c-d", "X" * 63],
            ["", "..", "../x", "a/b", ".hidden", "-x", "a b", "X" * 64],
        ),
        (names.KEY_PAIR, ["spotrun", "my-key.2"], ["../../x", "a/b", "a..b", "k\\x", "my key", "k" * 256]),
        (names.RUN, ["train", "exp-1.2"], ["..", "a/b", "", "r" * 65]),
        (names.SECURITY_GROUP, ["spotrun-ssh", "my group (1)"], ["sg-123", "SG-x", "a/b", "a..b", "é"]),
        (names.SSH_USER, ["ubuntu", "ec2-user", "_svc"], ["root x", "a\nb", "1abc", ""]),
        (names.HOST, ["203.0.113.7", "host.example.com", "::1"], ["h\nProxyCommand x", "a b", "a/b", ""]),
    ],
)
def test_name_rules(rule, good, bad):
    for value in good:
        assert rule.check(value, "--x") == value
    for value in bad:
        with pytest.raises(names.BadName, match=r"--x .*e\.g\. "):
            rule.check(value, "--x")


def test_tags_follow_aws_tag_rules():
    assert names.tags({"team": "nlp", "cost:centre": "a/b 1"}) == {"team": "nlp", "cost:centre": "a/b 1"}
    for bad in ({"aws:x": "y"}, {"spotrun:name": "x"}, {"k": 1}, {"k": "v\n"}, {"k" * 129: "v"}):
        with pytest.raises(names.BadName):
            names.tags(bad)
    # AWS allows 50 tags per resource, and spotrun adds up to 6 of its own.
    assert len(names.tags({f"k{i}": "v" for i in range(40)})) == 40
    with pytest.raises(names.BadName, match="41 tags; at most 40"):
        names.tags({f"k{i}": "v" for i in range(41)})


def test_paths_refuse_names_that_leave_their_folder(monkeypatch, tmp_path):
    """Whatever a caller forgot to check, paths.py does not build a path outside its folder."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SPOTRUN_HOME", str(tmp_path / ".spotrun"))
    for build in (paths.key_file, paths.known_hosts_file, paths.outputs_dir):
        with pytest.raises(names.BadName):
            build("../../x")
    assert paths.key_file("spotrun") == tmp_path / ".ssh" / "spotrun.pem"


@edge.edge(checks={"count": edge.integer(Range(1, 8), 2)})
def _demo_task(c, count=2, ratio=0.5, port=22, name=None, flag=False):
    return (count, ratio, port, name, flag)


def _call(*args, **kwargs):
    err = io.StringIO()
    with redirect_stderr(err):
        try:
            return _demo_task(Context(), *args, **kwargs), err.getvalue()
        except Exit as e:
            return e.code, err.getvalue()


def test_edge_reads_numbers_from_text_and_puts_defaults_back():
    # From the command line invoke passes text, or None for an absent flag.
    assert _call(count="3", ratio="0.25", port="2222")[0] == (3, 0.25, 2222, None, False)
    assert _call(count=None, ratio=None, port=None)[0] == (2, 0.5, 22, None, False)
    assert _call()[0] == (2, 0.5, 22, None, False)
    # The task's own check, and a number the table does not know still stays a number.
    assert _call(count="9") == (2, "error: --count must be from 1 to 8, got 9; e.g. --count 2\n")
    assert _call(ratio="half") == (2, "error: --ratio 'half' is not a number; e.g. --ratio 0.5\n")
    assert _call(name="a/b")[1].startswith("error: --name 'a/b' must not contain")


def test_unexpected_error_shows_traceback_and_asks_for_a_report(capsys):
    @edge.edge
    def broken(c):
        {}["missing"]

    with pytest.raises(Exit) as e:
        broken(Context())
    err = capsys.readouterr().err
    assert e.value.code == edge.UNEXPECTED_EXIT
    assert "Traceback" in err and "KeyError: 'missing'" in err
    assert err.rstrip().splitlines()[-1] == "unexpected error: please report it with the traceback above"


def test_debug_shows_the_hidden_cause_of_an_expected_error(capsys, monkeypatch):
    @edge.edge
    def fails(c):
        try:
            int("x")
        except ValueError:
            raise edge.ToolkitError("could not read x; fix it") from None

    for debug, shows in (("", False), ("1", True)):
        monkeypatch.setenv("SPOTRUN_DEBUG", debug)
        with pytest.raises(Exit) as e:
            fails(Context())
        err = capsys.readouterr().err
        assert e.value.code == 1 and err.rstrip().splitlines()[-1] == "error: could not read x; fix it"
        assert ("invalid literal for int()" in err) is shows and ("Traceback" in err) is shows


def test_a_repeatable_flag_is_checked_one_value_at_a_time(capsys):
    @edge.edge
    def forwards(c, local_port=None):
        return local_port

    assert forwards(Context(), local_port=["8888", "6006"]) == [8888, 6006]
    with pytest.raises(Exit):
        forwards(Context(), local_port=["8888", "70000"])
    err = capsys.readouterr().err
    assert err.startswith("error: --local-port must be from 1 to 65535 (a TCP port), got 70000")
