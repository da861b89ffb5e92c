"""`fab smoke --uri s3://BUCKET/PREFIX`: the whole chain once, on the cheapest GPU spot type of the
config, with the demo (configs/demo.yaml on a small synthetic dataset), for a user's first day and
for every release: doctor, sync the demo's data to S3, launch, setup, train, rehearse (a real spot
interruption through AWS FIS, ec2.journey.rehearse), resume on a replacement, download, terminate.
One verdict line per stage, then the total cost.

The demo's data goes to <uri>/data and its checkpoints to <uri>/checkpoints. The run is `fab run`'s
attended journey (ec2.journey.engine) with one recovery allowed (the rehearsal's); the rehearsal
follows it from a thread. Whatever happens (a failed stage, Ctrl-C), every instance of the smoke's
name is terminated before it returns.

`plan()` is `--dry-run`: each stage's plan and the AWS calls it would make; it makes none.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from common import aws
from common.attempt import Outcome
from ec2 import doctor
from ec2.cloud import account, datasets, instances, s3scope
from ec2.config import AwsConfig
from ec2.errors import ToolkitError
from ec2.journey import Journey, Plan, history, rehearse
from ec2.journey.report import money
from ec2.remote.trainrun import TRAINER_SIGNAL, train_command

Say = Callable[[str], None]
NAME = "smoke"
TRAIN_CONFIG = "configs/demo.yaml"
# The demo's run, long enough that the interruption lands while it trains on a fast GPU (300 steps
# take 22 s on a 2-core CPU; the rehearsal's FIS role and experiment take seconds to a minute).
STEPS = 3000
GOAL_USD = 0.30
# Seconds after the run started before the interruption: at once (the notice watcher holds the
# notice until the trainer has its handlers; the trainer saves at its next step when it comes).
REHEARSE_AFTER_S = 0.0
SKIPPED = "skipped"

# (stage, what it does, the AWS calls it makes) — the dry run prints these.
STAGES = [
    (
        "doctor",
        "the account, region, quotas and the prefix checked",
        "sts:GetCallerIdentity, "
        "ec2:Describe*, servicequotas:GetServiceQuota, s3:ListBucket/GetBucketLocation (reads only)",
    ),
    (
        "sync the demo",
        "a small synthetic dataset (4 sessions) uploaded to <uri>/data",
        "s3:ListObjectsV2, s3:PutObject",
    ),
    (
        "launch",
        "the cheapest GPU spot type/zone of instance_types with capacity",
        "ec2:DescribeSpotPriceHistory, iam:CreateRole/PutRolePolicy/CreateInstanceProfile, "
        "ec2:ImportKeyPair/CreateSecurityGroup (once), ec2:RunInstances (spot)",
    ),
    ("setup", "the code synced and the environment prepared over SSH", "none (SSH)"),
    (
        "train",
        f"{TRAIN_CONFIG} for {STEPS} steps, checkpoints to <uri>/checkpoints",
        "s3:PutObject (instance role)",
    ),
    (
        "rehearse",
        "a real spot interruption through AWS FIS (2-minute notice)",
        "iam:CreateRole/PutRolePolicy (spotrun-fis-REGION, once), fis:CreateExperimentTemplate, "
        "fis:StartExperiment, fis:GetExperiment, fis:DeleteExperimentTemplate",
    ),
    ("resume", "a replacement instance resumes from the checkpoint in S3", "ec2:RunInstances (spot)"),
    ("download", "the outputs and the run history to the laptop", "none (rsync over SSH)"),
    ("terminate", "every instance of the smoke ended (also on failure or Ctrl-C)", "ec2:TerminateInstances"),
]


def plan(cfg: AwsConfig, uri: str) -> list[str]:
    """--dry-run: what each stage would do and call. No AWS call is made."""
    uri = uri.rstrip("/")
    lines = [
        f"fab smoke --uri {uri} (dry run: nothing is created, nothing is spent)",
        f"  name {NAME!r}, region {cfg.region or '(from the profile)'}, instance_types "
        f"{', '.join(cfg.instance_types)}; data {uri}/data, checkpoints {uri}/checkpoints",
    ]
    for k, (stage, what, calls) in enumerate(STAGES, 1):
        lines.append(f"  {k}. {stage:<14} {what.replace('<uri>', uri)}")
        lines.append(f"     {'':<14} AWS: {calls}")
    lines.append(
        f"  goal: under ${GOAL_USD:.2f} in all (instance-seconds x spot price; FIS bills per action-minute)"
    )
    return lines


@dataclass
class Verdicts:
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (stage, ok|FAILED|skipped, detail)
    instances_usd: float | None = None
    fis_usd: float | None = None

    @property
    def cost_usd(self) -> float | None:
        if self.instances_usd is None:
            return None
        return self.instances_usd + (self.fis_usd or 0.0)

    def add(self, stage: str, ok: bool | None, detail: str, out: Say) -> None:
        verdict = SKIPPED if ok is None else ("ok" if ok else "FAILED")
        self.rows.append((stage, verdict, detail))
        out(f"smoke: {stage:<14} {verdict:<7} {detail}")

    @property
    def passed(self) -> bool:
        return bool(self.rows) and all(v == "ok" for _, v, _ in self.rows)


def demo_data(s3, data_uri: str, out: Say) -> str:
    """The demo's synthetic dataset, made here and uploaded (what is there already is skipped)."""
    from ml.data.synthetic import write_synthetic

    with tempfile.TemporaryDirectory(prefix="spotrun-smoke-") as tmp:
        write_synthetic(Path(tmp), n_sessions=4, n_trials=12, seed=0)
        result = datasets.push(s3, tmp, data_uri, say=out)
    return f"{data_uri}: {result.line()}"


