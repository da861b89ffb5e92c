"""The one door to AWS, for the launcher and the trainer alike: every boto3 session and client is
made here, and every botocore failure is turned into a one-line AwsError here.

Region comes from the config, else AWS_REGION / AWS_DEFAULT_REGION / the profile. Endpoints come
from the standard AWS_ENDPOINT_URL* variables, which botocore reads itself, so tests point the
real code at moto's server with no branch here. Retries use botocore's "standard" mode.
"""

from __future__ import annotations

import contextlib
import os
import threading
import urllib.parse
from collections.abc import Collection, Iterator
from dataclasses import dataclass

import boto3
import botocore.config
import botocore.exceptions
import botocore.parsers
import botocore.session

from common.errors import AwsError, ConfigError, EndpointUnreachable

# Every wait on AWS is bounded: an endpoint that accepts a connection and never answers costs at
# most SPOTRUN_AWS_TIMEOUT_S (30 s by default) per call, all tries included, then one line naming
# it (botocore's defaults, 60 s reads x 6 tries, kept `fab status` silent for over six minutes).
# Three tries in all is botocore's standard-mode default (AWS SDK retry behavior:
# https://docs.aws.amazon.com/sdkref/latest/guide/feature-retry-behavior.html); the per-try
# timeouts are sized so the tries and their backoff (under 1 + 2 s) fit in the budget. A read
# timeout bounds the wait for each piece of an answer, not a whole transfer, so large S3 GETs that
# keep flowing are unaffected.
TIMEOUT_ENV = "SPOTRUN_AWS_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 30.0
ATTEMPTS = 3


