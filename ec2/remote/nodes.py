"""The machines of a multi-node run: NAME-0 .. NAME-(N-1) in the registry (the members
`fab launch --nodes N` made, or machines adopted under those names). Node 0's private address
(its public one for an adopted machine with none recorded) is torchrun's rendezvous endpoint.

Work on the nodes happens in parallel, one thread per node; a failure names its node.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ec2 import registry
from ec2.errors import ToolkitError
from ec2.registry import MachineRecord
from ec2.remote import runs, startrun
from ec2.remote.ssh import Machine
from ec2.remote.startrun import RunSpec
from ec2.remote.trainrun import Rendezvous

T = TypeVar("T")


def member_name(name: str, node: int) -> str:
    return f"{name}-{int(node)}"


def members(name: str, nodes: int) -> list[MachineRecord]:
    """The registry records of NAME-0 .. NAME-(N-1), node 0 first."""
    if nodes < 2:
        raise ToolkitError(f"--nodes {nodes}: a multi-node run has 2 or more nodes (one: leave --nodes out)")
    known = registry.load_all()
    missing = [member_name(name, k) for k in range(nodes) if member_name(name, k) not in known]
    if missing:
        raise ToolkitError(
            f"no machine named {', '.join(missing)} in the registry; launch them with "
            f"`fab launch --name {name} --nodes {nodes}`, or `fab adopt` each as {name}-K"
        )
    return [known[member_name(name, k)] for k in range(nodes)]


def rendezvous_host(node0: MachineRecord) -> str:
    return node0.private_ip or node0.host


def on_each(machines: list[Machine], work: Callable[[Machine], T]) -> list[T]:
    """`work` on every machine at once; the results in node order. The first failure is raised,
    naming its machine, after every node's work has ended."""
    if not machines:  # a cluster restarted on the same machines has no new node to set up
        return []
    with ThreadPoolExecutor(max_workers=len(machines)) as pool:
        futures = [pool.submit(work, m) for m in machines]
        errors = [(m, f.exception()) for m, f in zip(machines, futures, strict=True) if f.exception()]
        if errors:
            m, e = errors[0]
            if type(e) is ToolkitError:
                raise ToolkitError(f"{m.name}: {e}") from None
            raise e
        return [f.result() for f in futures]


def set_up(machines: list[Machine], python: str | None, *, require_gpu: bool, out) -> None:
    """Code and setup to every node at once (`fab setup --nodes N`); each node's failure keeps its
    last lines."""
    from ec2.remote.sync import sync_code

    def one(m: Machine) -> None:
        sync_code(m, ".")
        result = startrun.setup(startrun.Ssh(m), m.record.remote_dir, python, require_gpu)
        if result.code:
            tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
            raise ToolkitError(f"setup failed (exit {result.code}): {tail}; fix, and rerun `fab setup`")
        out(f"{m.name}: set up")

    on_each(machines, one)


def start_training(
    machines: list[Machine], spec: RunSpec, *, rendezvous_id: str, port: int
) -> startrun.Started:
    """torchrun on every node (c10d rendezvous at node 0), each in its own notice watcher, started
    the one way (ec2.remote.startrun); node 0's start (its processes per node, its GPUs). When a
    node cannot start, the runs already started are stopped: they would wait for it in the
    rendezvous until its timeout."""
    counts = on_each(machines, lambda m: startrun.count_gpus(startrun.Ssh(m)))
    if len(set(counts)) != 1:
        listing = ", ".join(f"{m.name} {n}" for m, n in zip(machines, counts, strict=True))
        raise ToolkitError(f"the nodes have different GPU counts ({listing}); use one instance type for all")
    host = rendezvous_host(machines[0].record)
    started: list[Machine] = []

    def start(m: Machine) -> startrun.Started:
        rdzv = Rendezvous(len(machines), host, rendezvous_id, machines.index(m), port)
        one = startrun.start(startrun.Ssh(m), m.record.remote_dir, spec, present=counts[0], rendezvous=rdzv)
        started.append(m)
        return one

    try:
        return on_each(machines, start)[0]
    except ToolkitError:
        for m in started:
            try:
                m.run(runs.stop_command(spec.run), check=False, retry=False)
            except ToolkitError:
                pass  # unreachable too: its run ends at the rendezvous timeout
        raise
