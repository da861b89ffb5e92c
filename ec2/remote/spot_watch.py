"""The spot-notice watcher: runs on the instance beside any command and acts on the two-minute
interruption notice.

    python -m ec2.remote.spot_watch --run-dir DIR [--signal USR1] [--checkpoint-dir PATH]
                             [--upload-to s3://...] [--poll 5] [--grace S] [--ranks N]
                             [--on-rebalance none|checkpoint] -- CMD ...

It starts CMD as a child in its own process group and exits with CMD's exit code. Every `--poll`
seconds it asks the metadata service (IMDSv2, address from SPOTRUN_IMDS_URL) for
`spot/instance-action` and the rebalance recommendation. On a notice:

1. writes RUN_DIR/notice (the notice JSON and when it was seen);
2. sends `--signal` to CMD's main process (our trainer checkpoints within the step and exits 75;
   `bash -c` execs a single command, so that is the trainer itself);
3. waits for CMD to exit, bounded by the notice's deadline less what step 4 needs: UPLOAD_RESERVE_S
   when the watcher copies a local folder itself, LIST_RESERVE_S when the checkpoint dir is s3://
   (the trainer uploads it and its exit waits for the upload, so the wait must cover it);
4. copies a local `--checkpoint-dir` to `--upload-to` (only files S3 lacks), or, when the
   checkpoint dir is itself s3://, notes what is there and whether the newest last.pt reached it
   (`newest_in_s3`: the trainer exited 75, which it does only once its copy is up, or S3's
   last.pt was written after the signal);
5. writes RUN_DIR/preempted (atomically) with the timings; `fab status` then says "preempted".

On a spot instance (IMDS `instance-life-cycle` is `spot`) CMD gets SPOTRUN_NOTICE_S: the trainer
times its first checkpoint against the notice (ml/notice_fit.py). A rebalance recommendation
(advice that an interruption is more likely) is logged; with `--on-rebalance checkpoint` CMD also
gets SIGUSR2, on which the trainer saves a checkpoint at its next step and trains on (once CMD has
announced its handlers in RUN_DIR/ranks, so the signal never kills a trainer still starting).
https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/rebalance-recommendations.html

With `--ranks N` the command is spotrun's trainer: N ranks under torchrun on this machine, or with
N=1 possibly the trainer alone. The watcher gives each rank the folder RUN_DIR/ranks
(SPOTRUN_RANKS_DIR); each rank writes its pid there once it handles the signal, and its exit code
when it ends (ml/stopping.py). A notice goes to the ranks that have announced themselves, and to
each later one as it does: a trainer still importing torch would die of SIGUSR1's default action
(exit 138, a failure in the record) instead of stopping resumably. Under torchrun the agent would
answer a signal by stopping its workers with SIGTERM and killing them after a timeout, and it exits
1 whatever its workers exit with: so a notice, or a signal passed on, goes to every rank (not the
agent); the ranks stop together at the next step (their per-step collective), rank 0 saves, and
when all N ranks report the same exit code (75) that is the run's exit code rather than torchrun's.

No metadata service (not an EC2 machine) → one log line, and CMD runs on unwatched.
Runs with the instance's Python: standard library and boto3 only.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import botocore.exceptions

from common import pidfile
from common.atomic import atomic_write_json
from common.s3uri import is_s3, s3_problem
from ec2.remote.imds import LIFECYCLE, Imds, ImdsUnreachable, Notice
from ml.notice_fit import NOTICE_ENV
from ml.stopping import RANKS_DIR_ENV, SAVE_NOW

# Kept back from the notice's deadline for the watcher's own S3 copy and the status file.
UPLOAD_RESERVE_S = 30.0
# With an s3:// checkpoint dir the trainer uploads and the watcher only lists and writes the
# status file: keep less back, so the trainer's upload may use the rest of the two minutes.
LIST_RESERVE_S = 10.0
# S3's LastModified has whole seconds: a last.pt written just after the signal may read a second early.
CLOCK_SLACK_S = 1.0
ON_REBALANCE = ("none", "checkpoint")
# When the notice carries no usable time: AWS promises two minutes.
NOTICE_LEAD_S = 120.0
MIN_WAIT_S = 5.0
PID_FILE = "watcher.pid"
Announced = tuple[int, "str | None"]  # a rank's pid and start time
# While waiting for the command after a notice: how often to look for ranks that started since.
RANK_LOOK_S = 0.5


def log(msg: str) -> None:
    print(f"spot_watch: {msg}", file=sys.stderr, flush=True)


def parse_signal(name: str) -> signal.Signals:
    text = name.upper()
    if text.isdigit():
        return signal.Signals(int(text))
    try:
        return signal.Signals[text if text.startswith("SIG") else "SIG" + text]
    except KeyError:
        raise argparse.ArgumentTypeError(f"unknown signal {name!r} (e.g. USR1, TERM, INT)") from None


def exit_status(returncode: int) -> int:
    """A shell-style status: a child killed by signal N is 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