def timeout_budget() -> float:
    """Seconds one AWS call may wait on a silent endpoint, all tries included."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0.5 <= value <= 600:  # also refuses nan and inf
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: must be seconds from 0.5 to 600; unset it for 30")
    return value


def per_try_timeout(budget: float | None = None) -> float:
    """Connect and read timeout of one try: the budget less the backoff, shared by the tries."""
    budget = timeout_budget() if budget is None else budget
    return round(budget * 0.7 / ATTEMPTS, 3)


def botocore_config(attempts: int | None = None) -> botocore.config.Config:
    """The config every client is made with (also s3fs's, through ml.data.storage)."""
    each = per_try_timeout()
    return botocore.config.Config(
        retries={"mode": "standard", "total_max_attempts": attempts or ATTEMPTS},
        # Enough for a batch's concurrent ranged GETs (dataset.s3_max_concurrency, 16 by default).
        max_pool_connections=64,
        connect_timeout=each,
        read_timeout=each,
    )


_lock = threading.Lock()
_sessions: dict[tuple[str | None, str | None], boto3.Session] = {}
_clients: dict[tuple, object] = {}
# botocore's data loader (service models, endpoints.json), shared by every session this process
# makes: each new session would otherwise parse the same JSON again (EC2's model alone is some
# 100 ms of CPU), once per region or profile asked and again after reset_clients. The loaded
# models are read-only to botocore; the first session's loader (its AWS_DATA_PATH) is kept.
_loader = None


def new_session(region: str | None = None, profile: str | None = None) -> boto3.Session:
    """A new boto3 session over the shared data loader (uncached: see session())."""
    global _loader
    core = botocore.session.get_session()
    if _loader is None:
        _loader = core.get_component("data_loader")
    else:
        core.register_component("data_loader", _loader)
    made = boto3.Session(botocore_session=core, region_name=region, profile_name=profile)
    made._session.get_scoped_config()  # a missing profile fails here (ProfileNotFound), as boto3.Session does
    # boto3 appends its own model folder to the loader's search path with every session it makes.
    paths = _loader.search_paths
    paths[:] = list(dict.fromkeys(paths))
    return made


def session(region: str | None = None, profile: str | None = None) -> boto3.Session:
    """A cached session per (region, profile). Sessions are not thread-safe to *create* clients
    from concurrently, so creation happens under a lock; the clients themselves are thread-safe.

    botocore itself reads only AWS_DEFAULT_REGION (and the profile), while the AWS CLI v2 and most
    SDKs also honour AWS_REGION, which users export: so it is applied here, after the config's.
    """
    region = region or os.environ.get("AWS_REGION") or None
    key = (region, profile)
    with _lock:
        if key not in _sessions:
            try:
                _sessions[key] = new_session(region, profile)
            except botocore.exceptions.ProfileNotFound as e:
                # The profile may come from AWS_PROFILE, not from the config: name the one botocore
                # looked for (profile is None then).
                wanted = e.kwargs.get("profile") or profile
                where = "`profile` in configs/aws.yaml" if profile else "AWS_PROFILE"
                raise ConfigError(
                    f"AWS profile {wanted!r} not found in ~/.aws/config or ~/.aws/credentials; "
                    f"check {where} (aws configure list-profiles shows the known ones)"
                ) from None
        return _sessions[key]


def region_of(region: str | None = None, profile: str | None = None) -> str:
    resolved = session(region, profile).region_name
    if not resolved:
        raise ConfigError("no AWS region set; put `region:` in configs/aws.yaml, or export AWS_REGION")
    return resolved


def client(
    service: str, region: str | None = None, profile: str | None = None, *, attempts: int | None = None
):
    """A cached, thread-safe boto3 client with standard retries (``attempts``: tries in all, the
    first included, for an optional call with a fallback, such as the Pricing API)."""
    key = (service, region, profile) if attempts is None else (service, region, profile, attempts)
    with _lock:
        cached = _clients.get(key)
    if cached is not None:
        return cached
    sess = session(region, profile)
    config = botocore_config(attempts)
    with _lock:
        if key not in _clients:
            _clients[key] = sess.client(service, config=config)
        return _clients[key]


def reset_clients() -> None:
    """Forget cached sessions and clients (after the environment changed: tests, a new profile)."""
    with _lock:
        _sessions.clear()
        _clients.clear()


def _forget_after_fork() -> None:
    """A forked child (a DataLoader worker) makes its own clients: the parent's connection pools
    hold the parent's sockets, and the lock may have been held by a parent thread at the fork."""
    global _lock
    _lock = threading.Lock()
    _sessions.clear()
    _clients.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


# Codes every caller treats the same way, with the next step to take.
_NEXT_STEP = {
    "AuthFailure": "check your AWS credentials (aws sts get-caller-identity)",
    "UnrecognizedClientException": "check your AWS credentials (aws sts get-caller-identity)",
    "InvalidClientTokenId": "check your AWS credentials (aws sts get-caller-identity)",
    "ExpiredToken": "your AWS session token expired; refresh it (e.g. aws sso login)",
    "ExpiredTokenException": "your AWS session token expired; refresh it (e.g. aws sso login)",
    "RequestExpired": "your AWS session token expired, or the clock is off; refresh credentials",
    "UnauthorizedOperation": "your IAM identity lacks this permission; ask for it or use another profile",
    "AccessDenied": "your IAM identity lacks this permission; ask for it or use another profile",
    "AccessDeniedException": "your IAM identity lacks this permission; ask for it or use another profile",
    "OptInRequired": "this region or service is not enabled for your account; enable it or pick another",
}


# S3's answers on the data and checkpoint paths, with the next step; {setting} is the setting that
# named the object (dataset.dataset_dir, checkpoint_dir).
_S3_NEXT_STEP = {
    "NoSuchBucket": "check {setting} (the bucket does not exist)",
    "NoSuchKey": "check {setting} and dataset.sessions (the object is missing)",
    "AccessDenied": "grant s3:GetObject and s3:ListBucket to this role or user",
    "InvalidAccessKeyId": "check your AWS credentials (aws sts get-caller-identity)",
    "SignatureDoesNotMatch": "check your AWS credentials (aws sts get-caller-identity)",
    "ExpiredToken": "refresh your AWS credentials",
    "PreconditionFailed": "the object changed while training; restart to rebuild its index",
    "SlowDown": "S3 is throttling requests to this prefix; it passes, retry later",
}
# A HEAD or ranged GET answers with a bare HTTP status and no code.
_S3_STATUS_CODES = {"404": "NoSuchKey", "403": "AccessDenied", "412": "PreconditionFailed", "503": "SlowDown"}

S3_FAILURES = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, OSError)


