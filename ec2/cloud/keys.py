"""The SSH key pair: an EC2 key pair and its private key at ~/.ssh/<key>.pem (mode 0400).

The private key exists only once, when EC2 creates the pair, so it is written atomically and never
over an existing file. If AWS has the pair but the file is gone, nothing can recover the key: the
user must delete the pair (then a new one is made) or restore the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from common.atomic import atomic_write_text
from common.aws import aws_errors
from ec2 import paths
from ec2.errors import KeyPairError


def describe_pair(ec2, key_name: str) -> dict | None:
    """The EC2 key pair (with its tags), or None if AWS has none of that name."""
    with aws_errors(f"looking up key pair {key_name!r}", tolerate={"InvalidKeyPair.NotFound"}):
        return ec2.describe_key_pairs(KeyNames=[key_name])["KeyPairs"][0]
    return None


def _pair_exists(ec2, key_name: str) -> bool:
    return describe_pair(ec2, key_name) is not None


def _tags(key_name: str, owner: str) -> list[dict]:
    return [
        {
            "ResourceType": "key-pair",
            "Tags": [
                {"Key": "Name", "Value": key_name},
                {"Key": "spotrun:managed", "Value": "true"},
                {"Key": "spotrun:owner", "Value": owner},
            ],
        }
    ]


def ensure_key_pair(ec2, key_name: str, owner: str, import_public_key: str | None = None) -> Path:
    """The private key file for ``key_name``, creating or importing the EC2 key pair if needed."""
    key_file = paths.key_file(key_name)
    if import_public_key:
        return _ensure_imported(ec2, key_name, owner, Path(import_public_key).expanduser())
    exists = _pair_exists(ec2, key_name)
    if exists and key_file.exists():
        return key_file
    if exists:
        raise KeyPairError(
            f"EC2 key pair {key_name!r} exists but its private key {key_file} is missing; restore the "
            f"file, or delete the pair with `fab cleanup` (when no instance uses it) or "
            f"`aws ec2 delete-key-pair --key-name {key_name}`, or set `key_name:` to a new name"
        )
    if key_file.exists():
        raise KeyPairError(
            f"{key_file} exists but EC2 has no key pair {key_name!r}; it will not be overwritten. "
            f"Import it with `import_public_key:` (its .pub), or set `key_name:` to a new name"
        )
    with aws_errors(f"creating key pair {key_name!r}"):
        material = ec2.create_key_pair(
            KeyName=key_name, KeyType="ed25519", TagSpecifications=_tags(key_name, owner)
        )["KeyMaterial"]
    key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private_key(key_file, material)
    print(f"key pair: created {key_name!r} (ed25519), private key saved to {key_file}")
    return key_file


def write_private_key(key_file: Path, material: str) -> None:
    """Write the key atomically with mode 0400; refuse to replace an existing file (a link made
    in the final step fails if the name exists, where a rename would silently overwrite)."""
    if key_file.exists():
        raise KeyPairError(f"{key_file} already exists; it will not be overwritten")
    text = material if material.endswith("\n") else material + "\n"
    staging = key_file.with_name(f".{key_file.name}.new")
    atomic_write_text(staging, text, mode=0o400)
    try:
        os.link(staging, key_file)
    except FileExistsError:
        raise KeyPairError(f"{key_file} appeared meanwhile; it will not be overwritten") from None
    finally:
        staging.unlink(missing_ok=True)


def _ensure_imported(ec2, key_name: str, owner: str, public_key: Path) -> Path:
    """Use the user's own key: ``import_public_key`` names the .pub, the private key sits beside it."""
    private = public_key.with_suffix("") if public_key.suffix == ".pub" else None
    if private is None or not public_key.is_file() or not private.is_file():
        raise KeyPairError(
            f"import_public_key {public_key} must be an existing .pub file with its private key beside "
            "it (e.g. ~/.ssh/id_ed25519.pub)"
        )
    if not _pair_exists(ec2, key_name):
        with aws_errors(f"importing {public_key} as key pair {key_name!r}"):
            ec2.import_key_pair(
                KeyName=key_name,
                PublicKeyMaterial=public_key.read_bytes(),
                TagSpecifications=_tags(key_name, owner),
            )
        print(f"key pair: imported {public_key} as {key_name!r}")
    return private


def private_key_path(key_name: str, import_public_key: str | None = None) -> Path:
    """Where the private key of the configured key pair lives (no AWS call): beside an imported
    .pub, else ~/.ssh/<key>.pem."""
    if import_public_key:
        public_key = Path(import_public_key).expanduser()
        return public_key.with_suffix("") if public_key.suffix == ".pub" else public_key
    return paths.key_file(key_name)
