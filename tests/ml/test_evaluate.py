"""`python -m ml.evaluate` on a tiny synthetic run: its val PER is the trainer's validation PER for
the same checkpoint (best.pt, the reference best_checkpoint, a folder, from S3), the CSV has one
row per trial, the test split gives predictions only, and bad input is one line."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys

import boto3
import pytest
import torch

from ml import checkpoint, evaluate, scoring
from ml.data.synthetic import reference_sessions, write_synthetic
from ml.train import main as train_main
from tests.peers.trainkit import DEMO, REPO, env, tiny

SESSIONS = reference_sessions()[:3]
# Three sessions, the first train-only: validation covers two, so per-session PER means something.
THREE = ["dataset.sessions=[" + ", ".join(SESSIONS) + "]", "dataset.dataset_probability_val=[0, 1, 1]"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(data dir, run dir, overrides): 6 steps, validated at 0, 5 and the end."""
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    write_synthetic(data, n_sessions=3, n_trials=12, seed=0)
    run = root / "run"
    overrides = [*tiny(data, run, 6), *THREE]
    assert train_main(["--config", DEMO, *overrides]) == 0
    return data, run, overrides


def run_eval(capsys, *args: str) -> tuple[int, str, str]:
    code = evaluate.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_val_per_equals_the_trainers_validation_per(trained, tmp_path, capsys):
    data, run, overrides = trained
    best = checkpoint.load(run / "checkpoint" / "best.pt")
    out_csv = tmp_path / "val.csv"
    code, out, err = run_eval(
        capsys,
        "--checkpoint",
        str(run / "checkpoint" / "best.pt"),
        "--config",
        DEMO,
        "--out",
        str(out_csv),
        *overrides,
    )
    assert code == 0, err
    assert f"val PER {best['val_PER']:.4f} over 8 trials" in out
    for session in SESSIONS[1:]:
        assert f"{session}  PER " in out
    rows = read_csv(out_csv)
    assert list(rows[0]) == ["session", "block", "trial", "predicted", "true", "edit_distance"]
    assert len(rows) == 8 and {r["session"] for r in rows} == set(SESSIONS[1:])
    edits = sum(int(r["edit_distance"]) for r in rows)
    length = sum(len(r["true"].split()) for r in rows)
    assert edits / length == pytest.approx(best["val_PER"], abs=1e-12)
    names = set(" ".join(r["true"] for r in rows).split())
    assert "SIL" in names and "BLANK" not in names
    assert out_csv.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The same through the library call, exactly: the reference layout and a folder resolve too.
    for spec in (run / "checkpoint" / "best_checkpoint", run / "checkpoint"):
        code, out, _ = run_eval(
            capsys,
            "--checkpoint",
            str(spec),
            "--config",
            DEMO,
            "--out",
            str(tmp_path / "again.csv"),
            "--force",
            *overrides,
        )
        assert code == 0 and f"val PER {best['val_PER']:.4f}" in out


def test_evaluate_per_is_bit_identical_to_validate(trained):
    """Not only to 4 decimals: the float the trainer compared to choose best.pt."""
    from ml.config import load_train_config
    from ml.model import build_model

    data, run, overrides = trained
    cfg = load_train_config(DEMO, overrides)
    model = build_model(cfg)
    ckpt = checkpoint.load(run / "checkpoint" / "best.pt")
    checkpoint.load_model_state(model, ckpt["model_state_dict"], "best.pt")
    result = scoring.evaluate(cfg, model, "val", torch.device("cpu"))
    assert result.per == ckpt["val_PER"] and result.loss == pytest.approx(ckpt["val_loss"], rel=1e-6)


def test_test_split_gives_predictions_only(trained, tmp_path, capsys):
    data, run, overrides = trained
    out_csv = tmp_path / "test.csv"
    code, out, err = run_eval(
        capsys,
        "--checkpoint",
        str(run / "checkpoint" / "last.pt"),
        "--split",
        "test",
        "--config",
        DEMO,
        "--out",
        str(out_csv),
        *overrides,
    )
    assert code == 0, err
    assert "test: 8 trials decoded (no labels in this split: predictions only)" in out
    rows = read_csv(out_csv)
    assert list(rows[0]) == ["session", "block", "trial", "predicted"] and len(rows) == 8
    assert not out_csv.with_suffix(".png").exists()


def test_a_checkpoint_of_another_shape_is_one_line_naming_both(trained, tmp_path, capsys):
    data, run, overrides = trained
    code, out, err = run_eval(
        capsys,
        "--checkpoint",
        str(run / "checkpoint" / "best.pt"),
        "--config",
        DEMO,
        "--out",
        str(tmp_path / "x.csv"),
        *overrides,
        "model.n_units=24",
    )
    assert code == 4 and err.count("\n") == 1
    assert "does not fit this model: h0 is (1, 1, 16) in the checkpoint but (1, 1, 24) in the model" in err
    assert not (tmp_path / "x.csv").exists()


