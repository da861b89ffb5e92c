"""`fab run`: the managed journey in one command (launch → setup → sync → train → watch), carrying
on on a replacement instance after a spot interruption. The logic lives in ec2/journey/."""

from __future__ import annotations

from pathlib import Path

from invoke import task

from common import outputs
from ec2 import doctor, paths
from ec2.journey import Journey, cluster_reentry, costrank, reentry, report, stdin_asker
from ec2.journey.history import history_path
from ec2.journey.plan import plan_for
from ec2.remote.rsync_version import local_rsync
from ec2.remote.sync import refuse_foreign_dest
from ec2.remote.trainrun import RDZV_PORT
from tasks.edge import aws_config, edge, machine_name
from tasks.remote import DEFAULT_TRAIN_CONFIG, gpus_option, run_overrides


def _say(line: str) -> None:
    print(line, flush=True)


# No automatic one-letter flags: with --detach, invoke would make `-h` mean detach, and
# `fab run -h` would submit a run instead of showing help.
@task(iterable=["set_"], auto_shortflags=False)
@edge
def run(
    c,
    name=None,
    train_config=DEFAULT_TRAIN_CONFIG,
    args="",
    run_name="train",
    data_uri=None,
    max_recoveries=None,
    keep=False,
    poll=30.0,
    imds_poll=5.0,
    download_every=600.0,
    setup_python=None,
    no_gpu=False,
    gpus=None,
    dest=None,
    force=False,
    no_preflight=False,
    config=None,
    set_=None,
    detach=False,
    nodes=1,
    rdzv_port=RDZV_PORT,
):
    """Managed run: launch, setup, sync, train; on interruption relaunch elsewhere and resume; summary.
    --detach: hand it to an Auto Scaling group of one (needs checkpoint_dir in S3; `fab watch`);
    with --nodes N, one group of one per node.
    --nodes N: a cluster (torchrun on every node; a lost node is replaced; checkpoint_dir in S3)."""
    local_rsync().require()  # before an instance is paid for, not at its first sync
    cfg = aws_config(config, set_)
    name = machine_name(name, cfg)
    # Where downloads and the run history go, checked before an instance is paid for.
    if dest is not None:
        refuse_foreign_dest(outputs.folder(dest, "--dest"), force, marks=(history_path(Path(dest)).name,))
    else:
        outputs.folder(paths.outputs_dir(name), "the outputs folder")
    options = dict(
        run=run_name,
        poll_s=float(poll),
        imds_poll_s=float(imds_poll),
        download_every_s=float(download_every),
        keep=bool(keep),
        setup_python=setup_python,
        require_gpu=not no_gpu,
        gpus=gpus_option(gpus),
    )
    if max_recoveries is not None:
        options["max_recoveries"] = max_recoveries
    # A bad key fails here, not on the instance; resume=auto, or the run could not carry on.
    plan = plan_for(cfg, train_config, run_overrides(args, data_uri), resumable=True, **options)
    cfg = costrank.apply(cfg, plan.trainer)  # choose_by: run_cost orders types by this config's benches
    if int(nodes) > 1:
        if detach:
            return _submit_nodes(cfg, name, plan, int(nodes), int(rdzv_port), no_preflight)
        return _run_nodes(cfg, name, plan, int(nodes), int(rdzv_port), dest, no_preflight)
    if detach:
        from ec2.journey.detach import require_s3

        require_s3(plan)  # before any AWS call: one line saying how to set it
    journey = Journey(cfg, name, plan, out=_say, ask=stdin_asker(), outputs=Path(dest) if dest else None)
    if not detach:  # a cluster run left open under this name is picked up with --nodes, not replaced
        cluster_reentry.refuse_other_shape(journey.outputs, name, 1)
    # A journey this laptop left running (killed, or Ctrl-C → leave): watch it again, no new machine.
    picked = None if detach else reentry.pick_up(cfg, name, journey.outputs, out=_say)
    if not no_preflight and picked is None:
        needs = doctor.needs_for(cfg, plan.dataset_dir, plan.checkpoint_dir)
        doctor.preflight(cfg, name, needs, out=_say)
    if detach:
        from tasks.detached import submit

        submit(cfg, name, plan)
        return
    try:
        journey.run(picked)
    finally:
        if journey.h.attempts:
            _say(report.summary(journey.h))
            _say(f"run history: {journey.h.path}")


def _submit_nodes(cfg, name, plan, count, port, no_preflight) -> None:
    """`fab run --detach --nodes N`: a group of one per node (ec2/journey/detach_nodes.py)."""
    from ec2.journey.detach import require_s3
    from tasks.detached import submit_nodes

    require_s3(plan)  # before any AWS call: one line saying how to set it
    if not no_preflight:
        needs = doctor.needs_for(cfg, plan.dataset_dir, plan.checkpoint_dir)
        doctor.preflight(cfg, name, needs, out=_say)
    submit_nodes(cfg, name, plan, count, port)


def _run_nodes(cfg, name, plan, count, port, dest, no_preflight) -> None:
    """`fab run --nodes N`: the cluster journey (ec2/journey/cluster_loop.py)."""
    from ec2.journey.cluster_loop import ClusterJourney

    journey = ClusterJourney(  # checks checkpoint_dir is in S3 before anything is launched
        cfg,
        name,
        plan,
        count,
        rdzv_port=port,
        out=_say,
        ask=stdin_asker(),
        outputs=Path(dest) if dest else None,
    )
    # A cluster run this laptop left (killed, or Ctrl-C → leave): watch it again on its members.
    picked = cluster_reentry.pick_up(cfg, name, count, plan, journey.outputs, out=_say)
    if not no_preflight and picked is None:
        needs = doctor.needs_for(cfg, plan.dataset_dir, plan.checkpoint_dir)
        doctor.preflight(cfg, name, needs, out=_say)
    try:
        journey.run(picked)
    finally:
        if journey.h.attempts:
            _say(report.summary(journey.h))
            _say(f"run history: {journey.h.path}")
