"""Data-parallel training under torchrun.

Under ``torchrun --nproc_per_node N -m ml.train ...`` torchrun sets RANK/WORLD_SIZE/LOCAL_RANK
and the rendezvous address; we join the group (NCCL on GPU, gloo on CPU) and wrap the model in
DistributedDataParallel. Without those variables everything here is a no-op for one process.

Rank r trains on build_train_loader(cfg, step, r, N): its own batches, a pure function of the
seed, the step and the rank. Only rank 0 writes logs, metrics and checkpoints. Validation is
split: each rank validates its share of the validation trials and the per-trial results are
gathered to every rank, so every rank computes the same PER and takes the same best/early-stop
decision (ranks that disagreed on when to stop would hang in the next all-reduce).

Two process groups: the default one (NCCL or gloo) carries DDP's gradient all-reduces; a private
gloo group carries our own small collectives (the stop flag, RNG and validation gathers). The split
is what makes exit safe: DDP imports torch._dynamo, which keeps references to the default group
until the interpreter shuts down, so its gloo worker threads outlive ``destroy_process_group``. A
worker that finishes a collective on tensors made in Python drops them after the caller has
returned; if that happens while the interpreter is finalizing, taking the GIL kills the thread
mid-destructor and the process dies with SIGABRT ("terminate called without an active
exception"). Our group holds no other references, so destroying it joins its workers before
``shutdown`` returns, and DDP's own buckets are C++ tensors that need no GIL.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

# The device choice lives in ml/device.py and the ranks in ml/ranks.py; the trainer asks for both here.
from ml.device import pick_device as pick_device
from ml.ranks import Dist as Dist
from ml.ranks import from_env as from_env

# The private gloo group for any_true/gather (see the module docstring); None in one process.
_control: Any = None


def init(d: Dist, device: torch.device) -> None:
    global _control
    if not d.enabled:
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    _control = dist.new_group(backend="gloo")


def shutdown(d: Dist) -> None:
    """Tear down both groups; returns only once the private group's worker threads are joined."""
    global _control
    if not (d.enabled and dist.is_initialized()):
        return
    if _control is not None:
        dist.destroy_process_group(_control)
        _control = None  # the last reference: its destructor waits for and joins the workers
    dist.destroy_process_group()


def wrap(model: torch.nn.Module, d: Dist, device: torch.device) -> torch.nn.Module:
    if not d.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # A batch touches only the input layers of its own sessions (ml/model.py: absent sessions get no
    # gradient, as in the reference), and ranks draw different sessions, so each step leaves some
    # parameters unused on some ranks. find_unused_parameters makes DDP walk the autograd graph to
    # mark those ready (a small cost per step against the 5-layer GRU); a layer used on any rank
    # gets the averaged gradient everywhere, one used on no rank keeps grad None on all of them.
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)


def barrier(d: Dist) -> None:
    """Wait for every rank (on the private group). Called once at the end of a run, so that no rank
    exits while rank 0 is still writing or uploading the checkpoint: torchrun's agent stops the
    remaining workers (SIGTERM, then SIGKILL after its shutdown timeout) as soon as one exits."""
    if d.enabled:
        dist.barrier(group=_control)


def any_true(flag: bool, d: Dist) -> bool:
    """True on every rank when it is true on any rank (a stop signal seen by one rank)."""
    if not d.enabled:
        return flag
    t = torch.tensor([1 if flag else 0])  # on the CPU: the private group is gloo
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control)
    return bool(t.item())


def any_true_each(flags: tuple[bool, ...], d: Dist) -> tuple[bool, ...]:
    """``any_true`` of several flags in one collective (the loop asks two questions every step)."""
    if not d.enabled:
        return tuple(flags)
    t = torch.tensor([1 if f else 0 for f in flags])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control)
    return tuple(bool(v) for v in t.tolist())


def max_each(values: list[float], d: Dist) -> list[float]:
    """The elementwise maximum of every rank's ``values`` (same length on each), on every rank."""
    if not d.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)  # on the CPU: the private group is gloo
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control)
    return t.tolist()


def from_node_leader(obj: Any, d: Dist) -> Any:
    """The ``obj`` of this machine's first rank (local rank 0), on each of the machine's ranks.
    torchrun numbers ranks node by node, so that rank is ``rank - local_rank``."""
    return gather(obj, d)[d.rank - d.local_rank]


def gather(obj: Any, d: Dist) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj, group=_control)
    return out
