"""The demo's two region configs: what a real deployment writes, tuned for minutes.

Layout under the demo directory::

    operator.token peer.token read.token   one bearer token per scope (0600)
    tls/ca.pem tls/{region}.pem/.key       private CA, region certificates (certs init)
    eu-central.toml  us-east.toml          one config per region
    data/eu-central/ data/us-east/         storage roots (hot journal, warm/, _state/ …)

eu-central is the warm/cold primary and us-east its replica; hot is
active-active (each region ingests the Kraken feed itself and mirrors its own
stream to the other). Both admin listeners speak TLS (certificates from a
private CA made on the first run) and take scoped tokens: peers call each
other with the peer token, the demo's own checks use the operator token, and
``curl`` commands use the read token with ``--cacert tls/ca.pem``.
Partitions are one minute long instead of an hour so a sealed, replicated
partition shows up within the first ~70 seconds.
"""

from __future__ import annotations

import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptorun_daemon.config.model import SCOPES, Scope
from cryptorun_daemon.security.certs import init_certs
from cryptorun_daemon.security.tls import client_context

PRIMARY = "eu-central"
REPLICA = "us-east"
REGIONS = (PRIMARY, REPLICA)
SYMBOLS = ("BTC/USD", "ETH/USD", "SOL/USD")
TLS_DIR = "tls"


def token_file(scope: Scope) -> str:
    """The file name of ``scope``'s token (relative to the demo directory)."""
    return f"{scope}.token"


# One-minute windows, sealed 5 s after they end: long enough for late trades
# from a real exchange (timestamps a second or two behind), short enough to see.
PARTITION_LENGTH = 60.0
SEAL_GRACE = 5.0
# SLOs scaled to one-minute partitions: the replica pulls every SLO/4 = 5 s, so
# a sealed partition normally arrives within one pass.
HOT_LAG_SLO = 5.0
WARM_LAG_SLO = 20.0
COLD_LAG_SLO = 300.0  # cold stays daily: nothing is sealed there during a demo
FEED_HEARTBEAT_TIMEOUT = 10.0


@dataclass(frozen=True)
class DemoLayout:
    """Where everything of one demo run lives and listens."""

    directory: Path
    ports: dict[str, int]
    kraken_url: str
    #: ``--object-store``: the local S3 server's endpoint (warm and cold in buckets).
    object_store: str | None = None

    def admin_url(self, region: str) -> str:
        return f"https://127.0.0.1:{self.ports[region]}"

    def config_path(self, region: str) -> Path:
        return self.directory / f"{region}.toml"

    def log_path(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    def storage_root(self, region: str) -> Path:
        return self.directory / "data" / region

    def token_path(self, scope: Scope) -> Path:
        return self.directory / token_file(scope)

    def token(self, scope: Scope) -> str:
        return self.token_path(scope).read_text(encoding="utf-8").strip()

    @property
    def ca_path(self) -> Path:
        return self.directory / TLS_DIR / "ca.pem"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context trusting the demo's CA (for the demo's own checks)."""
        return client_context(self.ca_path)


def write_demo_configs(layout: DemoLayout) -> dict[str, Path]:
    """Write the tokens and certificates (kept if they exist) and one TOML config per region.

    Resource handling: creates ``layout.directory``; an existing directory is
    reused, so a second run continues the first one's data.
    """
    layout.directory.mkdir(parents=True, exist_ok=True)
    for scope in SCOPES:
        path = layout.token_path(scope)
        if not path.is_file():
            path.write_text(secrets.token_urlsafe(32) + "\n", encoding="utf-8")
        path.chmod(0o600)
    if not layout.ca_path.is_file():
        init_certs(layout.directory / TLS_DIR, REGIONS, force=True)
    paths: dict[str, Path] = {}
    for region in REGIONS:
        path = layout.config_path(region)
        path.write_text(region_config(layout, region), encoding="utf-8")
        paths[region] = path
    return paths


def region_config(layout: DemoLayout, region: str) -> str:
    """One region's config as TOML text (paths relative to the config file)."""
    peers = "\n".join(f'{p} = "{layout.admin_url(p)}"' for p in REGIONS if p != region)
    symbols = ", ".join(f'"{s}"' for s in SYMBOLS)
    role = "primary" if region == PRIMARY else "replica"
    hot_rules = "\n".join(
        _rule("hot", src, [dst for dst in REGIONS if dst != src], HOT_LAG_SLO) for src in REGIONS
    )
    return f"""\
# cryptorun demo: {region} ({role} for warm/cold). Written by `cryptorun demo`.
region = "{region}"

[admin]
listen = "127.0.0.1:{layout.ports[region]}"
tls_cert = "{TLS_DIR}/{region}.pem"
tls_key = "{TLS_DIR}/{region}.key"
# Even on loopback, status and metrics want the read token: the demo shows the real thing.
open_reads = false

[admin.tokens]
operator_file = "{token_file("operator")}"
peer_file = "{token_file("peer")}"
read_file = "{token_file("read")}"

[storage]
root = "data/{region}"
{_object_store_sections(layout, region)}
[peers]
{peers}
ca_file = "{TLS_DIR}/ca.pem"

[hot]
partition_length = "{PARTITION_LENGTH:g}s"
seal_grace = "{SEAL_GRACE:g}s"

[[feeds]]
kind = "kraken"
name = "kraken"
url = "{layout.kraken_url}"
symbols = [{symbols}]
heartbeat_timeout = "{FEED_HEARTBEAT_TIMEOUT:g}s"

[replication]
# Loopback: a peer that does not answer in 10 s is in trouble.
request_timeout = "10s"

[validation]
# Flag and quarantine bad rows; never refuse a partition in a demo.
strict = false

{hot_rules}
{_rule("warm", PRIMARY, [REPLICA], WARM_LAG_SLO)}
{_rule("cold", PRIMARY, [REPLICA], COLD_LAG_SLO)}"""


def _object_store_sections(layout: DemoLayout, region: str) -> str:
    """``--object-store``: this region's tiers in its bucket; the replica reads the primary's."""
    if layout.object_store is None:
        return ""
    from cryptorun_daemon.demo.object_store import tier_toml

    sources = (PRIMARY,) if region != PRIMARY else ()
    return "\n" + tier_toml(layout.object_store, region, sources=sources)


def _rule(tier: str, src: str, dst: list[str], slo: float) -> str:
    to = ", ".join(f'"{d}"' for d in dst)
    return f'[[rules]]\ntier = "{tier}"\nfrom = "{src}"\nto = [{to}]\nlag_slo = "{slo:g}s"\n'
