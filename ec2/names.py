"""Every name spotrun turns into a file name, an SSH config line or an AWS name is checked here,
and only here: instance names, key pair names, run names, security group names, tags, SSH users
and hosts, and the free-text values that end up on one line of ~/.ssh/config.

Why one module: a name like `../../x` becomes a path (`~/.ssh/<key_name>.pem`,
`~/.spotrun/known_hosts/<name>`, `outputs/<name>/`), and a value holding a newline becomes a
second line in the SSH config include. Each rule is AWS's own character set where AWS has one
(cited below), narrowed where the name also becomes a file name; `/` and `..` are refused in every
name, so nothing is ever written outside ~/.ssh, ~/.spotrun, ~/.cache/spotrun and the run's output
folders.

Each check returns the value unchanged or raises BadName (a ConfigError: exit 2) naming the key
or flag, what is allowed, and an example.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from common.errors import ConfigError


class BadName(ConfigError):
    """A name that AWS would refuse, or that would become a path outside spotrun's folders."""


@dataclass(frozen=True)
class NameRule:
    """A kind of name: what it is called in messages, its pattern, what to tell the user."""

    kind: str
    pattern: re.Pattern[str]
    allowed: str
    example: str
    # Names that become file or folder names: `/` and `..` are never allowed (defence in depth
    # on top of the pattern, which already lacks `/`).
    path_like: bool = True
    forbidden_prefix: str | None = None
    why_no_slash: str = "it becomes a file name"

    def problem(self, value: object) -> str | None:
        if not isinstance(value, str):
            return f"must be text, got {value!r}"
        if not value:
            return "is empty"
        if self.path_like and ("/" in value or ".." in value or "\\" in value):
            return f"must not contain '/', '\\' or '..' ({self.why_no_slash})"
        if self.forbidden_prefix and value.lower().startswith(self.forbidden_prefix):
            return f"must not start with {self.forbidden_prefix!r}"
        if not self.pattern.fullmatch(value):
            return f"is not a usable {self.kind}: {self.allowed}"
        return None

    def check(self, value: object, label: str) -> str:
        """``value`` if usable; else BadName naming ``label`` (a config key or a --flag)."""
        problem = self.problem(value)
        if problem:
            raise BadName(f"{label} {value!r} {problem}; e.g. {self.example}")
        return value  # type: ignore[return-value]


_SAFE = "letters, digits, '.', '_' or '-', starting with a letter or digit"

# An instance name: the spotrun:name tag, the SSH alias spotrun-<name>, the registry key, and
# the file/folder names ~/.spotrun/known_hosts/<name> and outputs/<name>/.
INSTANCE = NameRule(
    "instance name", re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}"), f"{_SAFE}, at most 63", "--name exp1"
)
# A workspace volume: its Name tag and its entry in ~/.spotrun/volumes.json (same shape as an instance).
VOLUME = NameRule(
    "volume name", re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}"), f"{_SAFE}, at most 63", "--name work"
)
# EC2 key pair names may be up to 255 ASCII characters (CreateKeyPair); ours also name the file
# ~/.ssh/<key_name>.pem, so the file-safe subset.
KEY_PAIR = NameRule(
    "key pair name", re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}"), f"{_SAFE}, at most 255", "spotrun"
)
# A run: the tmux session spotrun-<run> and the folder runs/<run>/ on the machine.
RUN = NameRule(
    "run name", re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"), f"{_SAFE}, at most 64", "--run exp1"
)
# CreateSecurityGroup: up to 255 characters, a-z A-Z 0-9 spaces and ._-:/()#,@[]+=&;{}!$*, not
# starting with sg-. The rule refuses '/' and '..' in every name, so '/' is left out.
SECURITY_GROUP = NameRule(
    "security group name",
    re.compile(r"[A-Za-z0-9 ._\-:()#,@\[\]+=&;{}!$*]{1,255}"),
    "up to 255 of a-z A-Z 0-9, spaces and ._-:()#,@[]+=&;{}!$*",
    "spotrun-ssh",
    forbidden_prefix="sg-",
    why_no_slash="spotrun refuses them in every name",
)
# The login user: the SSH config `User` line and rsync's target (POSIX portable user names).
SSH_USER = NameRule(
    "user name", re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,31}"), f"{_SAFE}, at most 32", "ubuntu"
)
# A host name or address (IPv4, IPv6, DNS name): the SSH config `HostName` line.
HOST = NameRule(
    "host",
    re.compile(r"[A-Za-z0-9:][A-Za-z0-9.:_-]{0,252}"),
    "a DNS name or an IP address (a user goes in --user)",
    "--host 203.0.113.7",
    why_no_slash="a host name has none",
)

