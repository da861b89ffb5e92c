"""Every command that terminates, deletes, overwrites or re-registers something, one row each,
typed as a user types it (the real `fab`, `python -m`, the scripts) against moto's server.

Each row is a mistake the command must refuse (common/guard.py): flags that disagree, or a target
holding something the command did not make and was not told to replace (--force / --yes). The
contract: the exit code; exactly one `error:` line naming what would be lost and the way out; no
traceback; and nothing lost: every file byte-identical, every instance and volume in its state,
every S3 object unchanged, nothing new written (tests/clikit.py's World.state()).

Commands looked at and left without a refusal row, with why:
- `fab cleanup` deletes only what spotrun tagged and nothing uses, and the .pem only with --yes
  (tests/cloud/test_iam.py, tests/ec2/test_tasks.py);
- `fab forget` drops only the local entries of the name typed (the machine is untouched);
- `fab train --force` replaces only the run named (tests/remote/test_tasks.py refuses it without);
- `fab sync` deletes only in the code folder, sparing the run's outputs (tests/remote).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import pytest

from tests import clikit


@dataclass(frozen=True)
class Row:
    id: str
    tool: str  # a key of clikit.COMMANDS
    argv: tuple[str, ...]
    code: int
    says: tuple[str, ...]  # fragments of the one error line: what would be lost, the way out


def row(id, tool, *argv, code=2, says=()):
    return Row(id, tool, tuple(argv), code, tuple(says))


ROWS = [
    # fab terminate: --all and --name used to end every instance; now neither is resolved for you.
    row(
        "terminate-all-and-name",
        "fab",
        "terminate",
        "--all",
        "--name",
        "exp1",
        "--yes",
        says=("--all and --name disagree", "--all ends every spotrun instance", "give only one of them"),
    ),
    row(
        "terminate-all-unconfirmed",
        "fab",
        "terminate",
        "--all",
        code=1,
        says=("needs confirmation and there is no terminal", "pass --yes"),
    ),
    row(
        "terminate-name-unconfirmed",
        "fab",
        "terminate",
        "--name",
        "exp1",
        code=1,
        says=("terminate exp1 ({exp1_id}", "needs confirmation", "pass --yes"),
    ),
    row(
        "terminate-adopted-machine",
        "fab",
        "terminate",
        "--name",
        "box",
        "--yes",
        code=1,
        says=("box is an adopted machine spotrun did not launch", "`fab forget --name box`"),
    ),
    # fab terminate of a name launched in another region dropped its record ("stale" here).
    row(
        "terminate-a-name-from-another-region",
        "fab",
        "terminate",
        "--name",
        "far",
        "--yes",
        code=1,
        says=(
            "no spotrun instance named 'far' in us-east-1; its record points at i-0f00d in eu-west-1",
            "`fab terminate --name far --set region=eu-west-1`",
        ),
    ),
    # fab adopt of a launched instance's name replaced its record and SSH entry.
    row(
        "adopt-over-launched-instance",
        "fab",
        "adopt",
        "exp1",
        "198.51.100.9",
        "--key",
        "{key}",
        says=(
            "adopting 'exp1' would replace the record and SSH entry of launched instance {exp1_id}",
            "pass --force",
            "adopt under another name",
        ),
    ),
    # fab launch of an adopted machine's name would replace its record and SSH entry.
    row(
        "launch-over-adopted-machine",
        "fab",
        "launch",
        "--name",
        "box",
        says=(
            "launching 'box' would replace adopted machine ubuntu@127.0.0.1:9's record and SSH entry",
            "launch under another --name, or `fab forget --name box` first",
        ),
    ),
    row(
        "volume-delete-unconfirmed",
        "fab",
        "volume-delete",
        "--name",
        "ws",
        code=1,
        says=("delete volume ws", "needs confirmation", "pass --yes"),
    ),
    row(
        "volume-delete-attached",
        "fab",
        "volume-delete",
        "--name",
        "ws",
        "--yes",
        code=1,
        says=("cannot delete volume ws: it is attached to {exp1_id} (exp1)", "terminate that instance first"),
    ),
    row(
        "volume-move-attached",
        "fab",
        "volume-move",
        "--name",
        "ws",
        "--zone",
        "us-east-1b",
        code=1,
        says=("cannot move volume ws: it is attached to {exp1_id} (exp1)", "terminate that instance first"),
    ),
    # fab stop of a plain instance's name: it stops detached runs only, and this is none.
    row(
        "stop-a-plain-instance",
        "fab",
        "stop",
        "--name",
        "exp1",
        code=1,
        says=("no detached run named 'exp1'", "`fab status` lists what runs"),
    ),
    # fab data-push replaced objects of the same key with other contents.
    row(
        "data-push-over-another-dataset",
        "fab",
        "data-push",
        "--src",
        "{data}/synthetic",
        "--dest",
        "s3://{bucket}/release",
        says=(
            "pushing to s3://{bucket}/release would replace s3://{bucket}/release/t15.2023.08.11/"
            "data_train.hdf5 (other contents)",
            "pass --force",
            "push to another prefix",
        ),
    ),
    # fab download --dest into a folder of the user's own overwrote same-named files.
    row(
        "download-into-a-foreign-folder",
        "fab",
        "download",
        "--name",
        "box",
        "--dest",
        "notes",
        says=(
            "downloading into --dest notes would overwrite same-named files among 1 file(s) that spotrun "
            "did not put there (train.log)",
            "pass --force",
            "choose an empty or new --dest",
        ),
    ),
    # fab run --dest downloads there (and keeps its run.json): checked before an instance is paid for.
    row(
        "run-into-a-foreign-folder",
        "fab",
        "run",
        "--dest",
        "notes",
        says=("downloading into --dest notes would overwrite", "(train.log)", "pass --force"),
    ),
    # make_synthetic_data.py --out over a real dataset overwrote its HDF5 files.
    row(
        "synthetic-over-a-real-dataset",
        "synth",
        "--out",
        "{data}/real",
        "--sessions",
        "1",
        "--trials",
        "4",
        says=(
            "--out {data}/real would overwrite t15.2023.08.11/data_train.hdf5 (not written by this script)",
            "pass --force",
            "choose another --out",
        ),
    ),
    # ml.evaluate --out chart.png wrote its CSV there, then the chart over it.
    row(
        "evaluate-out-named-like-its-chart",
        "evaluate",
        "--checkpoint",
        "trained_models/exp/checkpoint",
        "--config",
        "configs/demo.yaml",
        "--out",
        "chart.png",
        code=6,
        says=("--out chart.png: this writes a .csv file", "e.g. --out chart.csv"),
    ),
    row(
        "evaluate-over-an-existing-file",
        "evaluate",
        "--checkpoint",
        "trained_models/exp/checkpoint",
        "--config",
        "configs/demo.yaml",
        "--out",
        "metrics.csv",
        says=("would overwrite metrics.csv (already there)", "pass --force", "choose another --out"),
    ),
    # plot_metrics.py --out over a PNG it did not draw (a paper's figure) replaced it.
    row(
        "plot-over-a-foreign-png",
        "plot",
        "metrics.csv",
        "--out",
        "figure.png",
        says=("plotting would overwrite figure.png (not a plot: no matplotlib mark)", "pass --force"),
    ),
    # ml.train with resume=never over a checkpoint_dir holding a run.
    row(
        "train-fresh-over-a-checkpoint",
        "train",
        "--config",
        "configs/demo.yaml",
        "output_dir=trained_models/exp",
        "checkpoint_dir=trained_models/exp/checkpoint",
        "resume=never",
        "dataset.dataset_dir={data}/synthetic",
        code=4,
        says=("already holds last.pt", "resume=never would overwrite it", "set resume=auto"),
    ),
]

# Every fab task that terminates, deletes, overwrites or re-registers, and has a row above.
DESTRUCTIVE_TASKS = {
    "terminate",
    "adopt",
    "launch",
    "volume-delete",
    "volume-move",
    "stop",
    "data-push",
    "download",
    "run",
}


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


@pytest.fixture(autouse=True)
def in_the_worlds_home(laptop_home, request, monkeypatch):
    """laptop_home (autouse) gives every test a HOME of its own; a test that uses this module's world
    runs in the world's HOME instead (its registry, ~/.ssh, ~/.spotrun), as the commands it runs in
    this process must: without this they found an empty registry."""
    if "world" in request.fixturenames:
        world = request.getfixturevalue("world")
        monkeypatch.setenv("HOME", world.env["HOME"])
        monkeypatch.setenv("SPOTRUN_HOME", world.env["SPOTRUN_HOME"])


def test_the_table_covers_every_destructive_task():
    assert DESTRUCTIVE_TASKS <= {r.argv[0] for r in ROWS if r.tool == "fab"}
    assert {"synth", "evaluate", "train", "plot"} <= {r.tool for r in ROWS}
    assert len({r.id for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("case", ROWS, ids=[r.id for r in ROWS])
def test_a_destructive_command_refuses_what_it_was_not_asked(case, world):
    before = world.state()
    code, output = world.run(case.tool, *case.argv)
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert "Traceback" not in output, output
    assert len(errors) == 1, f"expected exactly one error: line, got:\n{output}"
    for fragment in world.fill(case.says):
        assert fragment in errors[0], f"{fragment!r} missing from {errors[0]!r}"
    assert code == case.code, f"exit {code}, expected {case.code}: {output}"
    assert world.state() == before


# ---- --force does what was refused (on copies: the table's world stays as it was) ----------------


def test_force_overwrites_a_dataset_the_script_did_not_write(world):
    copy = world.root / "data" / "real-copy"
    shutil.copytree(world.root / "data" / "real", copy)
    code, output = world.run("synth", "--out", str(copy), "--sessions", "1", "--trials", "4")
    assert code == 2 and "pass --force" in output
    code, output = world.run("synth", "--out", str(copy), "--sessions", "1", "--trials", "4", "--force")
    assert code == 0, output
    from ml.data.synthetic import made_here

    assert made_here(copy / clikit.SESSION / "data_train.hdf5")
    # Its own output is rewritten without --force (`make demo` runs the script every time).
    code, output = world.run("synth", "--out", str(copy), "--sessions", "1", "--trials", "4")
    assert code == 0, output


def test_force_adopts_over_a_launched_instances_record(world):
    from ec2 import registry

    registry.put(registry.MachineRecord(name="exp9", host="198.51.100.99", instance_id="i-0123456789abcdef9"))
    code, output = world.run("fab", "adopt", "exp9", "198.51.100.9", "--key", "{key}", "--force")
    assert code == 0, output
    assert registry.get("exp9").adopted and registry.get("exp9").host == "198.51.100.9"
    registry.remove("exp9")
    from ec2.remote import sshconfig

    sshconfig.remove_entry("exp9")


def test_force_pushes_over_other_contents(world):
    s3 = world._aws("s3")
    key = f"mine/{clikit.SESSION}/data_train.hdf5"
    s3.put_object(Bucket=clikit.BUCKET, Key=key, Body=b"an older copy")
    code, output = world.run("fab", "data-push", "--src", "{data}/synthetic", "--dest", "s3://{bucket}/mine")
    assert code == 2 and "pass --force" in output
    code, output = world.run(
        "fab", "data-push", "--src", "{data}/synthetic", "--dest", "s3://{bucket}/mine", "--force"
    )
    assert code == 0, output
    local = (world.root / "data" / "synthetic" / clikit.SESSION / "data_train.hdf5").read_bytes()
    assert s3.get_object(Bucket=clikit.BUCKET, Key=key)["Body"].read() == local
    for obj in s3.list_objects_v2(Bucket=clikit.BUCKET, Prefix="mine/")["Contents"]:
        s3.delete_object(Bucket=clikit.BUCKET, Key=obj["Key"])


def test_a_plot_replaces_its_own_earlier_plot_and_force_replaces_any(world):
    out = world.project / "curves.png"
    for _ in range(2):  # the second run replaces the first one's PNG without --force
        code, output = world.run("plot", "metrics.csv", "--out", str(out))
        assert code == 0, output
    other = world.project / "other.png"
    other.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    code, output = world.run("plot", "metrics.csv", "--out", str(other), "--force")
    assert code == 0, output
    assert b"Matplotlib" in other.read_bytes()[:512]
    out.unlink()
    other.unlink()
