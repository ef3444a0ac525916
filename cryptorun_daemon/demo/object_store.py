"""``cryptorun demo --object-store``: warm and cold on two local buckets, one per region.

The demo starts moto's S3 server (``moto[server]``, the ``demo`` extra;
``scripts/demo.sh --object-store`` installs it) as one more child process on
loopback and creates ``cryptorun-demo-eu-central`` and
``cryptorun-demo-us-east``. Each region's config then puts its warm and cold
tiers in its own bucket (``[storage.tiers.*]``), and us-east names
eu-central's bucket as the source of both tiers (``[storage.sources.eu-central.*]``):
it reads the primary's files from that bucket and, the endpoint being the
same, copies them server-side into its own. Credentials are fake ones for the
local server, given the standard AWS way (environment variables of the demo's
children), never written to the configs.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Final

from cryptorun_daemon.config import ActivePassiveTier, ObjectStoreTier
from cryptorun_daemon.demo.processes import DemoError

STORE = "s3"
#: Fake credentials for the local server: the standard environment variables.
DEMO_ENV: Final = {
    "AWS_ACCESS_KEY_ID": "cryptorun-demo",
    "AWS_SECRET_ACCESS_KEY": "cryptorun-demo-local-only",  # a fake for loopback
    "AWS_EC2_METADATA_DISABLED": "true",
}
TIERS: Final[tuple[ActivePassiveTier, ...]] = ("warm", "cold")
REGION_NAME: Final = "us-east-1"


def bucket_of(region: str) -> str:
    return f"cryptorun-demo-{region}"


def require_moto() -> None:
    """Error handling: :class:`DemoError` naming the install command when moto is missing."""
    if find_spec("moto") is None or find_spec("flask") is None:
        raise DemoError(
            "--object-store needs a local S3 server: moto[server] is not installed "
            "(scripts/demo.sh --object-store installs it, or pip install -e '.[demo]')"
        )


def use_demo_credentials() -> None:
    """Put the fake credentials in this process's environment (inherited by the children)."""
    os.environ.update(DEMO_ENV)


def server_args(port: int) -> list[str]:
    """``python -m`` arguments of the local S3 server."""
    return ["moto.server", "-H", "127.0.0.1", "-p", str(port)]


def create_buckets(endpoint: str, regions: tuple[str, ...]) -> None:
    """Create each region's bucket (kept if it exists: a reused ``--dir`` keeps nothing else)."""
    import botocore.session

    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name=REGION_NAME
    )
    for region in regions:
        try:
            client.create_bucket(Bucket=bucket_of(region))
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass


def tier_toml(endpoint: str, region: str, *, sources: tuple[str, ...] = ()) -> str:
    """The ``[storage.tiers.*]`` (and ``[storage.sources.*]``) sections of one region."""
    lines: list[str] = []
    for tier in TIERS:
        lines += [f"[storage.tiers.{tier}]", *_location(endpoint, region), ""]
    for source in sources:
        for tier in TIERS:
            lines += [f"[storage.sources.{source}.{tier}]", *_location(endpoint, source), ""]
    return "\n".join(lines)


def _location(endpoint: str, region: str) -> list[str]:
    return [
        f'url = "s3://{bucket_of(region)}/tiers"',
        f'endpoint_url = "{endpoint}"',
        f'region = "{REGION_NAME}"',
        "allow_http = true  # the local demo server only",
    ]


@dataclass(frozen=True)
class BucketCount:
    """Sealed partitions (``_SUCCESS`` objects) of one tier in one region's bucket."""

    region: str
    tier: str
    url: str
    sealed: int


def count_sealed(endpoint: str, regions: tuple[str, ...]) -> list[BucketCount]:
    """How many partitions each region's bucket holds sealed, per tier."""
    from cryptorun_daemon.storage.object_store import TierBucket

    async def count() -> list[BucketCount]:
        out: list[BucketCount] = []
        for region in regions:
            for tier in TIERS:
                config = ObjectStoreTier(
                    url=f"s3://{bucket_of(region)}/tiers",
                    bucket=bucket_of(region),
                    prefix="tiers",
                    endpoint_url=endpoint,
                    region=REGION_NAME,
                    allow_http=True,
                )
                bucket = TierBucket(tier, config)
                sealed = 0
                async for info in bucket.list(f"{tier}/"):
                    sealed += info.key.endswith("/_SUCCESS")
                out.append(BucketCount(region, tier, config.url, sealed))
        return out

    return asyncio.run(count())
