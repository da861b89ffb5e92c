"""Every output path is checked before the work (common/outputs.py), in every entry point that
writes: `python -m ml.train`, `python -m ml.evaluate`, `scripts/make_synthetic_data.py`,
`scripts/plot_metrics.py`, `fab download --dest`. One row per mistake, typed as a user types it:
an empty path, a file where a folder goes (or the reverse), an extension that is not what is
written, a path that cannot be written, an output landing on another output or an input.

The contract: the exit code; one `error:` line naming the path and the next step; no traceback;
nothing written or changed (tests/clikit.py's World.state()); and for ml.evaluate, the check comes
before the evaluation (the fixture's checkpoint cannot even be loaded: had the evaluation started,
the line would be about the checkpoint). ml.train's and ml.evaluate's checks also come before torch
is imported, so the refusal is immediate.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass

import pytest

from tests import clikit

EVAL = ("--checkpoint", "trained_models/exp/checkpoint", "--config", "configs/demo.yaml")
TRAIN = ("--config", "configs/demo.yaml", "dataset.dataset_dir={data}/synthetic")


@dataclass(frozen=True)
class Row:
    id: str
    tool: str
    argv: tuple[str, ...]
    code: int
    says: tuple[str, ...]


def row(id, tool, *argv, code, says):
    return Row(id, tool, tuple(argv), code, tuple(says))


ROWS = [
    # ml.train
    row(
        "train-output-dir-empty",
        "train",
        *TRAIN,
        "output_dir=",
        code=6,
        says=("output_dir is empty (that would be the current folder)", "give it a folder"),
    ),
    row(
        "train-checkpoint-dir-under-a-file",
        "train",
        *TRAIN,
        "output_dir=runs/x",
        "checkpoint_dir=a-file/ckpt",
        code=6,
        says=("checkpoint_dir a-file/ckpt", "is a file, not a folder", "choose another checkpoint_dir"),
    ),
    row(
        "train-checkpoint-dir-unwritable",
        "train",
        *TRAIN,
        "output_dir=runs/x",
        "checkpoint_dir=/proc/spotrun-ckpt",
        code=6,
        says=("checkpoint_dir /proc/spotrun-ckpt cannot be written", "choose a writable checkpoint_dir"),
    ),
    # ml.evaluate: the same edge as ml.train, before the evaluation
    row(
        "evaluate-out-unwritable",
        "evaluate",
        *EVAL,
        "--out",
        "/proc/spotrun-eval/val.csv",
        code=6,
        says=("--out /proc/spotrun-eval/val.csv cannot be written", "choose a writable --out"),
    ),
    row(
        "evaluate-out-is-a-folder",
        "evaluate",
        *EVAL,
        "--out",
        "notes",
        code=6,
        says=("--out notes is a folder", "give a file name, e.g. notes/result.csv"),
    ),
    row(
        "evaluate-out-wrong-extension",
        "evaluate",
        *EVAL,
        "--out",
        "eval.txt",
        code=6,
        says=("--out eval.txt: this writes a .csv file", "e.g. --out eval.csv"),
    ),
    row(
        "evaluate-out-under-a-file",
        "evaluate",
        *EVAL,
        "--out",
        "a-file/val.csv",
        code=6,
        says=("is a file, not a folder", "choose another --out"),
    ),
    row(
        "evaluate-output-dir-empty",
        "evaluate",
        *EVAL,
        "output_dir=",
        code=6,
        says=("output_dir is empty", "give it a folder"),
    ),
    # scripts/make_synthetic_data.py
    row(
        "synthetic-out-empty",
        "synth",
        "--out",
        "",
        code=2,
        says=("--out is empty (that would be the current folder)", "give it a folder"),
    ),
    row(
        "synthetic-out-under-a-file",
        "synth",
        "--out",
        "a-file/ds",
        code=2,
        says=("is a file, not a folder", "choose another --out"),
    ),
    row(
        "synthetic-out-unwritable",
        "synth",
        "--out",
        "/proc/spotrun-ds",
        code=2,
        says=("--out /proc/spotrun-ds cannot be written", "choose a writable --out"),
    ),
    # scripts/plot_metrics.py
    row(
        "plot-out-over-its-csv",
        "plot",
        "metrics.csv",
        "--out",
        "metrics.csv",
        code=2,
        says=("--out metrics.csv: this writes a .png file", "e.g. --out metrics.png"),
    ),
    row(
        "plot-out-is-a-folder",
        "plot",
        "metrics.csv",
        "--out",
        "notes",
        code=2,
        says=("--out notes is a folder", "give a file name"),
    ),
    row(
        "plot-out-unwritable",
        "plot",
        "metrics.csv",
        "--out",
        "/proc/spotrun-plot.png",
        code=2,
        says=("cannot be written", "choose a writable --out"),
    ),
    # fab download --dest
    row(
        "download-dest-is-a-file",
        "fab",
        "download",
        "--name",
        "box",
        "--dest",
        "a-file",
        code=6,
        says=("--dest a-file", "is a file, not a folder", "choose another --dest"),
    ),
    row(
        "run-dest-is-a-file",
        "fab",
        "run",
        "--dest",
        "a-file",
        code=6,
        says=("--dest a-file", "is a file, not a folder", "choose another --dest"),
    ),
    row(
        "download-dest-empty",
        "fab",
        "download",
        "--name",
        "box",
        "--dest",
        "",
        code=6,
        says=("--dest is empty (that would be the current folder)",),
    ),
]


@pytest.fixture(scope="module")
def world(moto_server):
    mp = pytest.MonkeyPatch()
    built = clikit.build(moto_server, mp)
    try:
        yield built
    finally:
        mp.undo()
        from common import aws

        aws.reset_clients()
        shutil.rmtree(built.root, ignore_errors=True)


def test_every_entry_point_that_writes_has_rows():
    assert {r.tool for r in ROWS} == {"train", "evaluate", "synth", "plot", "fab"}
    assert len({r.id for r in ROWS}) == len(ROWS)


# The trainer's and the evaluator's checks come before torch is imported (ml/train.py,
# ml/evaluate.py): a typo is refused at once, not after seconds of import. PYTHONPROFILEIMPORTTIME=1 (what
# `python -X importtime` sets) has the interpreter list every module it imports on stderr.
TORCH_IMPORTED = re.compile(r"^import time:.*\|\s+torch$", re.MULTILINE)


@pytest.mark.parametrize("case", ROWS, ids=[r.id for r in ROWS])
def test_an_output_path_is_checked_before_the_work(case, world):
    before = world.state()
    python_tool = case.tool in ("train", "evaluate")
    listing = {"PYTHONPROFILEIMPORTTIME": "1"} if python_tool else None
    code, output = world.run(case.tool, *case.argv, env=listing)
    if python_tool:
        assert "import time:" in output  # the list is there, so torch's absence from it means something
        assert not TORCH_IMPORTED.search(output), f"{case.tool} imported torch before refusing"
        output = "\n".join(line for line in output.splitlines() if not line.startswith("import time:"))
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert "Traceback" not in output, output
    assert len(errors) == 1, f"expected exactly one error: line, got:\n{output}"
    for fragment in world.fill(case.says):
        assert fragment in errors[0], f"{fragment!r} missing from {errors[0]!r}"
    assert code == case.code, f"exit {code}, expected {case.code}: {output}"
    assert "checkpoint:" not in output  # ml.evaluate never began: no checkpoint was loaded
    assert world.state() == before


def test_two_outputs_or_an_output_and_an_input_alike_are_refused(tmp_path):
    from common import outputs
    from common.errors import OutputError

    (tmp_path / "m.csv").write_text("step\n")
    (tmp_path / "link.csv").symlink_to(tmp_path / "m.csv")
    outputs.distinct({"the metrics CSV": tmp_path / "m.csv", "--out": tmp_path / "m.png", "x": None})
    with pytest.raises(OutputError, match=r"^--out and the metrics CSV are the same path .*link.csv"):
        outputs.distinct({"the metrics CSV": tmp_path / "m.csv", "--out": tmp_path / "link.csv"})
