"""Trainer reliability: data that cannot train, non-finite training, unwritable or full folders,
two runs in one output_dir, and how failures are reported (issue 12, trainer side).

Each case asserts what a user depends on: the exit code, one `error:` line naming the file, trial,
step or key, no traceback, and checkpoints byte-identical when the run must not touch them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from ml import trainer as train_module
from ml.errors import UNEXPECTED_EXIT
from ml.train import main
from tests.peers.trainkit import DEMO, env, tiny, train_cmd


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def _files(root) -> dict:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _broken(data, tmp_path, file: str, trial: int, defect) -> tuple:
    """A copy of the dataset with ``defect(group)`` applied to one trial of session 2's ``file``."""
    copy = tmp_path / "broken"
    shutil.copytree(data, copy)
    path = copy / "t15.2023.08.13" / file
    with h5py.File(path, "r+") as f:
        defect(f[f"trial_{trial:04d}"])
    return copy, path


def _no_labels(g):
    del g["seq_class_ids"]
    del g.attrs["seq_len"]


def _seq_len_too_long(g):
    g.attrs["seq_len"] = np.int64(int(g.attrs["seq_len"]) + 3)  # blanks inside the label


def _too_short_for_ctc(g):
    ids = np.zeros(500, np.int32)
    ids[:200] = np.tile([5, 40], 100)
    g["seq_class_ids"][...] = ids
    g.attrs["seq_len"] = np.int64(200)


def _id_out_of_range(g):
    ids = g["seq_class_ids"][()]
    ids[0] = 77
    g["seq_class_ids"][...] = ids


@pytest.mark.parametrize(
    "file, defect, says",
    [
        ("data_train.hdf5", _no_labels, "has no labels"),
        ("data_train.hdf5", _seq_len_too_long, "blank 0 inside the label"),
        ("data_val.hdf5", _too_short_for_ctc, "CTC cannot align it"),
        ("data_val.hdf5", _id_out_of_range, "phoneme ids outside 0..40"),
    ],
)
def test_data_that_cannot_train_is_refused_when_opened(data, tmp_path, capsys, file, defect, says):
    broken, path = _broken(data, tmp_path, file, 3, defect)
    run = tmp_path / "run"
    assert main(["--config", DEMO, *tiny(broken, run, 4, f"dataset.index_cache_dir={tmp_path}/c")]) == 3
    err = _one_line_error(capsys)
    assert str(path) in err and "trial_0003 (block" in err and says in err and "bad_trials_dict" in err
    assert not run.exists()  # refused before anything was written


def test_a_bad_trial_left_out_by_bad_trials_dict_trains(data, tmp_path, capsys):
    broken, path = _broken(data, tmp_path, "data_train.hdf5", 3, _no_labels)
    with h5py.File(path) as f:
        block, num = int(f["trial_0003"].attrs["block_num"]), int(f["trial_0003"].attrs["trial_num"])
    skip = f"dataset.bad_trials_dict={{t15.2023.08.13: {{{block}: [{num}]}}}}"
    args = tiny(broken, tmp_path / "run", 2, f"dataset.index_cache_dir={tmp_path}/c", skip)
    assert main(["--config", DEMO, *args]) == 0


def test_nan_features_are_named_from_a_dataloader_worker_in_one_line(data, tmp_path, capsys):
    # Every train trial of session 2 gets NaN bins, so the first batch drawing from it fails; it is
    # read in a (forked) DataLoader worker, whose error torch would wrap in a traceback.
    copy = tmp_path / "broken"
    shutil.copytree(data, copy)
    path = copy / "t15.2023.08.13" / "data_train.hdf5"
    with h5py.File(path, "r+") as f:
        for name in f:
            x = f[name]["input_features"][()]
            x[5:9, 3] = np.nan
            f[name]["input_features"][...] = x
    args = tiny(
        copy, tmp_path / "run", 6, f"dataset.index_cache_dir={tmp_path}/c", "dataset.num_dataloader_workers=1"
    )
    assert main(["--config", DEMO, *args]) == 3
    err = _one_line_error(capsys)
    assert str(path) in err and "non-finite values (NaN or inf) in 4 of" in err and "trial_00" in err