class Watcher:
    def __init__(self, args: argparse.Namespace, imds: Imds | None = None):
        self.args = args
        self.run_dir = Path(args.run_dir)
        self.imds = imds or Imds(args.imds_url)
        self.child: subprocess.Popen | None = None
        self.imds_down = False
        self.rebalance_seen = False
        self.ranks_dir = self.run_dir / "ranks" if args.ranks > 0 else None
        # Where the trainer's processes announce their handlers: the ranks, or (for a rebalance's
        # save) the one trainer.
        save_on_rebalance = args.on_rebalance == "checkpoint"
        self.announce_dir = self.run_dir / "ranks" if args.ranks > 0 or save_on_rebalance else None
        self.rebalance_save_pending = False
        self.signalled: dict[int, Announced] = {}  # the ranks sent the stop signal

    # --- the child -------------------------------------------------------------------------------
    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if self.announce_dir is not None:
            self.announce_dir.mkdir(exist_ok=True)
            for old in self.announce_dir.glob("rank-*"):  # a previous run's ranks (fab train --force)
                old.unlink()
            env[RANKS_DIR_ENV] = str(self.announce_dir)
        if self.on_spot():
            env[NOTICE_ENV] = f"{NOTICE_LEAD_S:g}"
            log(
                f"spot instance: {NOTICE_ENV}={NOTICE_LEAD_S:g} for the command (spotrun's trainer "
                "times its first checkpoint against the notice)"
            )
        self.child = subprocess.Popen(self.args.command, start_new_session=True, env=env)
        # Who to signal for a graceful stop (`fab stop`, a detached run's deadline): TERM to us is
        # passed on to the command, which checkpoints and exits 75 (runs.graceful_stop_command).
        pidfile.announce(self.run_dir / PID_FILE)
        # A Ctrl-C in `fab attach`, a HUP from tmux or a TERM from shutdown reaches only us (the child
        # has its own group): pass it on, and let the child decide.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._forward)

    def _forward(self, signum, _frame) -> None:
        if self.child and self.child.poll() is None:
            self.send(signal.Signals(signum), agent_fallback=True)

    def on_spot(self) -> bool:
        """Whether this is a spot instance (no metadata service: not EC2, so no)."""
        try:
            return (self.imds.get(LIFECYCLE) or "").strip() == "spot"
        except ImdsUnreachable:
            return False  # check() says so in its own line

    # --- the ranks (--ranks N: the command is the trainer, alone or under torchrun) ------------------
    def _rank_files(self, suffix: str) -> dict[int, str]:
        found = {}
        for path in self.announce_dir.glob(f"rank-*.{suffix}"):
            try:
                found[int(path.name.split("-", 1)[1].split(".", 1)[0])] = path.read_text().strip()
            except (ValueError, OSError):
                continue  # not ours, or being replaced
        return found

    def rank_pids(self) -> dict[int, Announced]:
        """Each announced rank's (pid, start time): common/pidfile.py."""
        return {r: found for r, text in self._rank_files("pid").items() if (found := pidfile.parse(text))}

    def send(self, sig: signal.Signals, only_new: bool = False, agent_fallback: bool = False) -> str:
        """`sig` to the command: its main process, or with --ranks every rank that has announced
        itself. With no rank yet, `agent_fallback` (a TERM/INT/HUP passed on, which torchrun's
        agent handles by stopping its workers) sends it to the command; the notice's USR1 never goes
        there (the agent would die of it and leave its workers running). Says to whom."""
        if self.ranks_dir is None and (sig != SAVE_NOW or self.announce_dir is None):
            os.kill(self.child.pid, sig)
            return f"pid {self.child.pid}"
        pids = self.rank_pids()
        if not pids and agent_fallback:
            os.kill(self.child.pid, sig)
            return f"the command (pid {self.child.pid}; no rank has announced itself yet)"
        targets = sorted(pids.items())
        if sig == SAVE_NOW:
            # One save per recommendation: the ranks agree at every step boundary, and any rank's
            # request is a save on every rank (ml/trainer.py), so one rank asked is all of them.
            # Each asked, a rank whose signal landed just after the others' boundary asked again:
            # two saves, measured on 2 ranks at 0.04 s a step.
            targets = targets[:1]
        sent = []
        for rank, (pid, started) in targets:
            if only_new and self.signalled.get(rank) == (pid, started):
                continue
            if not pidfile.send(pid, started, sig):
                continue  # that rank has ended already (and its pid may be another process's)
            self.signalled[rank] = (pid, started)
            sent.append(f"{rank}:{pid}")
        return f"rank(s) {', '.join(sent) or 'none'}"

    def exit_code(self, returncode: int) -> int:
        """The command's exit status; with --ranks, the ranks' own when all N agree (torchrun
        itself exits 1 when any worker exits non-zero, 75 included)."""
        status = exit_status(returncode)
        if self.ranks_dir is None or status == 0:
            return status
        codes = set(self._rank_files("exit").values())
        reported = len(self._rank_files("exit"))
        if reported == self.args.ranks and len(codes) == 1 and (code := codes.pop()).isdigit():
            return int(code)
        return status

    def wait_child(self, timeout: float | None) -> int | None:
        try:
            return self.child.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    # --- metadata -----------------------------------------------------------------------------------
    def check(self) -> Notice | None:
        try:
            notice = self.imds.instance_action()
            if not self.rebalance_seen and (body := self.imds.rebalance()) is not None:
                # Advice only (capacity is getting scarce); the interruption notice may follow.
                self.rebalance_seen = True
                if self.args.on_rebalance == "checkpoint":
                    log(f"rebalance recommendation: {body.strip()} (on_rebalance: checkpoint)")
                    self.rebalance_save_pending = True
                else:
                    log(f"rebalance recommendation: {body.strip()} (no action; still watching)")
            if self.rebalance_save_pending and notice is None:
                self.ask_for_save()
        except ImdsUnreachable as e:
            if not self.imds_down:
                log(
                    f"instance metadata not reachable ({e}); not an EC2 instance? the command runs "
                    "on without spot-notice handling"
                )
            self.imds_down = True
            return None
        if self.imds_down:
            log("instance metadata reachable again; watching for spot notices")
            self.imds_down = False
        return notice

    def ask_for_save(self) -> None:
        """SIGUSR2 to the trainer (its lowest rank here: every rank saves with it), once it has
        announced its handlers: it saves a checkpoint at its next step and trains on. Until then,
        asked again at the next poll."""
        if self.child.poll() is not None or not self.rank_pids():
            return
        to = self.send(SAVE_NOW)
        self.rebalance_save_pending = False
        log(f"sent {SAVE_NOW.name} to {to}: the trainer saves a checkpoint at its next step and trains on")

    def watch(self) -> int:
        self.start()
        log(
            f"watching {self.imds.base_url} every {self.args.poll:g} s for spot notices "
            f"(command pid {self.child.pid})"
        )
        while True:
            notice = self.check()
            if notice is not None:
                return self.on_notice(notice)
            code = self.wait_child(self.args.poll)
            if code is not None:
                return self.exit_code(code)

    # --- the notice ---------------------------------------------------------------------------------
    def deadline_wait(self, notice: Notice) -> float:
        if self.args.grace is not None:
            return self.args.grace
        left = notice.seconds_left()
        left = NOTICE_LEAD_S if left is None else left
        return max(left - self.reserve_s(), MIN_WAIT_S)

    def reserve_s(self) -> float:
        """What the watcher keeps back from the deadline for its own step after the command."""
        ckpt = self.args.checkpoint_dir
        return LIST_RESERVE_S if ckpt and is_s3(ckpt) else UPLOAD_RESERVE_S

    def on_notice(self, notice: Notice) -> int:
        seen = time.time()
        record = {
            "action": notice.action,
            "time": notice.time,
            "seen_at": seen,
            "seconds_left": notice.seconds_left(seen),
            "raw": notice.raw,
        }
        atomic_write_json(self.run_dir / "notice", record)
        sig = self.args.signal
        signalled = time.time()
        to = self.send(sig) if self.child.poll() is None else "nobody (the command had ended)"
        log(f"spot interruption notice: {notice.action} at {notice.time or '?'}; sent {sig.name} to {to}")
        wait = self.deadline_wait(notice)
        code = self.wait_after_signal(sig, signalled + wait)
        exited = time.time() if code is not None else None
        if code is None:
            log(f"command still running {wait:.0f} s after {sig.name}; saving what is there")
        else:
            log(f"command exited {self.exit_code(code)} {exited - signalled:.1f} s after {sig.name}")
        checkpoint = self.secure_checkpoint(signalled, self.exit_code(code) if code is not None else None)
        done = time.time()
        atomic_write_json(
            self.run_dir / "preempted",
            {
                **record,
                "signal": sig.name,
                "signalled_at": signalled,
                "command_exited_at": exited,
                "command_exit_code": self.exit_code(code) if code is not None else None,
                "checkpoint": checkpoint,
                "done_at": done,
                "seconds_notice_to_safe": round(done - seen, 3),
            },
        )
        newest = checkpoint.get("newest_in_s3")
        if newest is False:
            where, why = checkpoint.get("uri"), checkpoint.get("why")
            log(f"preempted: the newest checkpoint did NOT reach {where} ({why})")
        else:
            log(f"preempted: checkpoint secured {done - seen:.1f} s after the notice")
        if code is None:
            code = self.child.wait()  # the machine goes away around us; keep the pane honest
        return self.exit_code(code)

    def wait_after_signal(self, sig: signal.Signals, deadline: float) -> int | None:
        """The command's return code, or None at the deadline. With --ranks, a rank that starts
        while we wait (the notice came as the run started) gets the signal too."""
        if self.ranks_dir is None:
            return self.wait_child(max(deadline - time.time(), 0))
        while (left := deadline - time.time()) > 0:
            code = self.wait_child(min(RANK_LOOK_S, left))
            if code is not None:
                return code
            if (late := self.send(sig, only_new=True)) != "rank(s) none":
                log(f"sent {sig.name} to {late}, started since the notice")
        return None

    def secure_checkpoint(self, signalled: float = 0.0, exit_code: int | None = None) -> dict:
        ckpt, dest = self.args.checkpoint_dir, self.args.upload_to
        if not ckpt:
            return {"state": "unknown", "why": "no --checkpoint-dir given"}
        from ec2.remote import s3copy

        if is_s3(ckpt):
            # The trainer copied it up itself before exiting; record what S3 holds, and whether
            # its newest last.pt is there: exit 75 comes only after the trainer's upload finished
            # (ml/trainer.py finish), and a last.pt written after the signal is the notice's.
            try:
                bucket, prefix = s3copy.split_uri(ckpt)
                objects = s3copy.remote_objects(self.s3(), bucket, prefix)
                key = f"{prefix.rstrip('/')}/last.pt" if prefix.strip("/") else "last.pt"
                head = self.s3().head_object(Bucket=bucket, Key=key) if key in objects else None
            except (ValueError, botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
                # Only a note for the status file; the trainer already reported its own copy.
                return {"state": "unknown", "uri": ckpt, "why": str(e)[:300]}
            modified = head["LastModified"].timestamp() if head else None
            record = {"state": "in_s3", "uri": ckpt, "objects": len(objects), "last_pt_modified": modified}
            if exit_code == 75:
                record["newest_in_s3"] = True
            elif modified is not None and modified >= signalled - CLOCK_SLACK_S:
                record["newest_in_s3"] = True
            else:
                record["newest_in_s3"] = False
                record["why"] = (
                    "the trainer had not finished its upload by the deadline"
                    if exit_code is None
                    else f"the trainer exited {exit_code} without a checkpoint written after the notice"
                )
            return record
        if not Path(ckpt).is_dir():
            return {"state": "missing", "path": ckpt}
        if not dest:
            return {"state": "local", "path": ckpt, "why": "no --upload-to given; fab download keeps it"}
        try:
            stats = s3copy.copy_folder(self.s3(), ckpt, dest)
        except s3copy.CopyError as e:
            log(str(e))
            return {"state": "local", "path": ckpt, "uri": dest, "why": str(e)[:300]}
        log(
            f"copied {len(stats.uploaded)} file(s), {stats.bytes_uploaded} bytes to {dest} "
            f"in {stats.seconds:.1f} s ({len(stats.skipped)} already there)"
        )
        return {
            "state": "in_s3",
            "path": ckpt,
            "uri": dest,
            "uploaded": stats.uploaded,
            "skipped": len(stats.skipped),
            "bytes": stats.bytes_uploaded,
            "seconds": stats.seconds,
        }

    def s3(self):
        """The S3 client of this instance's region (environment first, else the metadata service);
        the instance profile supplies the credentials."""
        from common import aws

        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if not region:
            try:
                region = self.imds.region()
            except ImdsUnreachable:
                region = None
        return aws.client("s3", region)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ec2.remote.spot_watch", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True, help="where notice and preempted are written")
    p.add_argument(
        "--signal",
        type=parse_signal,
        default=signal.SIGTERM,
        help="sent to the command on a notice (USR1 for spotrun's trainer; default TERM)",
    )
    p.add_argument("--checkpoint-dir", help="the command's checkpoint folder (local or s3://)")
    p.add_argument("--upload-to", help="s3:// destination for a local checkpoint folder")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between metadata checks")
    p.add_argument(
        "--grace",
        type=float,
        default=None,
        help="seconds to wait for the command after the signal (default: until the "
        f"notice's deadline less {UPLOAD_RESERVE_S:g} s)",
    )
    p.add_argument(
        "--ranks",
        type=int,
        default=0,
        help="the command is the trainer, N ranks on this machine (torchrun, or N=1 alone): signal the "
        "ranks once they announce their handlers, read their exit",
    )
    p.add_argument(
        "--on-rebalance",
        choices=ON_REBALANCE,
        default="none",
        help="on a rebalance recommendation: none (log it) or checkpoint (SIGUSR2: the trainer "
        "saves at its next step and trains on)",
    )
    p.add_argument("--imds-url", default=None, help="metadata address (default $SPOTRUN_IMDS_URL)")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ...")
    args = p.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        p.error("give the command after --, e.g. -- bash -c 'python -m ml.train ...'")
    if args.upload_to and (problem := s3_problem(args.upload_to)):
        p.error(f"--upload-to {args.upload_to!r} {problem}; e.g. --upload-to s3://my-bucket/ckpt")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return Watcher(args).watch()
    except FileNotFoundError as e:
        print(f"error: cannot start {args.command[0]!r}: {e.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
