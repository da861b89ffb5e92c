"""A user's world for command-line tables: a HOME with a launched instance's record and an adopted
machine's, a project folder, datasets, a checkpoint, and moto's server holding two running spotrun
instances, a workspace volume attached to one, and a dataset in S3. Commands run as the user runs
them: the real `fab`, `python -m ml.evaluate|ml.train`, `python scripts/...` as subprocesses.

`World.state()` is everything a command could lose: every file's bytes under HOME, the project and
the data folders, every S3 object's ETag, every instance's and volume's state. A table row asserts
it is unchanged after a refused command.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import boto3

REPO = Path(__file__).resolve().parents[1]
FAB = str(Path(sys.executable).parent / "fab")
BUCKET = "spotrun-datasets"
SESSION = "t15.2023.08.11"

COMMANDS = {
    "fab": [FAB, "-r", str(REPO)],
    "evaluate": [sys.executable, "-m", "ml.evaluate"],
    "train": [sys.executable, "-m", "ml.train"],
    "synth": [sys.executable, str(REPO / "scripts" / "make_synthetic_data.py")],
    "plot": [sys.executable, str(REPO / "scripts" / "plot_metrics.py")],
}


@dataclass
class World:
    root: Path
    home: Path
    project: Path
    env: dict[str, str]
    fills: dict[str, str]

    def _aws(self, service: str):
        key = f"_{service}"
        if key not in self.__dict__:
            self.__dict__[key] = boto3.client(
                service, region_name="us-east-1", endpoint_url=self.env["AWS_ENDPOINT_URL"]
            )
        return self.__dict__[key]

    def fill(self, argv) -> list[str]:
        out = []
        for a in argv:
            for key, value in self.fills.items():
                a = a.replace("{" + key + "}", value)
            out.append(a)
        return out

    def run(self, tool: str, *argv: str, env: dict[str, str] | None = None) -> tuple[int, str]:
        """The command as typed (no terminal on stdin: a question cannot be answered); ``env``:
        variables added to the world's."""
        proc = subprocess.run(
            [*COMMANDS[tool], *self.fill(argv)],
            cwd=self.project,
            env=dict(self.env, PYTHONPATH=str(REPO), **(env or {})),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
        )
        return proc.returncode, proc.stdout + proc.stderr

    def files(self) -> dict[str, str]:
        out = {}
        for top in (self.home, self.project, self.root / "data"):
            for dirpath, _, names in os.walk(top):
                if Path(dirpath).is_relative_to(self.home / ".cache"):
                    continue  # a cache refilled by any command loses nothing
                for name in names:
                    p = Path(dirpath) / name
                    out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "?"
        return out

    def cloud(self) -> dict[str, object]:
        ec2, s3 = self._aws("ec2"), self._aws("s3")
        found = ec2.describe_instances()["Reservations"]
        return {
            "instances": sorted((i["InstanceId"], i["State"]["Name"]) for r in found for i in r["Instances"]),
            "volumes": sorted(
                (v["VolumeId"], v["State"], tuple(a["InstanceId"] for a in v.get("Attachments", [])))
                for v in ec2.describe_volumes()["Volumes"]
            ),
            "objects": sorted(
                (o["Key"], o["ETag"]) for o in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
            ),
        }

    def state(self) -> dict[str, object]:
        return {"files": self.files(), **self.cloud()}


def _tag(**tags: str) -> list[dict]:
    return [{"Key": k.replace("_", ":", 1), "Value": v} for k, v in tags.items()]