def _nan_loss_at(monkeypatch, steps: set[int]):
    """Fault injection: the loss of the given training steps becomes NaN (a numerical event no
    peer produces on demand). Validation's loss is left alone."""
    real = train_module.ctc_loss
    calls = []

    def loss(logits, batch, n, cfg):
        out = real(logits, batch, n, cfg)
        if logits.requires_grad:
            calls.append(1)
            if len(calls) - 1 in steps:
                return out * float("nan")
        return out

    monkeypatch.setattr(train_module, "ctc_loss", loss)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoints(
    data, tmp_path, capsys, monkeypatch
):
    run = tmp_path / "run"
    assert main(["--config", DEMO, *tiny(data, run, 4, "batches_per_save=2")]) == 0
    before = _files(run / "checkpoint")
    capsys.readouterr()
    _nan_loss_at(monkeypatch, {0})  # the first step of the resumed run: step 4
    assert main(["--config", DEMO, *tiny(data, run, 12, "batches_per_save=2")]) == 5
    out, err = capsys.readouterr()
    assert err.startswith("error: training diverged at step 4: loss nan") and "\n" not in err.strip()
    assert "Traceback" not in err and "last.pt (step 4) and best.pt" in err and "max_nonfinite_batches" in err
    assert _files(run / "checkpoint") == before  # last.pt, best.pt, best_checkpoint, args.yaml untouched
    assert "error: training diverged at step 4" in (run / "training_log").read_text()
    assert "Train batch 4:" not in out


def test_max_nonfinite_batches_skips_and_counts_then_stops(data, tmp_path, capsys, monkeypatch):
    _nan_loss_at(monkeypatch, {1, 3, 4})
    run = tmp_path / "run"
    assert main(["--config", DEMO, *tiny(data, run, 8, "max_nonfinite_batches=2")]) == 5
    out = capsys.readouterr().out
    assert "Train batch 1: non-finite (loss nan" in out and "1 of max_nonfinite_batches=2" in out
    assert "Train batch 3: non-finite" in out and "2 of max_nonfinite_batches=2" in out
    from ml import checkpoint

    last = checkpoint.load(run / "checkpoint" / "last.pt")  # saved at the validation of step 0
    assert last["step"] == 1 and all(bool(t.isfinite().all()) for t in last["model_state_dict"].values())


def test_skipped_batches_leave_the_weights_finite_and_training_goes_on(data, tmp_path, capsys, monkeypatch):
    _nan_loss_at(monkeypatch, {5})  # a step that would be logged (batches_per_train_log=5)
    run = tmp_path / "run"
    assert main(["--config", DEMO, *tiny(data, run, 8, "max_nonfinite_batches=1")]) == 0
    from ml import checkpoint

    last = checkpoint.load(run / "checkpoint" / "last.pt")
    assert last["step"] == 8 and last["nonfinite_batches"] == 1
    assert all(bool(t.isfinite().all()) for t in last["model_state_dict"].values())
    out = capsys.readouterr().out
    assert "Train batch 5: non-finite (loss nan" in out and "Train batch 5: loss" not in out
    assert "5,train," not in (run / "metrics.csv").read_text()  # no NaN row in the metrics
    assert "; 1 non-finite batches skipped (weights unchanged)" in out


def test_divergence_from_a_huge_learning_rate_saves_nothing(data, tmp_path, capsys):
    run = tmp_path / "run"
    huge = ["lr_max=1e20", "lr_max_day=1e20", "lr_warmup_steps=0", "lr_warmup_steps_day=0"]
    assert main(["--config", DEMO, *tiny(data, run, 6, *huge)]) == 5
    err = _one_line_error(capsys)
    assert "diverged in the validation after step 0: loss nan" in err and "no checkpoint saved yet" in err
    assert not any((run / "checkpoint").glob("*.pt"))


