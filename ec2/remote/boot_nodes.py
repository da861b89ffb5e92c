"""The boot of one member of a detached cluster (`fab run --detach --nodes N`): runs (as root) at
every launch of every instance of the run's N groups (group spotrun-NAME-K launches node K), and
keeps the run going with no laptop, together with the other members' boots:

    python -m ec2.remote.boot_nodes --node K --root s3://bucket/prefix --group spotrun-NAME-K
        [--shutdown 'shutdown -h'] [--poll 5]

1. reads the run's record (a record it cannot read gives up as ec2.remote.boot does: its own group
   to desired 0, the cause on its tag); a run that ended, or was stopped, runs nothing more;
2. sets up the venv (as ec2.remote.boot); a member whose setup fails ends the run (setup-failed):
   the others would wait for it in vain;
3. joins the next attempt in S3 (ec2.remote.detached_members: its instance and private address),
   then waits, bounded by the record's join_timeout_s and saying what it waits for, until all N
   members joined it; node 0's address is the attempt's rendezvous endpoint;
4. starts the trainer under torchrun (c10d at node 0, one process per GPU) in the notice watcher
   with `--ranks`, as `fab run --nodes N` does (ec2.remote.trainrun.Rendezvous);
5. when the trainer exits, records its end (its own end file, and its part of the attempt in
   state.json by compare-and-swap), and:
   - exit 0: finished, every member's group to desired 0;
   - exit 75 after a notice on this node: preempted; its group is left alone (AWS replaces this
     instance, and the replacement joins the next attempt);
   - exit 75 with no notice here: the ranks stopped together because a notice reached another
     member (the trainer's per-step all-reduced stop flag), or `fab stop`, or the deadline. The
     first goes on: this boot, on the same instance, joins the next attempt and waits for the
     replacement; the other two end the run (every group to 0);
   - any other exit: the run failed, every member's group to desired 0.

Identity, region and private address come from the metadata service; S3 and Auto Scaling through
the instance role. Standard library, boto3 and common/ only.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import botocore.exceptions

from common import aws
from common.attempt import Outcome, RunStatus
from common.errors import STOPPED_RESUMABLE as RESUMABLE_EXIT
from ec2.errors import ToolkitError
from ec2.remote import detached, gpu, startrun
from ec2.remote import detached_members as members
from ec2.remote.boot import DEFAULT_SHUTDOWN, Boot, local_path, log, shutdown_argv
from ec2.remote.imds import Identity, Imds, ImdsUnreachable
from ec2.remote.startrun import Local
from ec2.remote.trainrun import Rendezvous

# How often a waiting member repeats what it waits for in the boot log.
SAY_EVERY_S = 60.0


def member_group(name: str, node: int) -> str:
    """Node K's group (ec2.cloud.asg.group_name of the member name NAME-K)."""
    return f"spotrun-{name}-{int(node)}"


def outcome_for(code: int, noticed: bool, stop_requested: bool, deadline: bool) -> Outcome:
    """How attempt k ended on this node (a pure function: tests read it). LOST: stopped at one step
    with the others because a notice reached another member; this node goes on."""
    if code == 0:
        return Outcome.FINISHED
    if code != RESUMABLE_EXIT:
        return Outcome.FAILED
    if noticed:
        return Outcome.PREEMPTED
    if stop_requested:
        return Outcome.STOPPED
    if deadline:
        return Outcome.DEADLINE
    return Outcome.LOST


