"""`fab rehearse`: a real spot interruption of a running run, sent by AWS FIS, followed through the
run's recovery to a report; `fab smoke`: the whole chain on the cheapest GPU spot type. The logic
lives in ec2/journey/rehearse.py and ec2/journey/smoke.py."""

from __future__ import annotations

from pathlib import Path

from invoke import task

from ec2.journey import rehearse as rehearsing
from tasks.edge import ToolkitError, aws_config, edge, machine_name


def _say(line: str) -> None:
    print(line, flush=True)


@task(iterable=["set_"], auto_shortflags=False)
@edge
def rehearse(c, name=None, node=None, dest=None, poll=5.0, config=None, set_=None):
    """Interrupt a running run's spot instance for real (AWS FIS, 2 min notice; --node K of a cluster)
    and report each recovery phase's seconds, the steps lost and the rehearsal's cost."""
    cfg = aws_config(config, set_)
    name = machine_name(name, cfg)
    report = rehearsing.rehearse(
        cfg,
        name,
        None if node is None else int(node),
        Path(dest) if dest else None,
        budgets=rehearsing.Budgets(poll=float(poll)),
        out=_say,
    )
    for line in report.lines():
        _say(line)


@task(iterable=["set_"], auto_shortflags=False)
@edge
def smoke(
    c,
    uri,
    dry_run=False,
    dest=None,
    args="",
    setup_python=None,
    no_gpu=False,
    poll=10.0,
    imds_poll=5.0,
    rehearse_after=0.0,  # ec2.journey.smoke.REHEARSE_AFTER_S (not imported here: fab starts fast)
    config=None,
    set_=None,
):
    """The whole chain on the cheapest GPU spot type (doctor, launch, setup, demo, train, rehearse,
    resume, download, terminate): one verdict per stage and the cost; --dry-run spends nothing."""
    import shlex

    from ec2 import paths
    from ec2.journey import smoke as smoking

    cfg = aws_config(config, set_)
    if dry_run:
        for line in smoking.plan(cfg, uri):
            _say(line)
        return
    outputs = Path(dest) if dest else paths.outputs_dir(smoking.NAME)
    verdicts = smoking.run(
        cfg,
        uri,
        outputs,
        overrides=shlex.split(args or ""),
        setup_python=setup_python,
        no_gpu=bool(no_gpu),
        poll_s=float(poll),
        imds_poll_s=float(imds_poll),
        rehearse_poll_s=min(float(poll), 5.0),
        rehearse_after_s=float(rehearse_after),
        out=_say,
    )
    _say(smoking.total_line(verdicts))
    if not verdicts.passed:
        raise ToolkitError("the smoke failed; the FAILED stage above says where, and its log what")
