"""Classification of object-store failures into bounded S3 error codes (retry or not)."""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from obstore.exceptions import GenericError, PreconditionError

from cryptorun_daemon.config import ObjectStoreTier
from cryptorun_daemon.errors import StorageError
from cryptorun_daemon.metrics import OBJECT_STORE_ERROR_CODES
from cryptorun_daemon.storage.object_store import TierBucket, classify


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "x"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (_client_error("SlowDown", 503), ("SlowDown", True)),
        (_client_error("InternalError", 500), ("InternalError", True)),
        (_client_error("AccessDenied", 403), ("AccessDenied", False)),
        (_client_error("NoSuchUpload", 404), ("NoSuchUpload", False)),
        (_client_error("PreconditionFailed", 412), ("PreconditionFailed", False)),
        (_client_error("WeirdNewThing", 502), ("http_5xx", True)),
        (_client_error("WeirdNewThing", 409), ("http_4xx", False)),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), ("timeout", True)),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), ("connect", True)),
        (
            GenericError(
                "Generic S3 error: Error performing PUT http://h/k - Server returned non-2xx "
                "status code: 503 Service Unavailable: <Error><Code>SlowDown</Code></Error>"
            ),
            ("SlowDown", True),
        ),
        (
            GenericError(
                "Generic S3 error: Error performing PUT http://h/k in 1.0s - HTTP error: error "
                "sending request\n\nDebug source:\nHttpError { kind: Timeout, source: TimedOut }"
            ),
            ("timeout", True),
        ),
        (
            PreconditionError("Request precondition failure for path k"),
            ("PreconditionFailed", False),
        ),
        (FileNotFoundError("Object at location k not found"), ("NoSuchKey", False)),
        (ValueError("something else"), ("other", False)),
    ],
)
def test_failures_map_to_bounded_codes_and_retry_decisions(
    error: BaseException, expected: tuple[str, bool]
) -> None:
    """Each client's failure gets the S3 code it carried (or its HTTP class, timeout,
    connect, other) and is retried only for server-side and transient trouble; every code
    is a label value the metric declares."""
    code, retryable = classify(error)
    assert (code, retryable) == expected
    assert code in OBJECT_STORE_ERROR_CODES


def test_no_credentials_anywhere_is_a_clear_storage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With no credentials in the environment, no shared files and no instance role, a tier
    refuses to start with a StorageError naming its URL and where credentials come from."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    config = ObjectStoreTier(url="s3://some-bucket/p", bucket="some-bucket", prefix="p")
    with pytest.raises(StorageError, match=r"s3://some-bucket/p: no AWS credentials found"):
        TierBucket("cold", config)
