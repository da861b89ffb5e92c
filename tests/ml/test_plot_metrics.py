"""scripts/plot_metrics.py: a PNG from metrics.csv, one-line errors for files it cannot use."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers.trainkit import write_metrics

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "plot_metrics.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

_spec = importlib.util.spec_from_file_location("plot_metrics", SCRIPT)
plot_metrics = importlib.util.module_from_spec(_spec)
sys.modules["plot_metrics"] = plot_metrics  # dataclasses look their module up there
_spec.loader.exec_module(plot_metrics)


def test_reads_train_and_val_curves(tmp_path):
    curves = plot_metrics.read_metrics(write_metrics(tmp_path / "metrics.csv"))
    assert curves.train_step[:3] == [0, 10, 20] and len(curves.train_loss) == 41
    assert curves.val_step == curves.per_step == [0, 50, 100, 150, 200, 250, 300, 350, 400]
    assert curves.val_per[0] == pytest.approx(1.3, abs=1e-4)


def test_writes_png_beside_the_csv(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    csv_path = write_metrics(tmp_path / "run" / "metrics.csv")
    assert plot_metrics.main([str(csv_path)]) == 0
    png = tmp_path / "run" / "metrics.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    assert capsys.readouterr().out.strip() == str(png)


def test_out_option_and_a_half_written_last_line(tmp_path):
    csv_path = write_metrics(tmp_path / "metrics.csv")
    with csv_path.open("a") as f:
        f.write("410,tra")  # a run still writing
    out = tmp_path / "plots" / "curves.png"
    out.parent.mkdir()
    assert plot_metrics.main([str(csv_path), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_train_rows_only(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("step,split,loss,per,lr,seconds\n0,train,100.0,,0.0,0.1\n10,train,90.0,,0.001,1.0\n")
    assert plot_metrics.main([str(csv_path)]) == 0
    assert (tmp_path / "metrics.png").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("", "no step, split, loss, per column"),
        ("step,split,loss,per,lr,seconds\n", "no metrics rows yet"),
        ("a,b\n1,2\n", "is this a metrics.csv"),
    ],
)
def test_unusable_file_is_one_line_error(tmp_path, capsys, content, message):
    csv_path = tmp_path / "metrics.csv"
    if content is not None:
        csv_path.write_text(content)
    assert plot_metrics.main([str(csv_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {csv_path}: ") and message in err
    assert err.count("\n") == 1
    assert not (tmp_path / "metrics.png").exists()


def test_command_line_exit_codes(tmp_path):
    missing = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "nope.csv")], capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: ") and "Traceback" not in missing.stderr
    ok = subprocess.run(
        [sys.executable, str(SCRIPT), str(write_metrics(tmp_path / "metrics.csv"))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "metrics.png").read_bytes()[:8] == PNG_MAGIC
