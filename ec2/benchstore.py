"""The bench results kept on the laptop (~/.spotrun/bench/): one file per instance type, GPU count
and config shape (ml.shape.shape_key: model and batch settings, never paths), the newest
measurement replacing the older. The GPU count is the GPUs the measurement's ranks used (one rank
per GPU; 0 on a machine without GPUs), so a `--gpus 1` measurement on a 4-GPU type is kept apart
from the 4-rank one. `fab prices --train-config` reads them to project a run's cost (`step_times`:
per type, the measurement on all the type's GPUs, as `fab run` trains there); `fab bench --list`
shows them.

A machine that is not an EC2 instance is kept under the type ``not-ec2`` (listed, never priced).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common.atomic import atomic_write_bytes
from ec2 import paths

NOT_EC2 = "not-ec2"


@dataclass(frozen=True)
class BenchRecord:
    instance_type: str  # from the machine's own metadata, or NOT_EC2
    gpus: int  # GPUs the ranks used (0: they ran on the CPU)
    shape_key: str
    train_config: str
    median_step_s: float
    data_wait_share: float
    peak_gpu_mem_bytes: int | None
    device_name: str
    steps: int
    machine: str
    measured_at: str  # ISO 8601, UTC
    zone: str | None = None
    market: str | None = None
    usd_per_hour: float | None = None  # the price the machine ran at (None: not on EC2 or unknown)
    usd: float | None = None  # what the measurement cost (price × the bench's wall time)
    wall_s: float = 0.0
    processes: int = 1  # ranks that ran (torchrun's world size); older results ran one

    @property
    def key(self) -> str:
        return record_key(self.instance_type, self.gpus, self.shape_key)


def record_key(instance_type: str, gpus: int, shape_key: str) -> str:
    return f"{instance_type}-{int(gpus)}gpu-{shape_key}"


def _file(key: str) -> Path:
    return paths.bench_dir() / f"{key}.json"


def save(record: BenchRecord) -> Path:
    path = _file(record.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(dataclasses.asdict(record), indent=1) + "\n").encode())
    return path


def load_all() -> list[BenchRecord]:
    """Every kept result, oldest first; an unreadable file is skipped (a cache, not the truth)."""
    fields = {f.name for f in dataclasses.fields(BenchRecord)}
    out = []
    folder = paths.bench_dir()
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            raw = json.loads(path.read_text())
            out.append(BenchRecord(**{k: v for k, v in raw.items() if k in fields}))
        except (OSError, ValueError, TypeError):
            continue
    return sorted(out, key=lambda r: r.measured_at)


def step_times(shape_key: str, type_gpus: Mapping[str, int] | None = None) -> dict[str, BenchRecord]:
    """Instance type → the result for this config shape that matches how `fab run` trains on that
    type: on all its GPUs, one rank each (EC2 types only). ``type_gpus``: the GPUs of each type
    (ec2.cloud.typeinfo) where known; the measurement with that many GPUs is taken, else the one
    with the most GPUs (a measurement never uses more GPUs than its type has, so without the count
    the one with the most is the all-GPU one whenever there is one); the newest among equals."""
    type_gpus = type_gpus or {}
    by_type: dict[str, list[BenchRecord]] = {}
    for r in load_all():  # oldest first
        if r.shape_key == shape_key and r.instance_type != NOT_EC2:
            by_type.setdefault(r.instance_type, []).append(r)
    out = {}
    for t, records in by_type.items():
        full = [r for r in records if t in type_gpus and r.gpus == type_gpus[t]]
        out[t] = full[-1] if full else max(reversed(records), key=lambda r: r.gpus)
    return out


def _usd(x: float | None) -> str:
    return "-" if x is None else f"${x:.4f}"


def _mem(r: BenchRecord) -> str:
    return "no GPU" if r.peak_gpu_mem_bytes is None else f"{r.peak_gpu_mem_bytes / 2**30:.2f} GiB"


def table(records: list[BenchRecord]) -> str:
    head = [
        "TYPE",
        "GPUS",
        "SHAPE",
        "CONFIG",
        "MS/STEP",
        "DATA WAIT",
        "PEAK GPU MEM",
        "STEPS",
        "$/H",
        "COST",
        "WHEN",
    ]
    body = [
        [
            r.instance_type,
            str(r.gpus),
            r.shape_key,
            r.train_config,
            f"{r.median_step_s * 1000:.1f}",
            f"{r.data_wait_share:.0%}",
            _mem(r),
            str(r.steps),
            _usd(r.usd_per_hour),
            _usd(r.usd),
            r.measured_at,
        ]
        for r in records
    ]
    return columns(head, body)


def columns(head: list[str], body: list[list[str]]) -> str:
    """Left-aligned columns, two spaces apart (the tables of `fab bench` and `fab prices`)."""
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [head, *body]
    )
