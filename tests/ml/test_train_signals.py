"""Stopping on a signal: SIGUSR1/SIGTERM → finish the step, save, exit 75, resume at that step.

The subprocess test sends a real signal to a real `python -m ml.train`. The in-process tests pick
the moment: they send the signal (a real one, to this process, through the trainer's handler)
from inside validation or inside a checkpoint write.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

from ml import checkpoint
from ml import trainer as train_module
from ml.errors import STOPPED_RESUMABLE
from ml.train import main
from tests.peers.trainkit import DEMO, env, tiny, train_cmd


def _wait_for(path, text, proc, timeout=180.0):  # a bound, not a timing: 6 workers share 2 cores
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and text in path.read_text():
            return
        assert proc.poll() is None, f"trainer exited early with {proc.returncode}"
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in {path}")


def test_sigusr1_to_a_running_trainer_saves_exits_75_and_resume_continues(data, tmp_path, capsys):
    run = tmp_path / "run"
    args = tiny(data, run, 100_000, "batches_per_val_step=1000000", "batches_per_save=1000000")
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen(train_cmd(*args), stdout=out, stderr=err, env=env())
        try:
            _wait_for(run / "training_log", "Train batch 10:", proc)
            proc.send_signal(signal.SIGUSR1)
            assert proc.wait(timeout=60) == STOPPED_RESUMABLE
        finally:
            if proc.poll() is None:
                proc.kill()
    stdout = (tmp_path / "out").read_text()
    m = re.search(r"stopped by SIGUSR1 at step (\d+); checkpoint saved \(resume with resume=auto\)", stdout)
    assert m, stdout[-2000:]
    step = int(m.group(1))
    assert step >= 11
    assert "Traceback" not in (tmp_path / "err").read_text()
    assert checkpoint.load(run / "checkpoint" / "last.pt")["step"] == step

    assert main(["--config", DEMO, *tiny(data, run, step + 2)]) == 0
    out = capsys.readouterr().out
    assert f"resumed from {run / 'checkpoint' / 'last.pt'} at step {step}" in out
    assert f"Train batch {step}:" in out or f"Val batch {step + 1}:" in out
    assert checkpoint.load(run / "checkpoint" / "last.pt")["step"] == step + 2


def test_sigterm_during_validation_stops_it_without_choosing_a_best(data, tmp_path, capsys, monkeypatch):
    real = train_module.build_val_loader
    passes = []

    class SignalOnSecondPass:
        def __init__(self, loader):
            self.loader = loader

        def __iter__(self):
            passes.append(1)
            for batch in self.loader:
                if len(passes) == 2:
                    os.kill(os.getpid(), signal.SIGTERM)  # lands inside the validation at batch 5
                yield batch

    monkeypatch.setattr(train_module, "build_val_loader", lambda *a, **k: SignalOnSecondPass(real(*a, **k)))
    run = tmp_path / "run"
    assert main(["--config", DEMO, *tiny(data, run, 20)]) == STOPPED_RESUMABLE
    out = capsys.readouterr().out
    assert "stopped by SIGTERM at step 6; checkpoint saved" in out
    assert "Val batch 0:" in out and "Val batch 5:" not in out
    assert checkpoint.load(run / "checkpoint" / "last.pt")["step"] == 6
    assert checkpoint.load(run / "checkpoint" / "best.pt")["step"] == 1  # from batch 0's full validation
    assert "5,val," not in (run / "metrics.csv").read_text()  # no row from the cut-short validation
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed on the way out


def test_signal_during_a_checkpoint_write_finishes_the_write_then_stops(data, tmp_path, capsys, monkeypatch):
    real_save = checkpoint.save
    sent = []

    def save_with_signal(obj, path):
        if path.name == "last.pt" and not sent:
            sent.append(obj["step"])
            os.kill(os.getpid(), signal.SIGUSR1)  # arrives while this write is in progress
        real_save(obj, path)

    monkeypatch.setattr(checkpoint, "save", save_with_signal)
    run = tmp_path / "run"
    assert main(["--config", DEMO, *tiny(data, run, 20, "batches_per_save=3")]) == STOPPED_RESUMABLE
    assert sent == [3]
    assert "stopped by SIGUSR1 at step 3; checkpoint saved" in capsys.readouterr().out
    last = checkpoint.load(run / "checkpoint" / "last.pt")
    assert last["step"] == 3 and "rng" in last
