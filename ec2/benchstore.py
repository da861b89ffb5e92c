"""The bench results kept on the laptop (~/.spotrun/bench/): one file per instance type, GPU count
and config shape (ml.shape.shape_key: model and batch settings, never paths), the newest
measurement replacing the older. `fab prices --train-config` reads them to project a run's cost;
`fab bench --list` shows them.

A machine that is not an EC2 instance is kept under the type ``not-ec2`` (listed, never priced).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from common.atomic import atomic_write_bytes
from ec2 import paths

NOT_EC2 = "not-ec2"


@dataclass(frozen=True)
class BenchRecord:
    instance_type: str  # from the machine's own metadata, or NOT_EC2
    gpus: int
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


def step_times(shape_key: str) -> dict[str, BenchRecord]:
    """Instance type → its newest result for this config shape (EC2 types only)."""
    return {r.instance_type: r for r in load_all() if r.shape_key == shape_key and r.instance_type != NOT_EC2}


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
