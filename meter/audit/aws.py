"""AWS clients and their failures: the one botocore Config of every client, and the one translation of an AWS
error into the one-line MeterError the CLI, the steps and the stores promise.

Lives with the S3 store, the lowest module that talks to AWS; the pipeline and the steps import it from here.
botocore is imported only when a function runs.
"""

from __future__ import annotations

import os

from meter.errors import MeterError

# Every AWS client of the package takes its timeouts and retries from boto_config(). S3 and DynamoDB answer the
# package's small requests (a record of a few KB, a ledger page, a listing) in tens of milliseconds and their slow
# tail in a second or two; the read timeout bounds the wait for the *next bytes* of an answer, not a whole
# transfer. 8 s is four times that tail, and a timed-out attempt is retried: 3 attempts in all (standard mode,
# backoff of at most 50 ms · 2^n) keep an endpoint that accepts connections but never answers under 3 × 8 s ≈ 25 s,
# where botocore's default read timeout (60 s) times the 6 attempts configured before hung `audit verify` for 6
# minutes. A connection takes milliseconds in a region; 5 s allows a slow proxy or VPC endpoint.
AWS_CONNECT_TIMEOUT_S = 5
AWS_READ_TIMEOUT_S = 8
AWS_ATTEMPTS = 3  # in all, the first included (botocore's total_max_attempts; its max_attempts counts retries)


def boto_config():
    """The botocore Config of every client: the timeouts above, standard retries, AWS_MAX_ATTEMPTS when set."""
    from botocore.config import Config

    given = os.environ.get("AWS_MAX_ATTEMPTS", "")
    attempts = int(given) if given.isdigit() else AWS_ATTEMPTS
    return Config(
        connect_timeout=AWS_CONNECT_TIMEOUT_S,
        read_timeout=AWS_READ_TIMEOUT_S,
        retries={"mode": "standard", "total_max_attempts": max(1, attempts)},
    )


# ClientError codes that say the place is wrong, not the request: what to do about each
_AWS_FIXES = {
    "NoSuchBucket": "the bucket does not exist: check its name and the region",
    "ResourceNotFoundException": "the table does not exist: check its name and the region",
    "AccessDenied": "the credentials lack the permission: check the role's policy",
    "AccessDeniedException": "the credentials lack the permission: check the role's policy",
    "AllAccessDisabled": "the credentials lack the permission: check the role's policy",
    "InvalidAccessKeyId": "the credentials were rejected: refresh them",
    "UnrecognizedClientException": "the credentials were rejected: refresh them",
    "InvalidClientTokenId": "the credentials were rejected: refresh them",
    "SignatureDoesNotMatch": "the credentials were rejected: refresh them",
    "ExpiredToken": "the credentials expired: refresh them",
    "ExpiredTokenException": "the credentials expired: refresh them",
    "PermanentRedirect": "the bucket is in another region: give that region",
    "AuthorizationHeaderMalformed": "the bucket is in another region: give that region",
}


def aws_error(
    error: BaseException, where: str, region_fix: str = "set AWS_REGION", *, any_code: bool = False
) -> MeterError | None:
    """The one line for an AWS failure, naming ``where`` (and the fix, when the user fixes it outside the code:
    region, credentials, endpoint, a missing bucket or table, access).

    A ClientError whose code is not one of those is left to the caller (None: NoSuchKey, a lost conditional write,
    …), unless ``any_code``: then it too is a line, ``where: Operation: Code: Message``. Any other botocore error is
    always a line; an error that is not botocore's is None."""
    try:
        from botocore import exceptions as bx
    except ImportError:
        return None
    if isinstance(error, bx.ClientError):
        info = error.response.get("Error", {})
        code, message = str(info.get("Code", "")), " ".join(str(info.get("Message") or "").split())
        fix = _AWS_FIXES.get(code)
        if fix is None and not any_code:
            return None
        return MeterError(f"{where}: {error.operation_name}: {code}: {message}" + (f" ({fix})" if fix else ""))
    endpoint = getattr(error, "kwargs", {}).get("endpoint_url", "the endpoint")
    if isinstance(error, bx.NoRegionError):
        text = f"no AWS region: {region_fix} (or AWS_DEFAULT_REGION, or a region in ~/.aws/config)"
    elif isinstance(error, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        text = "no AWS credentials: configure them (aws configure, AWS_PROFILE, or an instance role)"
    elif isinstance(error, bx.ReadTimeoutError):
        text = (
            f"unreachable: no answer from {endpoint} within {AWS_READ_TIMEOUT_S} s: it accepts connections but does "
            "not respond (check AWS_ENDPOINT_URL, a proxy, or the network)"
        )
    elif isinstance(error, bx.ConnectionError):  # connect timeout, no endpoint, a proxy or TLS failure
        text = f"unreachable: cannot connect to {endpoint} (check the region, AWS_ENDPOINT_URL and the network)"
    elif isinstance(error, bx.BotoCoreError):
        text = " ".join(str(error).split())
    else:
        return None
    return MeterError(f"{where}: {text}")
