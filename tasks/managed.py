"""`fab run`: the managed journey in one command (launch → setup → sync → train → watch), carrying
on on a replacement instance after a spot interruption. The logic lives in ec2/journey/."""

from __future__ import annotations

import shlex
from pathlib import Path

from invoke import task

from common import outputs
from common.errors import ConfigError
from ec2 import doctor, paths
from ec2.cloud import s3scope
from ec2.journey import Journey, Plan, reentry, report, stdin_asker
from ec2.journey.history import history_path
from ec2.remote.rsync_version import local_rsync
from ec2.remote.sync import refuse_foreign_dest
from ec2.remote.trainrun import RDZV_PORT, TRAINER_SIGNAL, train_command
from tasks.edge import aws_config, edge, machine_name
from tasks.remote import DEFAULT_TRAIN_CONFIG, gpus_option


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
    from ml.config import load_train_config

    local_rsync().require()  # before an instance is paid for, not at its first sync
    cfg = aws_config(config, set_)
    name = machine_name(name, cfg)
    # Where downloads and the run history go, checked before an instance is paid for.
    if dest is not None:
        refuse_foreign_dest(outputs.folder(dest, "--dest"), force, marks=(history_path(Path(dest)).name,))
    else:
        outputs.folder(paths.outputs_dir(name), "the outputs folder")
    overrides = shlex.split(args or "")
    if data_uri:
        overrides.append(f"dataset.dataset_dir={data_uri}")
    train_cfg = load_train_config(train_config, overrides)  # a bad key fails here, not on the instance
    if train_cfg.resume not in ("auto",):
        raise ConfigError(
            f"fab run resumes after interruptions and needs resume=auto, not "
            f"{train_cfg.resume!r}; drop the resume override"
        )
    recoveries = cfg.max_recoveries if max_recoveries is None else max_recoveries
    plan = Plan(
        command=train_command(cfg.remote_dir, train_config, overrides),
        run=run_name,
        output_dir=train_cfg.output_dir,
        checkpoint_dir=train_cfg.checkpoint_dir,
        signal=TRAINER_SIGNAL,
        poll_s=float(poll),
        imds_poll_s=float(imds_poll),
        download_every_s=float(download_every),
        max_recoveries=recoveries,
        keep=bool(keep),
        setup_python=setup_python,
        require_gpu=not no_gpu,
        train_config=train_config,
        overrides=overrides,
        gpus=gpus_option(gpus),
        s3=tuple(
            s3scope.for_run(
                train_cfg.dataset.dataset_dir, train_cfg.checkpoint_dir, cfg.checkpoint_backup_uri
            )
        ),
    )
    if int(nodes) > 1:
        if detach:
            return _submit_nodes(cfg, name, plan, int(nodes), int(rdzv_port), no_preflight, train_cfg)
        return _run_nodes(cfg, name, plan, int(nodes), int(rdzv_port), dest, no_preflight, train_cfg)
    if detach:
        from ec2.journey.detach import require_s3

        require_s3(plan)  # before any AWS call: one line saying how to set it
    journey = Journey(cfg, name, plan, out=_say, ask=stdin_asker(), outputs=Path(dest) if dest else None)
    # A journey this laptop left running (killed, or Ctrl-C → leave): watch it again, no new machine.
    picked = None if detach else reentry.pick_up(cfg, name, journey.outputs, out=_say)
    if not no_preflight and picked is None:
        needs = doctor.needs_for(cfg, train_cfg.dataset.dataset_dir, train_cfg.checkpoint_dir)
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


def _submit_nodes(cfg, name, plan, count, port, no_preflight, train_cfg) -> None:
    """`fab run --detach --nodes N`: a group of one per node (ec2/journey/detach_nodes.py)."""
    from ec2.journey.detach import require_s3
    from tasks.detached import submit_nodes

    require_s3(plan)  # before any AWS call: one line saying how to set it
    if not no_preflight:
        needs = doctor.needs_for(cfg, train_cfg.dataset.dataset_dir, train_cfg.checkpoint_dir)
        doctor.preflight(cfg, name, needs, out=_say)
    submit_nodes(cfg, name, plan, count, port)


def _run_nodes(cfg, name, plan, count, port, dest, no_preflight, train_cfg) -> None:
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
    if not no_preflight:
        needs = doctor.needs_for(cfg, train_cfg.dataset.dataset_dir, train_cfg.checkpoint_dir)
        doctor.preflight(cfg, name, needs, out=_say)
    try:
        journey.run()
    finally:
        if journey.h.attempts:
            _say(report.summary(journey.h))
            _say(f"run history: {journey.h.path}")