def test_a_missing_split_file_is_one_line(trained, tmp_path, capsys):
    data, run, overrides = trained
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    for f in copy.glob("*/data_test.hdf5"):
        f.unlink()
    code, out, err = run_eval(
        capsys,
        "--checkpoint",
        str(run / "checkpoint" / "best.pt"),
        "--split",
        "test",
        "--config",
        DEMO,
        "--out",
        str(tmp_path / "t.csv"),
        *overrides,
        f"dataset.dataset_dir={copy}",
    )
    assert code == 3 and err.count("\n") == 1
    assert err.startswith(f"error: {copy}: no data_test.hdf5 in any of the 3 configured sessions")


def test_an_existing_out_is_refused_without_force(trained, tmp_path, capsys):
    data, run, overrides = trained
    out_csv = tmp_path / "kept.csv"
    out_csv.write_text("mine\n")
    args = ["--checkpoint", str(run / "checkpoint" / "best.pt"), "--config", DEMO, "--out", str(out_csv)]
    code, out, err = run_eval(capsys, *args, *overrides)
    assert (
        code == 2
        and err
        == f"error: writing the evaluation would overwrite {out_csv} (already there); "
        "pass --force to do so, or choose another --out\n"
    )
    assert out_csv.read_text() == "mine\n" and out == ""
    code, _, _ = run_eval(capsys, *args, "--force", *overrides)
    assert code == 0 and out_csv.read_text().startswith("session,block,trial")


def test_a_missing_checkpoint_is_one_line(trained, tmp_path, capsys):
    data, run, overrides = trained
    code, _, err = run_eval(
        capsys,
        "--checkpoint",
        str(tmp_path / "nope"),
        "--config",
        DEMO,
        "--out",
        str(tmp_path / "x.csv"),
        *overrides,
    )
    assert (
        code == 4
        and err
        == f"error: checkpoint {tmp_path / 'nope'} not found; check the path "
        "(e.g. trained_models/demo/checkpoint)\n"
    )


def test_checkpoint_from_s3(trained, tmp_path, aws_env, capsys):
    data, run, overrides = trained
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="ckpts")
    s3.upload_file(str(run / "checkpoint" / "best.pt"), "ckpts", "exp1/best.pt")
    best = checkpoint.load(run / "checkpoint" / "best.pt")
    local = [o for o in overrides if not o.startswith("output_dir=")] + [f"output_dir={tmp_path / 'o'}"]
    for spec in ("s3://ckpts/exp1/best.pt", "s3://ckpts/exp1"):
        code, out, err = run_eval(
            capsys,
            "--checkpoint",
            spec,
            "--config",
            DEMO,
            "--out",
            str(tmp_path / "s3.csv"),
            "--force",
            *local,
        )
        assert code == 0, err
        assert "checkpoint: s3://ckpts/exp1/best.pt" in out and f"val PER {best['val_PER']:.4f}" in out


def test_data_from_s3(trained, tmp_path, aws_env, capsys):
    """The split read from S3 by the trainer's reader (ranged GETs through the trial index)."""
    data, run, overrides = trained
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="brain")
    for f in data.glob("*/data_*.hdf5"):
        s3.upload_file(str(f), "brain", f"hdf5/{f.parent.name}/{f.name}")
    best = checkpoint.load(run / "checkpoint" / "best.pt")
    remote = [
        *overrides,
        "dataset.dataset_dir=s3://brain/hdf5",
        f"dataset.index_cache_dir={tmp_path / 'index'}",
    ]
    code, out, err = run_eval(
        capsys,
        "--checkpoint",
        str(run / "checkpoint" / "best.pt"),
        "--config",
        DEMO,
        "--out",
        str(tmp_path / "s3data.csv"),
        *remote,
    )
    assert code == 0, err
    assert "data: s3://brain/hdf5 (val)" in out and f"val PER {best['val_PER']:.4f} over 8 trials" in out


def test_command_line_entry_point(trained, tmp_path):
    data, run, overrides = trained
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ml.evaluate",
            "--checkpoint",
            str(run / "checkpoint"),
            "--config",
            DEMO,
            "--out",
            str(tmp_path / "cli.csv"),
            *overrides,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "val PER " in proc.stdout and (tmp_path / "cli.csv").exists()


def test_a_bug_gets_ml_trains_edge_traceback_plea_and_exit_70(tmp_path, capsys, monkeypatch):
    # The same edge as ml.train (common/exits.py): a bug is not mistaken for an expected failure.
    def broken(spec, staging):
        raise RuntimeError("a bug in the checkpoint finder")

    monkeypatch.setattr(evaluate, "resolve_checkpoint", broken)
    code, out, err = run_eval(
        capsys, "--checkpoint", "x.pt", "--config", DEMO, "--out", str(tmp_path / "e.csv"), "device=cpu"
    )
    assert code == 70 and out == ""
    assert "Traceback" in err and "RuntimeError: a bug in the checkpoint finder" in err
    assert err.rstrip().endswith("unexpected error: please report it with the traceback above")