class NodeBoot(Boot):
    def __init__(self, root: str, identity: Identity, node: int, private_ip: str, **kwargs):
        super().__init__(root, identity, **kwargs)
        self.node = int(node)
        self.private_ip = private_ip
        self.present = 0  # the GPUs on this machine (nvidia-smi -L), counted once setup begins

    # --- the record, shared with the other members -----------------------------------------------
    def update(self, change) -> None:
        self.state = members.update(self.s3, self.root, change)

    def stop_all(self, why: str) -> None:
        """Every member's group to desired 0 (the run is over for all of them)."""
        for k in range(self.state.nodes):
            group = member_group(self.state.name, k)
            log(f"{why}: setting desired capacity of {group} to 0")
            try:
                self.asg.set_desired_capacity(
                    AutoScalingGroupName=group, DesiredCapacity=0, HonorCooldown=False
                )
            except botocore.exceptions.ClientError as e:
                log(f"could not set desired capacity of {group} ({aws.error_code(e)}): {e}")

    def finish(self, attempt: int, outcome: Outcome, why: str, code: int | None = None) -> int:
        """This node's end of `attempt`, in S3; a run that is over stops every group."""
        members.end(self.s3, self.root, attempt, self.node, {"outcome": str(outcome), "exit_code": code})
        self.update(lambda s: members.ended(s, attempt, self.node, outcome, code))
        log(f"attempt {attempt} on node {self.node}: {outcome} ({why}); run {self.state.status}")
        if self.state.ended:
            self.stop_all(f"run {self.state.status}")
        return 0

    def guard(self, attempt: int) -> RunStatus | None:
        """Why attempt `attempt` must not start (the run's status then), or None."""
        s = self.state
        if s.ended:
            return s.status
        if s.stop_requested:
            return RunStatus.STOPPED
        if attempt > s.max_attempts:
            return RunStatus.GAVE_UP
        if s.seconds_left() <= 0:
            return RunStatus.DEADLINE
        return None

    def end_run(self, status: RunStatus, why: str) -> int:
        def change(s):
            if not s.ended:
                s.status = status

        self.update(change)
        self.stop_all(why)
        self.shut_down(None, f"spotrun: {why}")
        return 0

    # --- meeting the others -------------------------------------------------------------------------
    def wait_members(self, attempt: int) -> dict[int, dict] | str:
        """All N join files of `attempt`, or why the wait ended without them."""
        s = self.state
        began = time.monotonic()
        said = -SAY_EVERY_S
        while True:
            joins, ends = members.read(self.s3, self.root, attempt)
            if len(joins) >= s.nodes and all(k in joins for k in range(s.nodes)):
                return joins
            if ends:
                return f"node(s) {', '.join(map(str, sorted(ends)))} ended attempt {attempt} before it began"
            fresh = detached.load(self.s3, self.root)
            if fresh is not None and (fresh.ended or fresh.stop_requested):
                self.state = fresh
                return f"the run {'was stopped' if fresh.stop_requested else 'ended: ' + str(fresh.status)}"
            waited = time.monotonic() - began
            if waited > s.join_timeout_s:
                missing = [k for k in range(s.nodes) if k not in joins]
                return (
                    f"node(s) {', '.join(map(str, missing))} did not join attempt {attempt} in "
                    f"{s.join_timeout_s:g} s (join_timeout_s): no capacity for a replacement?"
                )
            if waited - said >= SAY_EVERY_S:
                missing = [k for k in range(s.nodes) if k not in joins]
                bucket, key = detached.key_of(self.root, members.NODES, f"attempt-{attempt}")
                log(
                    f"waiting for node(s) {', '.join(map(str, missing))} to join attempt {attempt} "
                    f"(s3://{bucket}/{key}/join-K.json), {waited:.0f} of {s.join_timeout_s:g} s"
                )
                said = waited
            time.sleep(self.poll_s)

    def identity_fields(self) -> dict:
        m = self.me
        gpus = gpu.processes_for(self.present, self.state.gpus) if self.present else 0
        return {"instance_type": m.instance_type, "zone": m.zone, "market": m.market, "gpus": gpus}

    # --- the trainer --------------------------------------------------------------------------------
    def gpus_present(self) -> int:
        listing = subprocess.run(gpu.COUNT_COMMAND, shell=True, capture_output=True, text=True).stdout
        return gpu.parse_count(listing)

    def start_member(self, attempt: int, host: str) -> Path | None:
        """This member's part of attempt `attempt`, through the one start path (ec2.remote.startrun):
        torchrun with node 0 of this attempt (`host`) as the rendezvous."""
        s = self.state
        rdzv = Rendezvous(s.nodes, host, f"{s.name}-{attempt}", self.node, s.rdzv_port)
        try:
            started = startrun.start(
                Local(s.login_user), s.remote_dir, self.spec(), present=self.present, rendezvous=rdzv
            )
        except ToolkitError as e:
            log(f"starting the run failed: {str(e)[-300:]}")
            return None
        log(
            f"started torchrun node {self.node} of {s.nodes}, rendezvous {host}:{s.rdzv_port}, "
            f"{started.procs} process(es)"
        )
        return local_path(started.run_dir, s.login_user)

    def keep_node_log(self, run_dir: Path, attempt: int) -> str | None:
        log_file = run_dir / "log"
        if not log_file.is_file():
            return None
        text = log_file.read_text(errors="replace")
        return detached.put_text(self.s3, self.root, f"logs/attempt-{attempt}-node-{self.node}.log", text)

    # --- the whole boot -----------------------------------------------------------------------------
    def run(self) -> int:
        why = self.read_record()
        if why is not None:
            return self.give_up(why)
        if (status := self.guard(1)) is not None:
            return self.end_run(status, f"the run is {status}: nothing to start")
        left_min = max(1, int(self.state.seconds_left() // 60))
        self.shut_down(left_min, "spotrun: the run's deadline")
        log(f"node {self.node} of {self.state.nodes} on {self.me.instance_id} ({self.private_ip})")
        self.present = self.gpus_present()
        if not self.setup():
            attempt = members.attempt_to_join(self.s3, self.root, self.node)
            self.finish(attempt, Outcome.SETUP_FAILED, "setup failed")
            self.shut_down(None, "spotrun: setup failed")
            return 0
        while True:
            attempt = members.attempt_to_join(self.s3, self.root, self.node)
            self.state = detached.load(self.s3, self.root) or self.state
            if (status := self.guard(attempt)) is not None:
                return self.end_run(status, f"attempt {attempt}: the run is {status}")
            where = members.join(self.s3, self.root, attempt, self.node, self.me.instance_id, self.private_ip)
            log(f"joined attempt {attempt} of {self.state.max_attempts} ({where})")
            joins = self.wait_members(attempt)
            if isinstance(joins, str):
                if self.state.ended or self.state.stop_requested:
                    return self.end_run(self.guard(attempt) or RunStatus.STOPPED, joins)
                members.end(self.s3, self.root, attempt, self.node, {"outcome": "lost", "why": joins})
                return self.end_run(RunStatus.GAVE_UP, joins)
            if self.node == 0:
                self.update(lambda s, j=joins, a=attempt: members.started(s, a, j, self.identity_fields()))
            run_dir = self.start_member(attempt, joins[0]["private_ip"])
            if run_dir is None:
                return self.finish(attempt, Outcome.FAILED, "the run did not start")
            code = self.wait(run_dir)
            log_uri = self.keep_node_log(run_dir, attempt)
            self.keep_outputs()
            noticed = (run_dir / "notice").exists()
            deadline = self.state.status is RunStatus.DEADLINE  # Boot.wait marks it when it signals
            fresh = detached.load(self.s3, self.root)
            outcome = outcome_for(code, noticed, bool(fresh and fresh.stop_requested), deadline)
            members.end(self.s3, self.root, attempt, self.node, {"outcome": str(outcome), "exit_code": code})
            self.update(
                lambda s, a=attempt, o=outcome, c=code, u=log_uri: members.ended(s, a, self.node, o, c, u)
            )
            log(
                f"attempt {attempt} on node {self.node}: trainer exited {code}: {outcome}; "
                f"run {self.state.status}"
            )
            if self.state.ended:
                self.stop_all(f"run {self.state.status}")
                return 0
            if outcome is Outcome.PREEMPTED:
                return 0  # AWS takes this instance; the group launches node K's replacement
            # LOST: another member was noticed; this one stays and meets its replacement.


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ec2.remote.boot_nodes", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--node", type=int, required=True, help="this member's node number (its group's)")
    parser.add_argument("--root", required=True, help="the run's S3 root (holds state.json)")
    parser.add_argument(
        "--group", help="this member's Auto Scaling group (stopped when the record is unreadable)"
    )
    parser.add_argument("--shutdown", default=DEFAULT_SHUTDOWN)
    parser.add_argument("--poll", type=float, default=5.0, help="seconds between looks at the run and S3")
    args = parser.parse_args(argv)
    try:
        imds = Imds()
        identity = imds.identity()
        private_ip = imds.private_ip()
    except ImdsUnreachable as e:
        log(f"no instance metadata ({e}): a detached run's boot only runs on its EC2 instance")
        return 2
    if not private_ip:
        log("the metadata service gave no private address (local-ipv4): the others cannot reach this node")
        return 2
    log(f"{identity.instance_id} ({identity.instance_type}, {identity.zone}), node {args.node}")
    boot = NodeBoot(
        args.root, identity, args.node, private_ip, shutdown=args.shutdown, poll_s=args.poll, group=args.group
    )
    try:
        return boot.run()
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, members.UpdateFailed) as e:
        log(f"AWS call failed: {e}; shutting down")
        subprocess.run(shutdown_argv(args.shutdown, None, "spotrun: boot failed"), check=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
