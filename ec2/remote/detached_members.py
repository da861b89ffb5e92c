"""A detached cluster's meeting place in S3 (`fab run --detach --nodes N`): how the N boots of the
run learn each other and agree on an attempt, with no laptop and no process of ours in between.

    <root>/nodes/attempt-<k>/join-<K>.json   node K is set up and ready for attempt k: its
                                             instance and private address (node 0's is torchrun's
                                             rendezvous endpoint for attempt k)
    <root>/nodes/attempt-<k>/end-<K>.json    how attempt k ended on node K (exit code, notice)

Each node writes only its own files; a replacement writes its own join file again. Attempt k
starts when all N join files of k exist. A boot joins the first attempt it has no join file in:
the highest attempt anyone joined, or the next one if it joined that one itself (a survivor after
its attempt ended), or if it is node K's predecessor that joined (a replacement). A fresh
replacement of node 0 thus publishes its new address in the new attempt's folder, and the others
read it from there: nobody needs the old one.

state.json is shared by all N boots (and `fab stop`): every change to it is a compare-and-swap
(update: read with its ETag, write with If-Match, again on 412), so two members that record the
same attempt's end at the same moment both land.
https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html

Plain data: standard library, boto3 and common/ only (it runs with the instance's Python).
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable

import botocore.exceptions

from common.attempt import Attempt, Outcome, RunStatus
from common.times import now_iso
from ec2.remote.detached import STATE_FILE, DetachedRun, key_of

NODES = "nodes"
# A write that lost the race (412), or met another in flight (409): read again and retry.
RACED = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
UPDATE_TRIES = 30
_ATTEMPT = re.compile(r"attempt-(\d+)/$")
_FILE = re.compile(r"/(join|end)-(\d+)\.json$")


class UpdateFailed(Exception):
    """state.json kept changing under us (another writer on every try)."""


def update(s3, root: str, change: Callable[[DetachedRun], None], tries: int = UPDATE_TRIES) -> DetachedRun:
    """Apply `change` to the current record and write it only if nobody wrote in between."""
    bucket, key = key_of(root, STATE_FILE)
    for attempt in range(tries):
        got = s3.get_object(Bucket=bucket, Key=key)
        state = DetachedRun.from_json(got["Body"].read().decode())
        change(state)
        try:
            s3.put_object(
                Bucket=bucket,
                Key=key,
                Body=state.to_json().encode(),
                ContentType="application/json",
                IfMatch=got["ETag"],
            )
            return state
        except botocore.exceptions.ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            status = str(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code not in RACED and status not in RACED:
                raise
        time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))
    raise UpdateFailed(f"{root}/{STATE_FILE} changed under every one of {tries} writes")


def _prefix(root: str, attempt: int | None = None) -> tuple[str, str]:
    parts = (NODES,) if attempt is None else (NODES, f"attempt-{int(attempt)}")
    bucket, key = key_of(root, *parts)
    return bucket, key + "/"


def put(s3, root: str, attempt: int, kind: str, node: int, data: dict) -> str:
    bucket, prefix = _prefix(root, attempt)
    key = f"{prefix}{kind}-{int(node)}.json"
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps({**data, "at": now_iso()}).encode())
    return f"s3://{bucket}/{key}"


def join(s3, root: str, attempt: int, node: int, instance_id: str, private_ip: str) -> str:
    return put(s3, root, attempt, "join", node, {"instance_id": instance_id, "private_ip": private_ip})


def end(s3, root: str, attempt: int, node: int, data: dict) -> str:
    return put(s3, root, attempt, "end", node, data)


def read(s3, root: str, attempt: int) -> tuple[dict[int, dict], dict[int, dict]]:
    """Attempt k's join files and end files, by node."""
    bucket, prefix = _prefix(root, attempt)
    joins: dict[int, dict] = {}
    ends: dict[int, dict] = {}
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for item in (o for page in pages for o in page.get("Contents", [])):
        found = _FILE.search(item["Key"])
        if not found:
            continue
        body = json.loads(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
        (joins if found.group(1) == "join" else ends)[int(found.group(2))] = body
    return joins, ends


def highest(s3, root: str) -> int:
    """The highest attempt anyone joined (0: none yet)."""
    bucket, prefix = _prefix(root)
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
    numbers = [
        int(m.group(1))
        for page in pages
        for p in page.get("CommonPrefixes", [])
        if (m := _ATTEMPT.search(p["Prefix"]))
    ]
    return max(numbers, default=0)


def attempt_to_join(s3, root: str, node: int) -> int:
    """See the module doc: the highest attempt, or the next when this node already joined it."""
    top = highest(s3, root)
    if top == 0:
        return 1
    joins, _ = read(s3, root, top)
    return top + 1 if node in joins else top


# --- the attempt in state.json ------------------------------------------------------------------------
# How much each member's outcome weighs in the attempt's: the worst news wins.
WEIGHT = {
    Outcome.FINISHED: 0,
    Outcome.LOST: 1,  # stopped because another member was stopped: no news of its own
    Outcome.DEADLINE: 2,
    Outcome.STOPPED: 2,
    Outcome.PREEMPTED: 3,
    Outcome.SETUP_FAILED: 4,
    Outcome.FAILED: 5,
}
STATUS_AFTER = {
    Outcome.FINISHED: RunStatus.FINISHED,
    Outcome.LOST: RunStatus.INTERRUPTED,
    Outcome.PREEMPTED: RunStatus.INTERRUPTED,
    Outcome.STOPPED: RunStatus.STOPPED,
    Outcome.DEADLINE: RunStatus.DEADLINE,
    Outcome.SETUP_FAILED: RunStatus.SETUP_FAILED,
    Outcome.FAILED: RunStatus.FAILED,
}


def attempt_entry(state: DetachedRun, number: int) -> Attempt:
    """Attempt `number` of the record, added (with a place per node) when missing."""
    for a in state.attempts:
        if a.number == number:
            return a
    a = Attempt(number=number, nodes=state.nodes, instance_ids=[""] * state.nodes, launched_at=now_iso())
    state.attempts.append(a)
    state.attempts.sort(key=lambda x: x.number)
    return a


def started(state: DetachedRun, number: int, joins: dict[int, dict], first: dict) -> None:
    """Attempt `number` runs on the members that joined it (`first`: node 0's identity)."""
    a = attempt_entry(state, number)
    a.instance_ids = [joins[k]["instance_id"] for k in range(state.nodes)]
    a.instance_id = a.instance_ids[0]
    a.instance_type, a.zone, a.market = first.get("instance_type"), first.get("zone"), first.get("market")
    a.gpus = first.get("gpus")
    if a.outcome in (Outcome.STARTING, Outcome.BOOTING):
        a.outcome = Outcome.RUNNING
    if not state.ended:
        state.status = RunStatus.RUNNING


def ended(
    state: DetachedRun, number: int, node: int, outcome: Outcome, exit_code: int | None, log_uri=None
) -> None:
    """Node `node`'s end of attempt `number`: the attempt takes the worst outcome its members
    report, a noticed member goes into nodes_lost, and an ended run's status never changes back."""
    a = attempt_entry(state, number)
    if node == 0 and log_uri:
        a.log_uri = log_uri
    if outcome is Outcome.PREEMPTED and node not in a.nodes_lost:
        a.nodes_lost = sorted([*a.nodes_lost, node])
    if a.outcome not in WEIGHT or WEIGHT[outcome] >= WEIGHT[a.outcome]:
        a.outcome = outcome
        a.exit_code = exit_code
    a.ended_at = now_iso()
    if not state.ended:
        state.status = STATUS_AFTER[a.outcome]
