"""Turn botocore failures into one-line AwsErrors at each stage boundary.

Code that acts on a specific AWS error code catches ClientError itself first; whatever it does not
act on passes through here and reaches the user with the code and the next step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass

import botocore.exceptions

from ec2.aws import translate

AWS_FAILURES = (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)


def error_code(error: botocore.exceptions.ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "Unknown")


@dataclass
class Tolerated:
    """Which tolerated AWS error code ended the block (None: it ran to the end)."""

    code: str | None = None


@contextlib.contextmanager
def aws_errors(doing: str, tolerate: Collection[str] = ()) -> Iterator[Tolerated]:
    """``with aws_errors("launching exp1"): ...`` — AWS failures become AwsError(doing: ...).

    A ClientError whose code is in ``tolerate`` (e.g. a NotFound the caller expects) ends the block
    quietly instead; the yielded ``Tolerated`` says which code it was.
    """
    outcome = Tolerated()
    try:
        yield outcome
    except botocore.exceptions.ClientError as e:
        if error_code(e) not in tolerate:
            raise translate(e, doing) from None
        outcome.code = error_code(e)
    except botocore.exceptions.BotoCoreError as e:
        raise translate(e, doing) from None
