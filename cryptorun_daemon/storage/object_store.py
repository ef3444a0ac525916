"""One object-store tier's bucket: typed, retried, counted requests through ``obstore``.

:class:`TierBucket` wraps an ``obstore`` ``S3Store`` (the Python binding of
the Rust ``object_store`` crate, docs/WARM_COLD.md#object-storage-client)
for everything but multipart resume, plus a ``botocore`` client for the
multipart calls ``obstore`` does not expose (list parts, upload one part,
complete, abort; see :mod:`cryptorun_daemon.storage.multipart`). Both take
credentials from one ``boto3`` session: environment, shared config files or an
instance role, never the config file. Neither client retries on its own: this
module does, so every failed attempt is counted in
``cryptorun_object_store_errors_total{op,code}`` by its S3 error code.

Keys are relative to the tier's ``prefix`` and built by the caller from
:mod:`cryptorun_daemon.storage.layout` (the one source of the partition
layout). Conditional writes (``If-None-Match: *`` to create, ``If-Match`` to
replace) raise :class:`ConditionFailedError` when the store refuses them.

Error handling: every request failure becomes :class:`ObjectStoreError`
carrying ``op``, the S3 ``code`` and whether it is retryable; 5xx, ``SlowDown``,
time-outs and connection errors are retried ``retry_attempts`` times with
exponential backoff and jitter; 4xx answers are not. Messages never hold
credentials (neither client puts them in its errors, and we add none).
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import obstore
import structlog
from obstore.exceptions import (
    AlreadyExistsError,
    BaseError,
    NotFoundError,
    PreconditionError,
)
from obstore.store import S3Store

from cryptorun_daemon.config import ActivePassiveTier, ObjectStoreTier
from cryptorun_daemon.errors import StorageError
from cryptorun_daemon.metrics import OBJECT_STORE_ERROR_CODES

if TYPE_CHECKING:
    from cryptorun_daemon.metrics import Metrics

log = structlog.get_logger("cryptorun.object_store")

T = TypeVar("T")
Op = Literal["get", "put", "head", "list", "copy", "delete", "multipart"]
PutMode = Literal["create", "overwrite"]

RETRYABLE_CODES: Final = frozenset(
    {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "http_5xx"}
    | {"timeout", "connect"}
)
_XML_CODE: Final = re.compile(r"<Code>([A-Za-z]+)</Code>")
_STATUS: Final = re.compile(r"status code: (\d{3})")
# 4xx codes that mean "try again" at S3 (throttling, a request that took too long).
_RETRYABLE_4XX: Final = frozenset({"RequestTimeout", "SlowDown"})
GET_CHUNK: Final = 1 << 20


class ObjectStoreError(StorageError):
    """An object-store request failed; ``s3_code`` is the bounded error code."""

    code = "object_store"

    def __init__(self, message: str, *, op: Op, s3_code: str, retryable: bool) -> None:
        self.op = op
        self.s3_code = s3_code
        self.retryable = retryable
        super().__init__(message)


class ConditionFailedError(ObjectStoreError):
    """A conditional write was refused: the object exists (create) or changed (replace)."""

    code = "condition_failed"


class ObjectMissingError(ObjectStoreError):
    """The object (or multipart upload) does not exist."""

    code = "object_missing"


@dataclass(frozen=True)
class ObjectInfo:
    """What a HEAD or listing says about one object; ``key`` is relative to the prefix."""

    key: str
    size: int
    etag: str | None


def classify(exc: BaseException) -> tuple[str, bool]:
    """``(code, retryable)`` of a failed request from either client.

    The S3 error code when the answer carried one (``<Code>SlowDown</Code>``),
    else the HTTP class, ``timeout`` or ``connect``; codes outside
    :data:`~cryptorun_daemon.metrics.OBJECT_STORE_ERROR_CODES` count as ``other``.
    """
    code: str | None = None
    status: int | None = None
    response = getattr(exc, "response", None)  # botocore.exceptions.ClientError
    if isinstance(response, dict):
        code = str(response.get("Error", {}).get("Code") or "") or None
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    text = str(exc)
    if code is None:
        match = _XML_CODE.search(text)
        code = match.group(1) if match else None
    if status is None:
        found = _STATUS.search(text)
        status = int(found.group(1)) if found else None
    if isinstance(exc, PreconditionError | AlreadyExistsError) or status == 412:
        return "PreconditionFailed", False
    # obstore raises the built-in FileNotFoundError for a missing object.
    if isinstance(exc, FileNotFoundError | NotFoundError) and code is None:
        code = "NoSuchKey"
    lowered = text.lower()
    if code is None and status is None:
        name = type(exc).__name__
        # obstore's messages carry the Rust error's debug form ("kind: Timeout",
        # "TimedOut"); botocore's are ReadTimeoutError / EndpointConnectionError.
        if (
            isinstance(exc, TimeoutError)
            or "timed out" in lowered
            or "timedout" in lowered
            or "kind: timeout" in lowered
            or "Timeout" in name
        ):
            return "timeout", True
        if (
            "connect" in lowered
            or "error sending request" in lowered
            or "Connection" in name
            or isinstance(exc, ConnectionError)
        ):
            return "connect", True
        return "other", False
    if code is not None and code in OBJECT_STORE_ERROR_CODES:
        retryable = code in RETRYABLE_CODES or (status is not None and status >= 500)
        return code, retryable
    if status is not None and status >= 500:
        return "http_5xx", True
    if status is not None and status >= 400:
        return "http_4xx", code in _RETRYABLE_4XX
    return "other", False


class TierBucket:
    """The bucket (and key prefix) of one object-store tier.

    Resource handling: the ``obstore`` store and the ``botocore`` client hold
    connection pools for the life of this object; nothing else is owned.
    Error handling: :class:`StorageError` at construction when the AWS
    credential chain finds no credentials.
    Concurrency: at most ``config.concurrency`` transfers at once
    (:attr:`slots`, taken by the callers that stream data) and as many
    multipart parts in memory (:attr:`part_buffers`).
    """

    def __init__(
        self,
        tier: ActivePassiveTier,
        config: ObjectStoreTier,
        *,
        metrics: Metrics | None = None,
        retry_backoff: float = 0.1,
    ) -> None:
        import boto3.session  # one credential chain for both clients
        from obstore.auth.boto3 import Boto3CredentialProvider

        self.tier = tier
        self.config = config
        self.metrics = metrics
        self.retry_backoff = retry_backoff
        self.slots = asyncio.Semaphore(config.concurrency)
        # Multipart parts held in memory at once across this tier's uploads
        # (read, being hashed or in flight): memory <= part_buffers x part_size.
        self.part_buffers = asyncio.Semaphore(max(2, config.concurrency // 2))
        self._session = boto3.session.Session(region_name=config.region)
        timeout = timedelta(seconds=config.request_timeout)
        client_options: dict[str, Any] = {
            "allow_http": config.allow_http,
            "connect_timeout": timeout,
            "timeout": timedelta(seconds=max(config.request_timeout * 10, 300.0)),
            "read_timeout": timeout,
        }
        options: dict[str, Any] = {
            # The store verifies the body against this on every PUT (AWS, MinIO and R2 do).
            "checksum_algorithm": "sha256",
        }
        if config.endpoint_url is not None:
            options["endpoint"] = config.endpoint_url
        if config.region is not None:
            options["region"] = config.region
        try:
            credentials = Boto3CredentialProvider(self._session)
        except ValueError as exc:  # the chain found nothing
            raise StorageError(
                f"{config.url}: no AWS credentials found (environment variables, shared "
                "config/credentials files, instance role); the config file never holds them"
            ) from exc
        self.store = S3Store(
            config.bucket,
            client_options=client_options,  # type: ignore[arg-type]
            retry_config={"max_retries": 0},  # we retry (and count) ourselves
            credential_provider=credentials,
            **options,
        )
        self._botocore: Any = None

    @property
    def url(self) -> str:
        """The tier's URL as configured (``s3://bucket/prefix``; never credentials)."""
        return self.config.url

    def key(self, relative: str) -> str:
        """The object key of ``relative`` (a layout path) under the tier's prefix."""
        return f"{self.config.prefix}/{relative}" if self.config.prefix else relative

    def relative(self, key: str) -> str:
        if self.config.prefix and key.startswith(self.config.prefix + "/"):
            return key[len(self.config.prefix) + 1 :]
        return key

    def botocore_client(self) -> Any:
        """The ``botocore`` S3 client for the multipart calls (built once, retries off)."""
        if self._botocore is None:
            import botocore.config

            self._botocore = self._session.client(
                "s3",
                endpoint_url=self.config.endpoint_url,
                region_name=self.config.region,
                config=botocore.config.Config(
                    retries={"total_max_attempts": 1},
                    connect_timeout=self.config.request_timeout,
                    read_timeout=self.config.request_timeout,
                    # Every part carries x-amz-checksum-sha256, which the store checks;
                    # botocore then skips SigV4 body hashing on its own over HTTPS, and
                    # this makes plain-HTTP endpoints (MinIO, test servers) do the same
                    # instead of hashing every byte a second time.
                    s3={"addressing_style": "path", "payload_signing_enabled": False},
                    max_pool_connections=max(10, self.config.concurrency * 2),
                ),
            )
            # After botocore's own handler, which asks for 100-continue on every
            # file-like body (a part sent from a file, see storage/file_region.py).
            self._botocore.meta.events.register_last("before-call.s3", _no_expect_continue)
        return self._botocore

    # --- retries --------------------------------------------------------------

    async def call(self, op: Op, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` with retries; every failure counted, the last one raised typed."""
        tries = self.config.retry_attempts
        for number in range(1, tries + 1):
            try:
                return await attempt()
            except ObjectStoreError:
                raise
            except Exception as exc:
                error = self.error(op, what, exc)
                if not error.retryable or number == tries:
                    raise error from exc
                delay = self.retry_backoff * 2 ** (number - 1)
                log.warning(
                    "object store request retried",
                    tier=self.tier,
                    op=op,
                    code=error.s3_code,
                    attempt=number,
                    delay=round(delay, 3),
                )
                await asyncio.sleep(delay * (0.5 + random.random()))
        raise AssertionError("unreachable: the loop returns or raises")

    def error(self, op: Op, what: str, exc: BaseException) -> ObjectStoreError:
        """Classify and count one failed attempt."""
        code, retryable = classify(exc)
        if self.metrics is not None:
            self.metrics.object_store_errors_total.labels(op=op, code=code).inc()
        message = f"{op} {self.url}/{what}: {code}: {_short(exc)}"
        if code == "PreconditionFailed":
            return ConditionFailedError(message, op=op, s3_code=code, retryable=False)
        if code in ("NoSuchKey", "NoSuchUpload"):
            return ObjectMissingError(message, op=op, s3_code=code, retryable=False)
        return ObjectStoreError(message, op=op, s3_code=code, retryable=retryable)

    def count_bytes(self, op: Literal["get", "put"], amount: int) -> None:
        if self.metrics is not None and amount:
            self.metrics.object_store_bytes_total.labels(tier=self.tier, op=op).inc(amount)

    # --- requests ---------------------------------------------------------------

    async def put(
        self,
        relative: str,
        data: bytes | bytearray,
        *,
        mode: PutMode = "overwrite",
        if_match: str | None = None,
    ) -> str | None:
        """Write ``data`` in one request; return the new ETag.

        ``mode="create"`` sends ``If-None-Match: *``; ``if_match`` sends
        ``If-Match`` (replace only that version). Error handling:
        :class:`ConditionFailedError` when the condition fails.
        """
        key = self.key(relative)
        put_mode: Any = {"e_tag": if_match} if if_match is not None else mode

        async def attempt() -> str | None:
            result = await obstore.put_async(self.store, key, data, mode=put_mode)
            return result["e_tag"]

        etag = await self.call("put", relative, attempt)
        self.count_bytes("put", len(data))
        return etag

    async def get(self, relative: str) -> tuple[bytes, str | None]:
        """The whole (small) object and its ETag. Error handling: :class:`ObjectMissingError`."""
        key = self.key(relative)

        async def attempt() -> tuple[bytes, str | None]:
            result = await obstore.get_async(self.store, key)
            body = bytes(await result.bytes_async())
            return body, result.meta["e_tag"]

        body, etag = await self.call("get", relative, attempt)
        self.count_bytes("get", len(body))
        return body, etag

    async def head(self, relative: str) -> ObjectInfo | None:
        """Size and ETag of an object, ``None`` when it does not exist."""
        key = self.key(relative)

        async def attempt() -> ObjectInfo:
            meta = await obstore.head_async(self.store, key)
            return ObjectInfo(relative, int(meta["size"]), meta["e_tag"])

        try:
            return await self.call("head", relative, attempt)
        except ObjectMissingError:
            return None

    async def get_range(self, relative: str, offset: int, length: int) -> bytearray:
        """``length`` bytes at ``offset`` (fewer at the object's end), in one retried request.

        The response is streamed into one buffer of the range's size: the range
        is held once, by us (``get_range_async`` would first collect it whole in
        the Rust client, then we would copy it). Memory: the range once (a
        part's worth) plus one chunk of :data:`GET_CHUNK`. Error handling:
        :class:`ObjectMissingError`, or :class:`ObjectStoreError` past the retries.
        """
        key = self.key(relative)

        async def attempt() -> bytearray:
            result = await obstore.get_async(
                self.store, key, options={"range": (offset, offset + length)}
            )
            buffer = bytearray(length)
            filled = 0
            with memoryview(buffer) as view:
                async for piece in result.stream(min_chunk_size=GET_CHUNK):
                    size = len(piece)
                    view[filled : filled + size] = piece
                    filled += size
            if filled != length:
                del buffer[filled:]
            return buffer

        data = await self.call("get", relative, attempt)
        self.count_bytes("get", len(data))
        return data

    async def stream(
        self, relative: str, *, offset: int = 0, chunk: int = GET_CHUNK
    ) -> AsyncIterator[bytes]:
        """The object's bytes from ``offset``, in chunks of about ``chunk`` bytes.

        Memory: one chunk at a time. Opening is retried; a failure mid-stream
        raises :class:`ObjectStoreError` (callers resume from what they have).
        """
        key = self.key(relative)
        options: Any = {"range": {"offset": offset}} if offset else {}

        async def attempt() -> Any:
            return await obstore.get_async(self.store, key, options=options)

        result = await self.call("get", relative, attempt)
        try:
            async for piece in result.stream(min_chunk_size=chunk):
                data = bytes(piece)
                self.count_bytes("get", len(data))
                yield data
        except (BaseError, OSError) as exc:
            raise self.error("get", relative, exc) from exc

    async def list(self, relative_prefix: str) -> AsyncIterator[ObjectInfo]:
        """Every object under ``relative_prefix`` (keys relative to the tier prefix)."""
        prefix = self.key(relative_prefix)
        try:
            async for batch in obstore.list(self.store, prefix=prefix, chunk_size=1000):
                for meta in batch:
                    yield ObjectInfo(self.relative(meta["path"]), int(meta["size"]), meta["e_tag"])
        except (BaseError, OSError) as exc:
            raise self.error("list", relative_prefix, exc) from exc

    async def copy_from(self, source: TierBucket, relative: str) -> None:
        """Server-side copy of ``source``'s object to the same relative key here.

        Only valid when both tiers share an endpoint and credentials
        (:meth:`same_endpoint`); ``obstore`` copies within one store, so a
        copy between two buckets goes through ``botocore``'s CopyObject.
        """
        client = self.botocore_client()
        copy_source = {"Bucket": source.config.bucket, "Key": source.key(relative)}

        async def attempt() -> None:
            await asyncio.to_thread(
                client.copy_object,
                Bucket=self.config.bucket,
                Key=self.key(relative),
                CopySource=copy_source,
            )

        await self.call("copy", relative, attempt)

    def same_endpoint(self, other: TierBucket) -> bool:
        """True when a server-side copy from ``other`` to here is possible."""
        return endpoints_match(self.config, other.config)

    async def delete(self, relative: str) -> None:
        key = self.key(relative)

        async def attempt() -> None:
            await obstore.delete_async(self.store, key)

        await self.call("delete", relative, attempt)


def endpoints_match(a: ObjectStoreTier, b: ObjectStoreTier) -> bool:
    """Whether the two tiers' buckets are on one endpoint (a server-side copy works)."""
    return (a.endpoint_url, a.region) == (b.endpoint_url, b.region)


def _short(exc: BaseException) -> str:
    """The first line of an error, bounded (XML bodies can be long)."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _no_expect_continue(params: dict[str, Any], **_: Any) -> None:
    """Send a body at once instead of waiting for the store's ``100 Continue``.

    botocore asks for it on every file-like body (a part sent from a file),
    which costs each part a round trip and the store a response. A part is at
    most ``part_size`` bytes, so what 100-continue saves when a store refuses
    one (an expired credential, a wrong bucket) is that part's bytes, not a
    large object's; ``obstore`` (the plain loop and every single PUT) never asks
    for it either. Measured: docs/BENCHMARKS.md, object store, fifth round.
    """
    params.get("headers", {}).pop("Expect", None)
