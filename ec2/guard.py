"""Turn botocore failures into one-line AwsErrors at each stage boundary.

Code that acts on a specific AWS error code catches ClientError itself first; whatever it does not
act on passes through here and reaches the user with the code and the next step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import botocore.exceptions

from ec2.aws import translate

AWS_FAILURES = (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)


def error_code(error: botocore.exceptions.ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "Unknown")


@contextlib.contextmanager
def aws_errors(doing: str) -> Iterator[None]:
    """``with aws_errors("launching exp1"): ...`` — AWS failures become AwsError(doing: ...)."""
    try:
        yield
    except AWS_FAILURES as e:
        raise translate(e, doing) from None