def journey_plan(
    cfg: AwsConfig, uri: str, overrides: list[str], setup_python, no_gpu, poll_s, imds_poll_s
) -> Plan:
    """`fab run`'s plan for the demo, its data and checkpoints under the prefix, one recovery."""
    data_uri, ckpt_uri = f"{uri}/data", f"{uri}/checkpoints"
    overrides = [
        f"num_training_batches={STEPS}",
        f"dataset.dataset_dir={data_uri}",
        f"checkpoint_dir={ckpt_uri}",
        "output_dir=trained_models/smoke",
        *overrides,
    ]
    return Plan(
        command=train_command(cfg.remote_dir, TRAIN_CONFIG, overrides),
        output_dir="trained_models/smoke",
        checkpoint_dir=ckpt_uri,
        signal=TRAINER_SIGNAL,
        poll_s=poll_s,
        imds_poll_s=imds_poll_s,
        max_recoveries=1,  # the rehearsal's; a second interruption ends the smoke
        setup_python=setup_python,
        require_gpu=not no_gpu,
        train_config=TRAIN_CONFIG,
        overrides=overrides,
        s3=tuple(s3scope.for_run(data_uri, ckpt_uri, None)),
    )


def _events(h: history.RunHistory, kind: str) -> list[dict]:
    return [e for e in h.events if e.get("event") == kind]


def run(
    cfg: AwsConfig,
    uri: str,
    outputs: Path,
    *,
    overrides: list[str] = (),
    setup_python: str | None = None,
    no_gpu: bool = False,
    poll_s: float = 10.0,
    imds_poll_s: float = 5.0,
    rehearse_poll_s: float = 5.0,
    rehearse_after_s: float = REHEARSE_AFTER_S,
    out: Say = print,
) -> Verdicts:
    """The smoke, stage by stage; every instance of it terminated however it ends."""
    uri = uri.rstrip("/")
    v = Verdicts()
    region = account.resolve_region(cfg)
    ec2 = aws.client("ec2", region, cfg.profile)
    p = journey_plan(cfg, uri, list(overrides), setup_python, no_gpu, poll_s, imds_poll_s)
    journey = Journey(cfg, NAME, p, out=out, ask=lambda _q: "t", outputs=outputs)  # Ctrl-C: terminate
    rehearsal: dict = {}
    try:
        try:
            doctor.preflight(cfg, NAME, doctor.needs_for(cfg, None, p.checkpoint_dir), out=out)
            v.add("doctor", True, "every check passed or unknown", out)
        except ToolkitError as e:
            v.add("doctor", False, str(e), out)
            return v
        try:
            detail = demo_data(aws.client("s3", region, cfg.profile), f"{uri}/data", out)
            v.add("sync the demo", True, detail, out)
        except ToolkitError as e:
            v.add("sync the demo", False, str(e), out)
            return v
        worker = threading.Thread(
            target=_rehearse_when_training,
            args=(cfg, outputs, rehearse_poll_s, rehearse_after_s, rehearsal, out),
            daemon=True,
        )
        worker.start()
        try:
            journey.run()
        except ToolkitError as e:
            rehearsal.setdefault("error", f"the run ended first: {e}")
            journey_error = str(e)
        else:
            journey_error = None
        worker.join(timeout=60)
        _judge(v, journey.h, rehearsal, journey_error, out)
    finally:
        left = [i.instance_id for i in instances.find_instances(ec2, NAME)]
        if left:
            instances.terminate_instances(ec2, left, wait=True)
        h = journey.h
        if v.rows and v.rows[-1][0] != "terminate" and any(r[0] == "sync the demo" for r in v.rows):
            gone = not instances.find_instances(ec2, NAME)
            detail = "no instance of the smoke is left" + (
                f" ({', '.join(left)} terminated here)" if left else ""
            )
            v.add("terminate", gone, detail, out)
        v.instances_usd = h.total_cost_usd
        report = rehearsal.get("report")
        v.fis_usd = report.fis_usd if report is not None else None
    return v


