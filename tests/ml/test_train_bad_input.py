"""Bad input to the trainer: one `error:` line naming the file or key, its exit code, no traceback,
and nothing written or overwritten."""

from __future__ import annotations

import subprocess

from ml.train import main
from tests.peers.trainkit import DEMO, env, tiny, train_cmd


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def test_unknown_config_key_at_the_real_entry_point(data, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.run(
        train_cmd(*tiny(data, run, 2), "model.n_unitz=8"),
        capture_output=True,
        text=True,
        env=env(),
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "error: override 'model.n_unitz=8': unknown key model.n_unitz; remove it or check its spelling"
    )
    assert not run.exists()


def test_malformed_yaml(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  n_units: [128\nseed: 1\n")
    assert main(["--config", str(bad)]) == 2
    assert str(bad) in _one_line_error(capsys)


def test_bad_override_value(data, tmp_path, capsys):
    assert main(["--config", DEMO, *tiny(data, tmp_path / "run", 2), "dataset.batch_size=many"]) == 2
    assert "dataset.batch_size must be an integer" in _one_line_error(capsys)


def test_missing_session_folder(data, tmp_path, capsys):
    run = tmp_path / "run"
    args = tiny(data, run, 2, "dataset.sessions=[t15.2023.08.11, t15.2099.01.01]")
    assert main(["--config", DEMO, *args]) == 3
    assert "t15.2099.01.01" in _one_line_error(capsys)
    assert not run.exists()


def test_feature_size_that_disagrees_with_the_config(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["--config", DEMO, *tiny(data, run, 2, "model.n_input_features=256")]) == 3
    err = _one_line_error(capsys)
    assert "512" in err and "256" in err and "n_input_features" in err
    assert not run.exists()


def test_resume_never_refuses_to_overwrite_existing_checkpoints(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["--config", DEMO, *tiny(data, run, 2)]) == 0
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["--config", DEMO, *tiny(data, run, 4, "resume=never")]) == 4
    err = _one_line_error(capsys)
    assert "already holds last.pt" in err and "resume=auto" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files


def test_init_from_checkpoint_without_a_path(data, tmp_path, capsys):
    assert main(["--config", DEMO, *tiny(data, tmp_path / "run", 2, "init_from_checkpoint=true")]) == 2
    assert "init_checkpoint_path" in _one_line_error(capsys)


def test_s3_output_dir_is_refused(data, tmp_path, capsys):
    assert main(["--config", DEMO, *tiny(data, tmp_path / "run", 2), "output_dir=s3://bucket/run"]) == 2
    assert "output_dir must be a local folder" in _one_line_error(capsys)
