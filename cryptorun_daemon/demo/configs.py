"""The demo's two region configs: what a real deployment writes, tuned for minutes.

Layout under the demo directory::

    admin.token                      shared bearer token (0600)
    eu-central.toml  us-east.toml    one config per region
    data/eu-central/ data/us-east/   storage roots (hot journal, warm/, _state/ …)

eu-central is the warm/cold primary and us-east its replica; hot is
active-active (each region ingests the Kraken feed itself and mirrors its own
stream to the other). Partitions are one minute long instead of an hour so a
sealed, replicated partition shows up within the first ~70 seconds.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

PRIMARY = "eu-central"
REPLICA = "us-east"
REGIONS = (PRIMARY, REPLICA)
SYMBOLS = ("BTC/USD", "ETH/USD", "SOL/USD")
TOKEN_FILE = "admin.token"  # noqa: S105 - the token file's name, not a secret

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

    def admin_url(self, region: str) -> str:
        return f"http://127.0.0.1:{self.ports[region]}"

    def config_path(self, region: str) -> Path:
        return self.directory / f"{region}.toml"

    def log_path(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    def storage_root(self, region: str) -> Path:
        return self.directory / "data" / region

    @property
    def token_path(self) -> Path:
        return self.directory / TOKEN_FILE

    def token(self) -> str:
        return self.token_path.read_text(encoding="utf-8").strip()


def write_demo_configs(layout: DemoLayout) -> dict[str, Path]:
    """Write the token (kept if one exists) and one TOML config per region.

    Resource handling: creates ``layout.directory``; an existing directory is
    reused, so a second run continues the first one's data.
    """
    layout.directory.mkdir(parents=True, exist_ok=True)
    if not layout.token_path.is_file():
        layout.token_path.write_text(secrets.token_urlsafe(32) + "\n", encoding="utf-8")
    layout.token_path.chmod(0o600)
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
token_file = "{TOKEN_FILE}"

[storage]
root = "data/{region}"

[peers]
{peers}

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


def _rule(tier: str, src: str, dst: list[str], slo: float) -> str:
    to = ", ".join(f'"{d}"' for d in dst)
    return f'[[rules]]\ntier = "{tier}"\nfrom = "{src}"\nto = [{to}]\nlag_slo = "{slo:g}s"\n'