def _rehearse_when_training(
    cfg, outputs: Path, poll_s: float, after_s: float, rehearsal: dict, out: Say
) -> None:
    """``after_s`` after attempt 1 started training (run.json is written at events, not at every
    step, so its "started" event is the clock): the rehearsal, its report kept for the verdicts."""
    path = history.history_path(outputs)
    deadline = time.monotonic() + 1800
    started = None
    while time.monotonic() < deadline and "error" not in rehearsal:
        h = history.load(path) if path.is_file() else None
        if h is not None and h.status != "running":
            return
        if h is not None and started is None and _events(h, "started"):
            started = time.monotonic()
        if started is not None and time.monotonic() - started >= after_s:
            break
        time.sleep(poll_s)
    else:
        return
    try:
        rehearsal["report"] = rehearse.rehearse(
            cfg, NAME, outputs=outputs, budgets=rehearse.Budgets(poll=poll_s), out=out
        )
    except ToolkitError as e:
        rehearsal["error"] = str(e)


def _judge(v: Verdicts, h: history.RunHistory, rehearsal: dict, error: str | None, out: Say) -> None:
    """The stages the journey ran, read from its record."""
    a1 = h.attempts[0] if h.attempts else None
    a2 = h.attempts[1] if len(h.attempts) > 1 else None
    launched = a1 is not None and a1.instance_id is not None
    v.add(
        "launch",
        launched,
        f"{a1.instance_id} {a1.instance_type} in {a1.zone} ({a1.market})"
        if launched
        else error or "no instance",
        out,
    )
    setup = bool(_events(h, "setup"))
    v.add(
        "setup", setup if launched else None, "code synced, environment ready" if setup else error or "", out
    )
    trained = a1 is not None and a1.last_step is not None
    v.add(
        "train",
        trained if setup else None,
        f"attempt 1 reached step {a1.last_step}" if trained else error or "",
        out,
    )
    report = rehearsal.get("report")
    if report is not None:
        v.add(
            "rehearse",
            True,
            f"{report.instance_id} interrupted by AWS FIS; "
            f"exit code {report.exit_code}, steps lost {report.steps_lost}",
            out,
        )
        for line in report.lines():
            out(f"    {line}")
    else:
        v.add("rehearse", False if trained else None, rehearsal.get("error", "not started"), out)
    resumed = a2 is not None and a2.resumed_step is not None
    v.add(
        "resume",
        resumed if report is not None else None,
        f"{a2.instance_id} resumed at step {a2.resumed_step}; the run {h.status}" if resumed else error or "",
        out,
    )
    downloaded = bool(_events(h, "downloaded")) and h.status == "finished"
    v.add(
        "download",
        downloaded if trained else None,
        f"outputs in {Path(h.path).parent}" if downloaded else error or f"the run {h.status}",
        out,
    )
    finished = a2 is not None and a2.outcome == Outcome.FINISHED
    if not finished and error is None:
        out(f"note: the run ended {h.status}")


def total_line(v: Verdicts) -> str:
    goal = ""
    if v.cost_usd is not None:
        goal = " (under the goal" if v.cost_usd < GOAL_USD else " (OVER the goal"
        goal += f" of ${GOAL_USD:.2f})"
    ok = sum(r[1] == "ok" for r in v.rows)
    verdict = "passed" if v.passed else "FAILED"
    return (
        f"smoke {verdict}: {ok}/{len(v.rows)} stages ok; total cost {money(v.cost_usd)}{goal} = "
        f"instances {money(v.instances_usd)} + AWS FIS {money(v.fis_usd)}"
    )
