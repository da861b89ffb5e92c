"""What the cluster end-to-end tests share (`fab run --nodes 2` against real peers): moto's server
launches the cluster (the placement group calls, which moto lacks, answered at the botocore level
as tests/ec2/test_cluster.py documents), two sshd servers stand in for node 0 and node 1
(tests/peers/node_route.py takes SSH to the server of the instance's `spotrun:node` tag, so a
replacement for node 1 is node 1's server again), each with its own IMDS stand-in and HOME.

The members' private addresses come from a VPC whose CIDR is 127.0.0.0/16 (moto accepts it; AWS
would not): on the test machine they are loopback addresses, so torchrun's rendezvous at node 0's
private address really connects."""

from __future__ import annotations

import ctypes
import json
import shutil
import threading
from pathlib import Path

from tests.peers.fab_process import free_port  # noqa: F401 (the tests' import point)

REPO = Path(__file__).resolve().parents[2]
ROUTE = REPO / "tests" / "peers" / "node_route.py"


def write_routes(path: Path, routes: dict) -> None:
    """Whole or not at all: the router may read it at any moment."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(routes))
    tmp.replace(path)


def cluster_members(ec2) -> list[dict]:
    return [
        i
        for r in ec2.describe_instances(Filters=[{"Name": "tag:spotrun:cluster", "Values": ["job"]}])[
            "Reservations"
        ]
        for i in r["Instances"]
    ]


def members_groups(ec2) -> list[dict]:
    return [
        g for g in ec2.describe_security_groups()["SecurityGroups"] if g["GroupName"].endswith("-job-members")
    ]


def tag(instance: dict, key: str) -> str | None:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}.get(key)


def ctrl_c(thread: threading.Thread) -> None:
    """Ctrl-C on `fab run` running in `thread`: KeyboardInterrupt raised in that thread at its next
    Python instruction, as the main thread gets it from SIGINT (the cluster fixture's placement
    groups are answered in this process, so `fab run --nodes` runs in a thread, not a subprocess)."""
    raise_in = ctypes.pythonapi.PyThreadState_SetAsyncExc
    done = raise_in(ctypes.c_ulong(thread.ident), ctypes.py_object(KeyboardInterrupt))
    assert done == 1, f"KeyboardInterrupt reached {done} threads"


def take_back(ec2, routes_path: Path, instance_id: str, home: Path) -> None:
    """AWS takes a member back: the instance terminated in moto and its disk gone (a replacement
    starts empty). While the disk goes, no new SSH connection reaches its node (a replacement's
    sync must not start into a folder being deleted)."""
    routes = json.loads(routes_path.read_text())
    node = next(i for i in cluster_members(ec2) if i["InstanceId"] == instance_id)
    write_routes(routes_path, {k: v for k, v in routes.items() if k != tag(node, "spotrun:node")})
    ec2.terminate_instances(InstanceIds=[instance_id])
    shutil.rmtree(home / "spotrun")
    write_routes(routes_path, routes)
