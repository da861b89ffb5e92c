"""What an instance type is: vCPUs, memory and GPUs, from describe_instance_types, as plain data."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from common.aws import aws_errors


@dataclass(frozen=True)
class TypeInfo:
    instance_type: str
    vcpus: int
    memory_mib: int
    gpu_name: str | None
    gpu_count: int
    gpu_memory_mib: int  # per GPU

    def gpus(self) -> str:
        """``1x A10G 22 GiB`` (or ``-`` for a type without GPUs)."""
        if not self.gpu_count:
            return "-"
        return f"{self.gpu_count}x {self.gpu_name} {self.gpu_memory_mib / 1024:.0f} GiB"


def from_boto(raw: dict) -> TypeInfo:
    gpus = raw.get("GpuInfo", {}).get("Gpus", [])
    first = gpus[0] if gpus else {}
    return TypeInfo(
        instance_type=raw["InstanceType"],
        vcpus=int(raw.get("VCpuInfo", {}).get("DefaultVCpus", 0)),
        memory_mib=int(raw.get("MemoryInfo", {}).get("SizeInMiB", 0)),
        gpu_name=first.get("Name"),
        gpu_count=sum(int(g.get("Count", 0)) for g in gpus),
        gpu_memory_mib=int(first.get("MemoryInfo", {}).get("SizeInMiB", 0)),
    )


def _page_through(ec2, types: list[str], out: dict[str, TypeInfo]) -> bool:
    """Describe ``types`` into ``out``; False when AWS refused a name it does not know."""
    with aws_errors("describing instance types", tolerate={"InvalidInstanceType"}) as refused:
        for page in ec2.get_paginator("describe_instance_types").paginate(InstanceTypes=types):
            for raw in page["InstanceTypes"]:
                out[raw["InstanceType"]] = from_boto(raw)
    return refused.code is None


def describe(ec2, instance_types: Iterable[str]) -> dict[str, TypeInfo]:
    """Each known type's facts; a name AWS does not know is left out (callers say so)."""
    wanted = sorted(set(instance_types))
    out: dict[str, TypeInfo] = {}
    if wanted and not _page_through(ec2, wanted, out):
        # One unknown name fails the whole call: ask one by one to keep the others.
        for t in wanted:
            _page_through(ec2, [t], out)
    return out
