"""Time the real training step: `python -m ml.bench --config C [--steps N] [--warmup W] --out R.json`.

The trainer's own pieces (ml.trainer.prepare and train_step: the same model, optimizer, schedule,
augmentation and data loader as `python -m ml.train`) run W warm-up steps, then N timed steps.
Under torchrun (`python -m torch.distributed.run --nproc_per_node P -m ml.bench ...`, as `fab
bench` starts it on a machine with P GPUs) each rank runs them with the DDP model and its own
batches, as in a real run, and a step takes as long as its slowest rank: each step's time and data
wait are the maximum over the ranks. The result is one JSON file, written by rank 0: the median and
mean step time (data wait included: a step is what the run pays for), the share of it spent
waiting for batches, the peak GPU memory (the largest rank's; null on a CPU), `processes` (the
ranks) and `gpus` (the ranks on CUDA; 0 on a CPU), and the config's shape (what decides the step
time: model and batch settings, never paths), so a result can be reused for every run of the same
shape on the same machine type.

Nothing is written where the run's own outputs go: output_dir and checkpoint_dir point at a
temporary folder, resume is never, and no checkpoint is saved. The normal training loop is not
touched (timing is done here, not by a flag in ml/trainer.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import exits
from common.errors import ConfigError
from ml import distributed
from ml.config import TrainConfig, load_train_config
from ml.shape import config_shape, shape_key
from ml.stopping import StopFlag

DEFAULT_STEPS = 100
DEFAULT_WARMUP = 10


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(
    cfg: TrainConfig,
    steps: int = DEFAULT_STEPS,
    warmup: int = DEFAULT_WARMUP,
    d: distributed.Dist | None = None,
    device: torch.device | None = None,
) -> dict:
    """Run warm-up + timed steps of the trainer on ``cfg``; returns the result (see module doc) on
    every rank. Under torchrun (``d`` enabled) the caller has joined the process group."""
    from ml.trainer import prepare, train_step  # the trainer's own pieces, not a copy

    check_counts(steps, warmup)
    d = distributed.from_env() if d is None else d
    if device is None:
        device = distributed.pick_device(cfg.device, cfg.gpu_number, d)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)
    with tempfile.TemporaryDirectory(prefix="spotrun-bench-") as tmp:
        run_cfg = dataclasses.replace(
            cfg,
            output_dir=str(Path(tmp) / "out"),
            checkpoint_dir=str(Path(tmp) / "ckpt"),
            resume="never",
            init_from_checkpoint=False,
            num_training_batches=warmup + steps,
            progress_bar=False,
        )
        run, _state, loader = prepare(run_cfg, d, device, StopFlag())
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        batches = iter(loader)
        times, waits = [], []
        started = time.monotonic()
        for i in range(warmup + steps):
            t0 = time.monotonic()
            batch = next(batches)
            t1 = time.monotonic()
            train_step(run.model, batch, run.optimizer, run.scheduler, run_cfg, device, d)
            _sync(device)  # train_step already waits for its finiteness check; this is the rest
            t2 = time.monotonic()
            if i >= warmup:
                times.append(t2 - t0)
                waits.append(t1 - t0)
        wall = time.monotonic() - started
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    own = {"median_step_s": statistics.median(times), "device": str(device), "peak_gpu_mem_bytes": peak}
    # A data-parallel step ends when its slowest rank's does (the gradients' all-reduce waits for
    # it): each step's time and data wait are the maximum over the ranks, once, after the timing.
    both = distributed.max_each([*times, *waits], d)
    times, waits = both[:steps], both[steps:]
    ranks = distributed.gather(own, d)
    peaks = [r["peak_gpu_mem_bytes"] for r in ranks if r["peak_gpu_mem_bytes"] is not None]
    return {
        "steps": steps,
        "warmup": warmup,
        "median_step_s": statistics.median(times),
        "mean_step_s": sum(times) / len(times),
        "data_wait_share": sum(waits) / sum(times) if sum(times) > 0 else 0.0,
        "peak_gpu_mem_bytes": max(peaks) if peaks else None,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "processes": d.world_size,
        "gpus": d.world_size if device.type == "cuda" else 0,
        "ranks": ranks,  # each rank's own median, device and peak, rank 0 first
        "wall_s": max(distributed.max_each([wall], d)),
        "shape": config_shape(cfg),
        "shape_key": shape_key(cfg),
    }


def check_counts(steps: int, warmup: int) -> None:
    if steps < 1 or warmup < 0:
        raise ConfigError(f"--steps must be at least 1 and --warmup at least 0 (got {steps}, {warmup})")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m ml.bench", description="Time the trainer's step.")
    p.add_argument("--config", required=True, help="YAML config, e.g. configs/demo.yaml")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="timed steps (default 100)")
    p.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="untimed steps first (default 10)")
    p.add_argument("--out", required=True, help="where to write the JSON result")
    p.add_argument("overrides", nargs="*", metavar="dotted.key=value", help="override config values")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    d = distributed.from_env()
    try:
        check_counts(args.steps, args.warmup)
        cfg = load_train_config(args.config, args.overrides)
        device = distributed.pick_device(cfg.device, cfg.gpu_number, d)
        distributed.init(d, device)
        try:
            result = bench(cfg, args.steps, args.warmup, d, device)
            if d.is_main:  # one result for the whole data-parallel step
                write(result, Path(args.out))
            distributed.barrier(d)  # no rank leaves while rank 0 writes (torchrun would stop it)
        finally:
            distributed.shutdown(d)
        return 0
    except (Exception, KeyboardInterrupt) as e:  # the edge of the program
        return exits.report(e)


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    peak = result["peak_gpu_mem_bytes"]
    mem = "no GPU" if peak is None else f"{peak / 2**30:.2f} GiB"
    ranks = f" x{result['processes']} ranks" if result["processes"] > 1 else ""
    print(
        f"bench: {result['steps']} steps after {result['warmup']} warm-up on {result['device_name']}{ranks}: "
        f"median {result['median_step_s'] * 1000:.1f} ms/step, data wait "
        f"{result['data_wait_share']:.0%}, peak GPU memory {mem}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