# ---- folders that cannot be written ----


def test_output_dir_under_a_file_is_one_line_before_training_even_for_root(data, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    args = tiny(data, tmp_path / "run", 2, f"output_dir={blocker}/run")
    assert main(["--config", DEMO, *args]) == 6
    err = _one_line_error(capsys)
    assert f"output_dir {blocker}/run: {blocker} is a file, not a folder" in err
    assert blocker.read_text() == "x"


def test_checkpoint_dir_under_a_file_is_one_line(data, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    args = tiny(data, tmp_path / "run", 2, f"checkpoint_dir={blocker}/ck")
    assert main(["--config", DEMO, *args]) == 6
    assert "checkpoint_dir" in _one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def _can_mount() -> bool:
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"], capture_output=True
    )
    return probe.returncode == 0


def _in_private_mount(script: str, tmp_path) -> subprocess.CompletedProcess:
    """Run ``script`` in a private mount namespace (mounts vanish with it; the host never sees them)."""
    return subprocess.run(
        ["unshare", "-m", "bash", "-c", script], capture_output=True, text=True, env=env(), timeout=300
    )


@pytest.mark.skipif(not _can_mount(), reason="needs root and unshare -m to mount a read-only filesystem")
def test_read_only_filesystem_is_one_line_for_root(data, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    cmd = shlex.join(train_cmd(*tiny(data, ro / "run", 2, f"dataset.index_cache_dir={tmp_path}/c")))
    proc = _in_private_mount(
        f"mount -t tmpfs -o ro,size=1m tmpfs {ro} && cd {os.getcwd()} && {cmd}", tmp_path
    )
    assert proc.returncode == 6, proc.stderr
    err = proc.stderr.strip()
    assert (
        err.startswith(f"error: output_dir {ro}/run cannot be written (Read-only file system")
        and "\n" not in err
    )


def test_a_disk_filling_during_a_checkpoint_save_keeps_the_previous_one(data, tmp_path):
    """The run writes to a small tmpfs when this machine can mount one (root, unshare -m);
    otherwise the file-size limit (RLIMIT_FSIZE, `ulimit -f`) stands in for the full disk. Either
    way the write of last.pt fails part-way, as on a full disk."""
    made = tmp_path / "made"  # a finished 3-step run, copied onto the small disk
    assert main(["--config", DEMO, *tiny(data, made, 3, f"dataset.index_cache_dir={tmp_path}/c")]) == 0
    before = (made / "checkpoint" / "last.pt").read_bytes()
    run = tmp_path / "run"
    run.mkdir()
    second = tiny(data, run, 9, f"dataset.index_cache_dir={tmp_path}/c", "batches_per_save=2")
    if _can_mount():
        script = (
            f"mount -t tmpfs -o size=32m tmpfs {run} && cp -a {made}/. {run}/ "
            f"&& fallocate -l $(( $(stat -f -c %a*%S {run}) - 3000000 )) {run}/filler "
            f"&& cd {os.getcwd()} && {shlex.join(train_cmd(*second))}; echo rc=$? "
            f"; cp {run}/checkpoint/last.pt {tmp_path}/after.pt; ls -a {run}/checkpoint > {tmp_path}/ls"
        )
        proc = _in_private_mount(script, tmp_path)
        assert "rc=4" in proc.stdout, proc.stdout + proc.stderr
        after = (tmp_path / "after.pt").read_bytes()
        leftovers = [n for n in (tmp_path / "ls").read_text().split() if n.endswith(".tmp")]
    else:
        import resource

        shutil.copytree(made, run, dirs_exist_ok=True)

        def limit():
            resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))

        proc = subprocess.run(
            train_cmd(*second), env=env(), capture_output=True, text=True, timeout=300, preexec_fn=limit
        )
        assert proc.returncode == 4, proc.stderr
        after = (run / "checkpoint" / "last.pt").read_bytes()
        leftovers = list((run / "checkpoint").glob(".*.tmp"))
    err = proc.stderr.strip()
    assert before == after and not leftovers
    assert "\n" not in err and "Traceback" not in err, err
    assert "last.pt failed (" in err and "the previous last.pt is intact" in err and "resume=auto" in err