# Tags (EC2 "Tag restrictions"): key 1-128, value 0-256 characters, letters, digits, spaces and
# + - = . _ : / @; the aws: prefix is reserved. Tags are AWS names only, never paths.
_TAG_CHARS = r"[\w .:/=+\-@]"
TAG_KEY = NameRule(
    "tag key",
    re.compile(_TAG_CHARS + r"{1,128}"),
    "1-128 letters, digits, spaces or + - = . _ : / @",
    "tags: {team: nlp}",
    path_like=False,
    forbidden_prefix="aws:",
)
TAG_VALUE_PATTERN = re.compile(_TAG_CHARS + r"{0,256}")


# AWS's own shapes for a region, a zone and an instance type (checked before any call is made).
REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+")
ZONE = re.compile(r"[a-z]{2}(-[a-z]+)+-\d+[a-z]")
INSTANCE_TYPE = re.compile(r"[a-z][a-z0-9-]*\.[a-z0-9-]+")


def aws_shape(pattern: re.Pattern[str], value: object, label: str, example: str) -> str:
    """``value`` if it has the shape AWS gives ``pattern``'s kind of id, else BadName."""
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise BadName(f"{label} {value!r} is not of the form AWS uses; e.g. {example}")
    return value


def instance_name(value: object, label: str = "--name") -> str:
    return INSTANCE.check(value, label)


def key_name(value: object, label: str = "key_name") -> str:
    return KEY_PAIR.check(value, label)


def run_name(value: object, label: str = "--run") -> str:
    return RUN.check(value, label)


# AWS allows 50 tags per resource; spotrun adds up to 6 of its own (Name, spotrun:name/owner/created,
# spotrun:cluster/node). https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/Using_Tags.html#tag-restrictions
MAX_USER_TAGS = 40


def tags(value: dict, label: str = "tags") -> dict:
    if len(value) > MAX_USER_TAGS:
        raise BadName(
            f"{label}: {len(value)} tags; at most {MAX_USER_TAGS} (AWS allows 50 per resource and "
            "spotrun adds its own)"
        )
    for key, val in value.items():
        TAG_KEY.check(key, f"{label} key")
        if key.lower().startswith("spotrun:"):
            raise BadName(f"{label} key {key!r}: the spotrun: prefix is spotrun's own; pick another key")
        if key.lower().startswith("aws:"):
            raise BadName(f"{label} key {key!r}: the aws: prefix is reserved by AWS; pick another key")
        if not isinstance(val, str) or not TAG_VALUE_PATTERN.fullmatch(val) or val.lower().startswith("aws:"):
            raise BadName(
                f"{label}.{key} {val!r} is not a usable tag value: up to 256 letters, digits, spaces "
                "or + - = . _ : / @ (not starting with aws:); quote numbers, e.g. tags: {cost-centre: '42'}"
            )
    return value


def one_line(value: object, label: str) -> object:
    """Free text that lands on one line of a config file (an SSH option, a path): no newline or
    other control character, which would start a line of its own."""
    if isinstance(value, str) and any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise BadName(f"{label} {value!r} holds a newline or control character; write it on one line")
    return value
