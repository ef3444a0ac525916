"""The loader's reading of ``[storage]``: the local root and the object-store tiers.

``[storage.tiers.warm]`` / ``[storage.tiers.cold]`` put that tier's partitions
in an S3-compatible bucket (docs/OPERATIONS.md#object-storage-tiers). A tier
without a section stays on local disk. Every problem is recorded with its key
path, like the rest of the loader; a value that would leak credentials into
the config (``s3://key:secret@bucket``, an ``access_key_id`` key) is refused
with a message saying where credentials come from instead.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from cryptorun_daemon.config.loader_security import is_loopback
from cryptorun_daemon.config.model import (
    ACTIVE_PASSIVE_TIERS,
    ActivePassiveTier,
    ObjectStoreTier,
    StorageConfig,
    is_region_name,
)

if TYPE_CHECKING:
    from cryptorun_daemon.config.table import Problems, Table

# S3's bucket naming rules (the subset every compatible store accepts).
_BUCKET: Final = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
# A prefix is a sequence of plain path segments: nothing a key could escape with.
_PREFIX_SEGMENT: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]{0,127}")
_CREDENTIAL_KEYS: Final = (
    "access_key_id",
    "secret_access_key",
    "session_token",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
)
_CREDENTIALS_HINT: Final = (
    "credentials are never read from the config file: use the AWS environment "
    "variables, the shared config/credentials files or an instance role"
)
_MIN_PART: Final = 5 << 20  # S3 refuses smaller parts (all but the last)
_MAX_PART: Final = 5 << 30


def read_storage(t: Table, loader: Problems) -> StorageConfig | None:
    """``[storage]`` → :class:`StorageConfig`; ``None`` when ``root`` is missing or wrong."""
    root = t.string("root")
    tiers_table = t.table("tiers")
    tiers = _tier_tables(tiers_table, loader)
    sources_table = t.table("sources")
    sources: dict[str, dict[ActivePassiveTier, ObjectStoreTier]] = {}
    for region in sorted(sources_table.data):
        if not is_region_name(region):
            sources_table.raw(region)
            loader.problem(sources_table.key(region), f"{region!r} is not a region name")
            continue
        sources[region] = _tier_tables(sources_table.table(region), loader)
    sources_table.finish()
    t.finish()
    if root is None:
        return None
    return StorageConfig(root=loader.resolve(root), tiers=tiers, sources=sources)


def _tier_tables(t: Table, loader: Problems) -> dict[ActivePassiveTier, ObjectStoreTier]:
    """``{warm,cold}`` sub-tables of ``t`` as object-store tiers; any other key is a problem."""
    tiers: dict[ActivePassiveTier, ObjectStoreTier] = {}
    for name in sorted(t.data):
        if name not in ACTIVE_PASSIVE_TIERS:
            t.raw(name)  # reported here, not again as "unknown key"
            loader.problem(
                t.key(name), f"only {', '.join(ACTIVE_PASSIVE_TIERS)} can live in object storage"
            )
    for tier in ACTIVE_PASSIVE_TIERS:
        if t.has(tier):
            backend = read_tier(t.table(tier), loader)
            if backend is not None:
                tiers[tier] = backend
    t.finish()
    return tiers


def check_sources(storage: StorageConfig, peers: Collection[str], loader: Problems) -> None:
    """Every ``[storage.sources.REGION]`` must name a configured peer."""
    for region in storage.sources:
        if region not in peers:
            loader.problem(f"storage.sources.{region}", "is not a region under [peers]")


def read_tier(t: Table, loader: Problems) -> ObjectStoreTier | None:
    """One ``[storage.tiers.T]`` table; ``None`` (after recording why) when unusable."""
    for name in _CREDENTIAL_KEYS:
        if t.has(name):
            t.raw(name)
            loader.problem(t.key(name), _CREDENTIALS_HINT)
    url = t.string("url")
    endpoint_url = t.string("endpoint_url", None)
    region = t.string("region", None)
    allow_http = t.boolean("allow_http", False)
    accept_weak_fencing = t.boolean("accept_weak_fencing", False)
    defaults = ObjectStoreTier(url="", bucket="", prefix="")
    multipart_threshold = t.integer(
        "multipart_threshold", defaults.multipart_threshold, minimum=_MIN_PART
    )
    part_size = t.integer("part_size", defaults.part_size, minimum=_MIN_PART)
    if part_size > _MAX_PART:
        loader.problem(t.key("part_size"), f"must be at most {_MAX_PART} (S3's part limit)")
    orphan_upload_age = t.duration("orphan_upload_age", defaults.orphan_upload_age)
    request_timeout = t.duration("request_timeout", defaults.request_timeout)
    retry_attempts = t.integer("retry_attempts", defaults.retry_attempts, minimum=1)
    concurrency = t.integer("concurrency", defaults.concurrency, minimum=1)
    t.finish()

    location = _bucket_and_prefix(url, t.key("url"), loader) if url is not None else None
    if endpoint_url is not None:
        _check_endpoint(endpoint_url, t.key("endpoint_url"), loader, allow_http=allow_http)
    elif allow_http:
        loader.problem(
            t.key("allow_http"), "needs an endpoint_url (plain HTTP is for test servers)"
        )
    if region is not None and not re.fullmatch(r"[a-z0-9-]{2,32}", region):
        loader.problem(t.key("region"), f"{region!r} is not an object-store region name")
    if location is None or url is None:
        return None
    bucket, prefix = location
    return ObjectStoreTier(
        url=url,
        bucket=bucket,
        prefix=prefix,
        endpoint_url=endpoint_url,
        region=region,
        allow_http=allow_http,
        accept_weak_fencing=accept_weak_fencing,
        multipart_threshold=multipart_threshold,
        part_size=part_size,
        orphan_upload_age=orphan_upload_age,
        request_timeout=request_timeout,
        retry_attempts=retry_attempts,
        concurrency=concurrency,
    )


def _bucket_and_prefix(url: str, key: str, loader: Problems) -> tuple[str, str] | None:
    """``s3://bucket/a/b`` → ``("bucket", "a/b")``; record a problem and give ``None`` if bad."""
    parts = urlsplit(url)
    if parts.scheme != "s3":
        loader.problem(key, f"{url!r} must start with s3:// (s3://bucket/prefix)")
        return None
    if "@" in parts.netloc:
        # Never echo the value: it holds what looks like a secret.
        loader.problem(key, f"holds credentials before the bucket name; {_CREDENTIALS_HINT}")
        return None
    if parts.query or parts.fragment:
        loader.problem(key, "must not carry a query or fragment")
        return None
    bucket = parts.netloc
    if _BUCKET.fullmatch(bucket) is None or ".." in bucket:
        loader.problem(key, f"bucket {bucket!r} is not a valid bucket name (3-63 of [a-z0-9.-])")
        return None
    prefix = parts.path.strip("/")
    if prefix and not all(_PREFIX_SEGMENT.fullmatch(s) for s in prefix.split("/")):
        loader.problem(
            key, f"prefix {prefix!r} must be plain segments of [A-Za-z0-9._=-] (no '..', no '//')"
        )
        return None
    return bucket, prefix


def _check_endpoint(endpoint: str, key: str, loader: Problems, *, allow_http: bool) -> None:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        loader.problem(key, f"{endpoint!r} must be an http(s)://host[:port] URL")
        return
    if parts.username is not None or parts.password is not None:
        loader.problem(key, f"holds credentials; {_CREDENTIALS_HINT}")
        return
    if parts.scheme == "http":
        if not allow_http:
            loader.problem(key, "is plain HTTP: set allow_http = true (loopback test servers only)")
        elif not is_loopback(parts.hostname):
            loader.problem(
                key, f"plain HTTP is allowed on loopback only, not {parts.hostname!r}; use https"
            )