# ---- two runs, one output_dir ----


def test_a_new_run_moves_another_runs_logs_aside_and_a_resume_does_not(data, tmp_path, capsys):
    out = tmp_path / "out"
    first = tiny(data, out, 3, f"checkpoint_dir={tmp_path}/ck1")
    assert main(["--config", DEMO, *first]) == 0
    old = {name: (out / name).read_bytes() for name in ("training_log", "metrics.csv")}
    old_events = sorted(p.name for p in (out / "tensorboard").iterdir())
    # The same run continued: its files stay where they are.
    assert main(["--config", DEMO, *tiny(data, out, 5, f"checkpoint_dir={tmp_path}/ck1")]) == 0
    assert not (out / "previous_runs").exists()
    continued = {name: (out / name).read_bytes() for name in ("training_log", "metrics.csv")}
    capsys.readouterr()
    # Another run (a new checkpoint_dir) in the same output_dir.
    assert main(["--config", DEMO, *tiny(data, out, 2, f"checkpoint_dir={tmp_path}/ck2")]) == 0
    (moved,) = (out / "previous_runs").iterdir()
    assert f"moved them to {moved} (nothing overwritten)" in capsys.readouterr().out
    assert {name: (moved / name).read_bytes() for name in continued} == continued
    assert continued["training_log"].startswith(old["training_log"])
    assert sorted(p.name for p in (moved / "tensorboard").iterdir())[: len(old_events)] == old_events
    rows = (out / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[:2] for r in rows[1:]] == [["0", "train"], ["0", "val"], ["1", "val"]]
    assert "ck2" in (out / ".spotrun_run").read_text()


# ---- how failures are reported ----


def test_an_unexpected_error_prints_its_traceback_and_asks_for_a_report(data, tmp_path, capsys, monkeypatch):
    def broken(*a, **k):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(train_module, "build_val_loader", broken)
    assert main(["--config", DEMO, *tiny(data, tmp_path / "run", 2)]) == UNEXPECTED_EXIT
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "ZeroDivisionError: a bug" in err
    assert err.strip().endswith("unexpected error: please report it with the traceback above")


def test_spotrun_debug_shows_the_chained_cause_of_an_expected_error(data, tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    args = tiny(data, tmp_path / "run", 2, f"checkpoint_dir={blocker}/ck")
    monkeypatch.setenv("SPOTRUN_DEBUG", "1")
    assert main(["--config", DEMO, *args]) == 6
    err = capsys.readouterr().err
    assert "Traceback" in err and "OutputError" in err
    assert err.strip().splitlines()[-1].startswith("error: checkpoint_dir")


# ---- fault: kill -9 at random points ----


def test_kill_9_at_random_points_then_resume_always_completes(data, tmp_path):
    import random
    import signal
    import time

    from ml import checkpoint

    run = tmp_path / "run"
    args = tiny(
        data,
        run,
        30,
        f"dataset.index_cache_dir={tmp_path}/c",
        "batches_per_save=1",
        "batches_per_train_log=1",
    )
    rng = random.Random(12)
    for _ in range(3):
        proc = subprocess.Popen(
            train_cmd(*args), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        log = run / "training_log"
        deadline = time.monotonic() + 120
        seen = log.read_text().count("Train batch") if log.exists() else 0
        # Wait for this process to train a step, then kill it at a random moment (a step, a save,
        # a validation).
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and log.read_text().count("Train batch") > seen:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode in (-signal.SIGKILL, 0), proc.stderr.read()
    final = subprocess.run(train_cmd(*args), env=env(), capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert checkpoint.load(run / "checkpoint" / "last.pt")["step"] == 30
    assert not list((run / "checkpoint").glob(".*.tmp"))
    rows = [tuple(r.split(",")[:2]) for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert len(rows) == len(set(rows)) and ("29", "val") in rows  # no step logged twice