def build(moto_server: str, monkeypatch) -> World:
    """The world (call from a module-scoped fixture; remove ``world.root`` after)."""
    from common import aws
    from ec2 import registry
    from ec2.remote import sshconfig
    from ml.data.synthetic import write_synthetic
    from tests.peers.trainkit import DEMO

    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"))
    root = Path(tempfile.mkdtemp(prefix="srd", dir="/tmp"))
    home, project, data = root / "home", root / "p", root / "data"
    (home / ".ssh").mkdir(parents=True)
    (project / "configs").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SPOTRUN_"))}
    env.update(
        HOME=str(home),
        SPOTRUN_HOME=str(home / ".spotrun"),
        AWS_ENDPOINT_URL=moto_server,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(root / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(root / "aws-credentials"),
        SPOTRUN_SSH_ATTEMPTS="1",
        OMP_NUM_THREADS="1",
    )
    for k in [k for k in os.environ if k.startswith(("AWS_", "SPOTRUN_"))]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    aws.reset_clients()
    (project / "configs" / "aws.yaml").write_text(
        "ssh_cidr: 203.0.113.7/32\nami_owners: [self]\ninstance_types: [g5.xlarge]\nzones: [us-east-1a]\n"
    )
    shutil.copy(DEMO, project / "configs" / "demo.yaml")
    key = home / "id_box"
    key.write_text("not a real key\n")

    # Two running spotrun instances (as `fab launch` tags them) and a volume attached to one.
    ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=moto_server)
    ids = {}
    for name in ("exp1", "exp2"):
        ids[name] = ec2.run_instances(
            ImageId="ami-03cf127a",  # one of moto's stock AMIs, by id (listing them costs seconds)
            MinCount=1,
            MaxCount=1,
            Placement={"AvailabilityZone": "us-east-1a"},
            TagSpecifications=[
                {"ResourceType": "instance", "Tags": _tag(spotrun_name=name, spotrun_managed="true")}
            ],
        )["Instances"][0]["InstanceId"]
    volume = ec2.create_volume(
        AvailabilityZone="us-east-1a",
        Size=10,
        VolumeType="gp3",
        TagSpecifications=[
            {"ResourceType": "volume", "Tags": _tag(spotrun_volume="ws", spotrun_managed="true")}
        ],
    )["VolumeId"]
    ec2.attach_volume(VolumeId=volume, InstanceId=ids["exp1"], Device="/dev/sdf")

    # The local records `fab launch` and `fab adopt` write.
    registry.put(
        registry.MachineRecord(
            name="exp1", host="198.51.100.5", key_path=str(key), instance_id=ids["exp1"], region="us-east-1"
        )
    )
    registry.put(registry.MachineRecord(name="box", host="127.0.0.1", port=9, key_path=str(key)))
    # An instance launched in another region: this region cannot see it.
    registry.put(
        registry.MachineRecord(
            name="far", host="203.0.113.44", key_path=str(key), instance_id="i-0f00d", region="eu-west-1"
        )
    )
    for name in ("exp1", "box", "far"):
        sshconfig.write_entry(registry.get(name))

    # Datasets: the synthetic one this project writes, and a "real" one (no synthetic mark).
    write_synthetic(data / "synthetic", n_sessions=1, n_trials=4, seed=0)
    write_synthetic(data / "real", n_sessions=1, n_trials=4, seed=1)
    import h5py

    with h5py.File(data / "real" / SESSION / "data_train.hdf5", "r+") as f:
        f.attrs.pop("generator", None)
    # In S3, a released dataset's file under the prefix a user might push to by mistake.
    s3 = boto3.client("s3", region_name="us-east-1", endpoint_url=moto_server)
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key=f"release/{SESSION}/data_train.hdf5", Body=os.urandom(4096))

    # What a user keeps: a trained checkpoint, their own notes in a folder, a metrics CSV.
    ckpt = project / "trained_models" / "exp" / "checkpoint"
    ckpt.mkdir(parents=True)
    (ckpt / "last.pt").write_bytes(os.urandom(2048))
    (project / "notes").mkdir()
    (project / "notes" / "train.log").write_text("my own notes, not a run's log\n")
    (project / "metrics.csv").write_text("step,split,loss,per,lr,seconds\n1,train,2.0,,0.01,1\n")
    (project / "a-file").write_text("a file, not a folder\n")
    (project / "figure.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(512))  # a paper's figure
    fills = {
        "key": str(key),
        "data": str(data),
        "exp1_id": ids["exp1"],
        "bucket": BUCKET,
    }
    return World(root, home, project, env, fills)