def s3_failure(error: Exception, where: str, setting: str) -> str:
    """One line for a failed S3 read or write of ``where``: the S3 code and the next step.

    Also takes the OSErrors s3fs raises in place of ClientError (PermissionError, FileNotFoundError).
    """
    if isinstance(error, botocore.exceptions.ClientError):
        code = error_code(error)
        if code == "Unknown":
            code = str(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        code = _S3_STATUS_CODES.get(code, code)
    elif isinstance(error, botocore.exceptions.NoCredentialsError):
        return f"{where}: no AWS credentials found; attach an instance role or set AWS_PROFILE"
    elif isinstance(error, PermissionError):
        code = "AccessDenied"
    elif isinstance(error, FileNotFoundError):
        code = "NoSuchKey"
    elif isinstance(error, UNREACHABLE):
        return f"{where}: {unreachable(error)}"
    else:
        return f"{where}: cannot reach S3 ({type(error).__name__}: {error}); check the network and region"
    step = _S3_NEXT_STEP.get(code, "check {setting}").format(setting=setting)
    return f"{where}: S3 {code}; {step}"


# Failures of the connection itself, not answers from AWS: no credentials fix applies to them.
UNREACHABLE = (
    botocore.exceptions.EndpointConnectionError,  # refused, no route, DNS (ConnectTimeoutError too)
    botocore.exceptions.ReadTimeoutError,  # connected, then no answer
    botocore.exceptions.ConnectionClosedError,
)


def _endpoint_variable(url: str) -> str | None:
    """The AWS_ENDPOINT_URL* variable that set ``url``, if one did."""
    for name, value in sorted(os.environ.items()):
        if name.startswith("AWS_ENDPOINT_URL") and value and url.startswith(value.rstrip("/")):
            return name
    return None


def unreachable(error: Exception) -> str:
    """``no answer from https://ec2... within 30 s (3 tries); check ...``: the endpoint and the next
    step, for a connection that failed or never answered."""
    url = error.kwargs.get("endpoint_url", "") if isinstance(error, botocore.exceptions.BotoCoreError) else ""
    # The request URL carries the bucket and query (S3): the endpoint is its scheme and host.
    parts = urllib.parse.urlsplit(url)
    url = f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else "the AWS endpoint"
    variable = _endpoint_variable(url) if url.startswith("http") else None
    if isinstance(error, (botocore.exceptions.ReadTimeoutError, botocore.exceptions.ConnectTimeoutError)):
        what = f"no answer from {url} within {timeout_budget():g} s ({ATTEMPTS} tries)"
    else:
        what = f"cannot reach {url}"
    if variable:
        return f"{what}; {url} is set by {variable}: start that endpoint or unset {variable}"
    return f"{what}; check your network and the region name ({TIMEOUT_ENV} sets the wait)"


def translate(error: Exception, doing: str) -> AwsError:
    """Turn a botocore failure into an AwsError that names the code and the next step.

    Callers that act on a specific code catch ClientError themselves first; this is the fallback.
    """
    if isinstance(error, botocore.exceptions.NoCredentialsError):
        return AwsError(
            f"{doing}: no AWS credentials found; run `aws configure` or `aws sso login`, or set AWS_PROFILE",
            "NoCredentials",
        )
    if isinstance(error, UNREACHABLE):
        return EndpointUnreachable(f"{doing}: {unreachable(error)}", type(error).__name__)
    if isinstance(error, botocore.exceptions.ClientError):
        err = error.response.get("Error", {})
        code = err.get("Code", "Unknown")
        message = err.get("Message", "").rstrip(".")
        next_step = _NEXT_STEP.get(code)
        text = f"{doing}: {message}" if message else f"{doing} failed"
        if next_step:
            text += f"; {next_step}"
        return AwsError(text, code)
    if isinstance(error, botocore.exceptions.BotoCoreError):
        return AwsError(f"{doing}: {error}", type(error).__name__)
    raise TypeError(f"not an AWS error: {error!r}")


# ---------------------------------------------------------------- stage boundaries

# ResponseParserError: an answer botocore could not read (an HTML error page from a proxy or a
# stand-in without the API); not a BotoCoreError, but as much an AWS failure.
AWS_FAILURES = (
    botocore.exceptions.ClientError,
    botocore.exceptions.BotoCoreError,
    botocore.parsers.ResponseParserError,
)


def error_code(error: botocore.exceptions.ClientError) -> str:
    return error.response.get("Error", {}).get("Code") or "Unknown"


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
