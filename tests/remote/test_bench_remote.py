"""What `fab bench` runs on the machine and how it names the machine: the command line (as a
string, like `fab train`'s: code folder, venv python, region, no credentials), and the identity
from the IMDS stand-in, or `not-ec2` where no metadata service answers."""

from __future__ import annotations

import socket

import pytest

from ec2 import benchstore
from ec2.errors import ToolkitError
from ec2.journey.bench import to_record
from ec2.remote import benchrun
from ec2.remote.imds import Imds, identity_json
from ec2.remote.trainrun import train_command


def test_the_bench_runs_like_fab_train_does():
    line = benchrun.bench_command(
        "~/spotrun", "configs/rnn_args.yaml", ["dataset.batch_size=32"], 50, 5, {"AWS_REGION": "us-east-1"}
    )
    assert line == (
        'cd "$HOME"/code && export AWS_REGION=us-east-1; '
        'mkdir -p "$HOME"/runs/bench && rm -f "$HOME"/runs/bench/result.json && '
        '"$HOME"/venv/bin/python -m ml.bench --config configs/rnn_args.yaml --steps 50 --warmup 5 '
        '--out "$HOME"/runs/bench/result.json dataset.batch_size=32'
    ).replace('"$HOME"/', '"$HOME"/spotrun/')
    with pytest.raises(ToolkitError, match="refusing to send AWS_SECRET_ACCESS_KEY"):
        benchrun.bench_command("~/spotrun", "c.yaml", [], 1, 0, {"AWS_SECRET_ACCESS_KEY": "x"})


def test_on_a_machine_with_several_gpus_the_bench_starts_one_rank_each_as_the_trainer_does():
    line = benchrun.bench_command("~/spotrun", "configs/rnn_args.yaml", ["seed=1"], 50, 5, None, 4)
    torchrun = '"$HOME"/spotrun/venv/bin/python -m torch.distributed.run --standalone --nproc_per_node 4 '
    assert line.endswith(
        f"&& {torchrun}-m ml.bench --config configs/rnn_args.yaml --steps 50 --warmup 5 "
        '--out "$HOME"/spotrun/runs/bench/result.json seed=1'
    )
    # The same launcher as `fab train` on that machine (one rank per GPU).
    assert train_command("~/spotrun", "configs/rnn_args.yaml", [], 4).startswith(f"{torchrun}-m ml.train ")


def test_identity_comes_from_instance_metadata(imds):
    imds.instance_type = "g6.xlarge"
    who = identity_json(Imds(imds.url, timeout=30))
    assert who == {
        "ec2": True,
        "instance_id": imds.instance_id,
        "instance_type": "g6.xlarge",
        "zone": "us-east-1a",
        "market": "spot",
        "region": "us-east-1",
    }


def test_a_machine_without_instance_metadata_is_kept_as_not_ec2():
    with socket.socket() as s:  # a port nothing listens on: the metadata service is absent
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    who = identity_json(Imds(closed))
    assert who["ec2"] is False
    result = {"gpus": 0, "shape_key": "abc", "median_step_s": 1.5, "data_wait_share": 0.1, "steps": 5}
    record = to_record(benchrun.Measured(result, who, 10.0), "lab", "configs/demo.yaml", None)
    assert (record.instance_type, record.usd, record.zone) == (benchstore.NOT_EC2, None, None)
    assert benchrun.parse_report('{"a": 1}\n{"ec2": false}\n') == ({"a": 1}, {"ec2": False})


def test_bench_on_a_machine_never_set_up_says_to_run_setup(sshd, capsys):
    from invoke import Context
    from invoke.exceptions import Exit

    from tasks.bench import bench

    sshd.record("fresh")
    with pytest.raises(Exit):
        bench(Context(), name="fresh", train_config="configs/demo.yaml", steps=2, warmup=0)
    err = capsys.readouterr().err
    assert "error: fresh has no synced code or venv" in err and "run `fab setup --name fresh` first" in err
    assert "Traceback" not in err and benchstore.load_all() == []


def test_bench_types_measures_all_gpus_of_each_type_and_refuses_gpus(capsys):
    from invoke import Context
    from invoke.exceptions import Exit

    from tasks.bench import bench

    with pytest.raises(Exit):
        bench(Context(), types=["g5.12xlarge"], gpus=1, train_config="configs/demo.yaml")
    err = capsys.readouterr().err
    assert "error: --gpus measures part of one machine (--name); --types measures each type on all" in err
    assert "Traceback" not in err and benchstore.load_all() == []
