"""`python -m ml.bench` times the trainer's own step on the config's data and writes one JSON
result, touching nothing of the run's outputs; its shape key follows model and batch settings,
never paths or learning rates."""

from __future__ import annotations

import json

from ml import bench
from ml.config import load_train_config
from tests.peers.trainkit import DEMO, make_data, tiny


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
    assert result["shape"]["model"]["n_units"] == 16 and result["shape"]["dataset"]["batch_size"] == 4
    # The run's own output_dir and checkpoint_dir stay untouched (no checkpoint, no log).
    assert not run.exists()
    assert "median" in capsys.readouterr().out


def test_shape_key_ignores_paths_and_rates_but_not_the_batch(tmp_path):
    base = load_train_config(DEMO, [])
    moved = load_train_config(
        DEMO, ["dataset.dataset_dir=s3://my-bucket/elsewhere", "output_dir=x", "lr_max=0.01"]
    )
    bigger = load_train_config(DEMO, ["dataset.batch_size=32"])
    wider = load_train_config(DEMO, ["model.n_units=256"])
    assert bench.shape_key(base) == bench.shape_key(moved)
    assert len({bench.shape_key(base), bench.shape_key(bigger), bench.shape_key(wider)}) == 3
