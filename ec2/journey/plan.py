"""What to run, resolved once from the two configs: the `Plan` that `fab run` (attended, cluster or
detached) and `fab train` share. `plan_for` reads the trainer's config once; the AWS config comes
in already read. `Plan.spec` turns it into what ec2.remote.startrun starts on a machine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ec2.cloud import s3scope
from ec2.config import AwsConfig
from ec2.errors import ConfigError
from ec2.registry import MachineRecord
from ec2.remote import trainrun
from ec2.remote.carry import laptop_checkpoint
from ec2.remote.startrun import RunSpec


@dataclass
class Plan:
    command: str  # the remote command line (python -m ml.train ...)
    run: str = "train"
    env: dict[str, str] = field(default_factory=dict)  # besides AWS_REGION (see run_env)
    output_dir: str | None = None  # the trainer's (relative to code/, or absolute, or s3://)
    checkpoint_dir: str | None = None
    signal: str | None = trainrun.TRAINER_SIGNAL  # None: the watcher's default (TERM), no arguments
    poll_s: float = 30.0  # how often the laptop looks at the instance and the run
    imds_poll_s: float = 5.0  # how often the watcher on the instance asks for notices
    download_every_s: float = 600.0  # pull local checkpoints to the laptop this often
    unreachable_s: float = 300.0
    max_recoveries: int = 3
    keep: bool = False
    setup_python: str | None = None  # a ready python instead of the venv (a prepared machine)
    require_gpu: bool = True
    local_root: str = "."
    # The trainer's config and overrides: the command is then built per machine, one process per
    # GPU it has (or `gpus` of them). Without them, `command` runs as it is.
    train_config: str | None = None
    overrides: list[str] = field(default_factory=list)
    gpus: int | None = None
    # The run's S3 prefixes, granted to the instance's role (iam_instance_profile: auto).
    s3: tuple = ()
    dataset_dir: str | None = None  # the trainer's, for the preflight
    on_rebalance: str = "none"  # AwsConfig.on_rebalance: checkpoint on a rebalance recommendation
    # The trainer's config as read by plan_for (for choose_by: run_cost); not part of the plan's
    # record, never sent anywhere.
    trainer: object = field(default=None, repr=False, compare=False)

    def local_checkpoint(self, outputs: Path) -> Path | None:
        """Where downloads put the checkpoint folder on the laptop (None when it lives in S3)."""
        return laptop_checkpoint(outputs, self.output_dir, self.checkpoint_dir)

    def _checkpoint_inside_outputs(self) -> bool:
        return bool(
            self.output_dir
            and self.checkpoint_dir
            and self.checkpoint_dir.startswith(self.output_dir.rstrip("/") + "/")
        )

    def spec(
        self, env: dict[str, str], backup_uri: str | None = None, *, force: bool = True, watch: bool = True
    ) -> RunSpec:
        """What ec2.remote.startrun starts: the trainer (built per machine) or the plain command."""
        return RunSpec(
            run=self.run,
            command=None if self.train_config is not None else self.command,
            train_config=self.train_config,
            overrides=tuple(self.overrides),
            gpus=self.gpus,
            watcher_args=tuple(watcher_args(self, backup_uri)),
            env={**self.env, **env},
            output_dir=self.output_dir,
            watch=watch,
            force=force,
        )


def watcher_args(plan: Plan, backup_uri: str | None) -> list[str]:
    """The notice watcher's arguments for this plan (none for a plain command with no signal).
    The trainer's `--ranks` depends on the machine: ec2.remote.startrun.line adds it there."""
    if plan.signal is None:
        return []
    return trainrun.watcher_args(
        plan.signal, plan.checkpoint_dir, backup_uri, plan.imds_poll_s, on_rebalance=plan.on_rebalance
    )


def plan_for(
    cfg: AwsConfig,
    train_config: str | None,
    overrides: list[str],
    *,
    command: str | None = None,
    resumable: bool = False,
    **options,
) -> Plan:
    """The Plan of a run of the trainer (`train_config` + `overrides`, its config read here, once)
    or of a plain `command` (no config read). `resumable`: the run resumes after interruptions
    and needs resume=auto. `options`: Plan's run settings (run, gpus, poll_s, ...)."""
    options.setdefault("max_recoveries", cfg.max_recoveries)
    options.setdefault("on_rebalance", cfg.on_rebalance)
    if command is not None:
        return Plan(command=command, signal=None, **options)
    from ml.config import load_train_config

    trainer = load_train_config(train_config, overrides)  # a bad key fails here, not on the instance
    if resumable and trainer.resume != "auto":
        raise ConfigError(
            f"fab run resumes after interruptions and needs resume=auto, not "
            f"{trainer.resume!r}; drop the resume override"
        )
    return Plan(
        command=trainrun.train_command(cfg.remote_dir, train_config, overrides),
        output_dir=trainer.output_dir,
        checkpoint_dir=trainer.checkpoint_dir,
        train_config=train_config,
        overrides=list(overrides),
        s3=tuple(
            s3scope.for_run(trainer.dataset.dataset_dir, trainer.checkpoint_dir, cfg.checkpoint_backup_uri)
        ),
        dataset_dir=trainer.dataset.dataset_dir,
        trainer=trainer,
        **options,
    )


def machine_region(record: MachineRecord, cfg: AwsConfig) -> str | None:
    """The region a machine runs in: its record's (a launched instance), else the config's or the
    environment's (an adopted machine)."""
    return record.region or cfg.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
