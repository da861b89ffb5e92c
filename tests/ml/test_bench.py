"""`python -m ml.bench` times the trainer's own step on the config's data and writes one JSON
result, touching nothing of the run's outputs; its shape key follows model and batch settings,
never paths or learning rates."""

from __future__ import annotations

import json
import subprocess
import sys

from ml import bench
from ml.config import load_train_config
from tests.peers.trainkit import DEMO, env, make_data, tiny


def test_bench_times_the_real_step_and_writes_nothing_of_the_run(tmp_path, capsys):
    data = make_data(tmp_path / "data")
    run = tmp_path / "run"
    out = tmp_path / "result.json"
    argv = ["--config", DEMO, "--steps", "4", "--warmup", "1", "--out", str(out), *tiny(data, run, 2)]
    code = bench.main(argv)
    assert code == 0, capsys.readouterr()
    result = json.loads(out.read_text())
    assert result["steps"] == 4 and result["warmup"] == 1
    assert 0 < result["median_step_s"] < 30 and 0 <= result["data_wait_share"] < 1
    assert result["peak_gpu_mem_bytes"] is None and result["device"] == "cpu"
    assert (result["processes"], result["gpus"]) == (1, 0)
    assert result["shape"]["model"]["n_units"] == 16 and result["shape"]["dataset"]["batch_size"] == 4
    # The run's own output_dir and checkpoint_dir stay untouched (no checkpoint, no log).
    assert not run.exists()
    assert "median" in capsys.readouterr().out


def test_under_torchrun_a_step_takes_as_long_as_the_slowest_rank_and_rank_0_writes(data, tmp_path):
    """Two CPU ranks (gloo), as `fab bench` starts them on a 2-GPU machine: one result, written
    once, for the data-parallel step; each step is its slowest rank's, so the median is at least
    each rank's own."""
    out_dir = tmp_path / "result"
    out = out_dir / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "ml.bench", "--config", DEMO, "--steps", "6", "--warmup", "1", "--out", str(out)]
    cmd += tiny(data, tmp_path / "run", 2)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert (result["processes"], result["gpus"], result["device"]) == (2, 0, "cpu")
    assert [r["device"] for r in result["ranks"]] == ["cpu", "cpu"]
    assert all(result["median_step_s"] >= r["median_step_s"] for r in result["ranks"])
    assert [p.name for p in out_dir.iterdir()] == ["result.json"]
    assert proc.stdout.count("bench: 6 steps") == 1 and "x2 ranks" in proc.stdout
    assert not (tmp_path / "run").exists()


def test_shape_key_ignores_paths_and_rates_but_not_the_batch(tmp_path):
    base = load_train_config(DEMO, [])
    moved = load_train_config(
        DEMO, ["dataset.dataset_dir=s3://my-bucket/elsewhere", "output_dir=x", "lr_max=0.01"]
    )
    bigger = load_train_config(DEMO, ["dataset.batch_size=32"])
    wider = load_train_config(DEMO, ["model.n_units=256"])
    assert bench.shape_key(base) == bench.shape_key(moved)
    assert len({bench.shape_key(base), bench.shape_key(bigger), bench.shape_key(wider)}) == 3
