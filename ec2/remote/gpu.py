"""`fab gpu`: a one-screen summary from nvidia-smi's CSV queries (one SSH round trip)."""

from __future__ import annotations

from dataclasses import dataclass

from ec2.errors import ToolkitError

GPU_FIELDS = "index,uuid,name,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw"
APP_FIELDS = "gpu_uuid,pid,process_name,used_memory"
_MARK = "--spotrun-apps--"

GPU_COMMAND = (
    f"nvidia-smi --query-gpu={GPU_FIELDS} --format=csv,noheader,nounits && echo {_MARK} && "
    f"nvidia-smi --query-compute-apps={APP_FIELDS} --format=csv,noheader,nounits"
)


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    util_pct: float | None
    mem_used_mib: float | None
    mem_total_mib: float | None
    temp_c: float | None
    power_w: float | None


@dataclass(frozen=True)
class GpuProcess:
    gpu_uuid: str
    pid: int
    name: str
    mem_mib: float | None


def _num(text: str) -> float | None:
    """nvidia-smi prints `[N/A]` or `[Not Supported]` for fields a board lacks."""
    try:
        return float(text)
    except ValueError:
        return None


def _rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.split(",")] for line in text.splitlines() if line.strip()]


def parse(output: str) -> tuple[list[Gpu], list[GpuProcess]]:
    if _MARK not in output:
        raise ToolkitError(
            "nvidia-smi gave no GPU list; is this a GPU instance with its driver loaded? "
            "(try `fab run-cmd --cmd nvidia-smi`)"
        )
    gpu_text, app_text = output.split(_MARK, 1)
    gpus = []
    for row in _rows(gpu_text):
        if len(row) < 8:
            line = ", ".join(row)
            raise ToolkitError(f"unexpected nvidia-smi line {line!r}; run `fab run-cmd --cmd nvidia-smi`")
        gpus.append(Gpu(int(row[0]), row[1], row[2], *map(_num, row[3:8])))
    apps = [GpuProcess(r[0], int(r[1]), r[2], _num(r[3])) for r in _rows(app_text) if len(r) >= 4]
    return gpus, apps


def _fmt(value: float | None, unit: str = "", digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def summary(gpus: list[Gpu], apps: list[GpuProcess]) -> str:
    lines = [f"{'GPU':<4}{'name':<26}{'util':>6}{'memory (MiB)':>20}{'temp':>7}{'power':>9}"]
    for g in gpus:
        mem = f"{_fmt(g.mem_used_mib)} / {_fmt(g.mem_total_mib)}"
        lines.append(
            f"{g.index:<4}{g.name[:25]:<26}{_fmt(g.util_pct, '%'):>6}{mem:>20}"
            f"{_fmt(g.temp_c, 'C'):>7}{_fmt(g.power_w, 'W', 1):>9}"
        )
    index_of = {g.uuid: g.index for g in gpus}
    if apps:
        lines.append("processes:")
        for a in apps:
            gpu = index_of.get(a.gpu_uuid, "?")
            lines.append(f"  gpu {gpu}  pid {a.pid:<8} {_fmt(a.mem_mib):>7} MiB  {a.name}")
    else:
        lines.append("processes: none")
    return "\n".join(lines)


# --- how many trainer processes a run starts (one per GPU) ---------------------------------------
# `nvidia-smi -L` prints one `GPU i: NAME (UUID: ...)` line per GPU; no driver (or no
# nvidia-smi) prints nothing we count, so a machine without GPUs counts 0 and runs one process.
COUNT_COMMAND = "nvidia-smi -L 2>/dev/null || true"


def parse_count(output: str) -> int:
    return sum(1 for line in output.splitlines() if line.startswith("GPU "))


def count_gpus(machine) -> int:
    """The machine's GPUs (one SSH round trip)."""
    return parse_count(machine.run(COUNT_COMMAND, check=False).stdout)


def processes_for(present: int, asked: int | None) -> int:
    """Trainer processes per machine: one per GPU present, or `--gpus N` (at most the GPUs there);
    one process on a machine without GPUs (the trainer runs on its CPU)."""
    if asked is None:
        return max(present, 1)
    if asked < 1:
        raise ToolkitError(f"--gpus {asked} is not a GPU count; give 1 or more (or leave it out: all GPUs)")
    if asked > max(present, 1):
        raise ToolkitError(
            f"--gpus {asked} asked for, but the machine has {present} GPU(s) "
            f"(`nvidia-smi -L`); give --gpus {max(present, 1)} or less, or leave it out"
        )
    return asked
