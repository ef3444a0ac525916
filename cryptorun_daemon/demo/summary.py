"""What the demo shows: live per-region lines from the admin API, and the final tally.

Live lines read each daemon's ``/v1/status``, ``/metrics`` and (bearer token)
``/v1/partitions?tier=warm`` — the same surface an operator or Prometheus uses.
The final tally reads the storage roots on disk after the daemons stopped, so it
reports what was really left behind.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from cryptorun_daemon.storage.layout import MANIFEST_NAME, SUCCESS_MARKER, SUPERSEDED_DIR

HTTP_TIMEOUT = 3.0
FEED_PROBLEM_CHARS = 90
Labels = Mapping[str, str]


class AdminReader:
    """Small synchronous client for the daemons' admin API (loopback, TLS, bearer token).

    Error handling: every method raises ``OSError`` (``urllib.error.URLError``
    included) or ``ValueError`` (bad JSON); callers decide what a failure means.
    """

    def __init__(self, token: str, context: ssl.SSLContext | None = None) -> None:
        self.headers = {"Authorization": f"Bearer {token}"}
        self.context = context

    def text(self, url: str, *, body: Any = None, timeout: float = HTTP_TIMEOUT) -> str:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - loopback URLs the demo built
            url, data=data, headers=self.headers, method="GET" if data is None else "POST"
        )
        with urllib.request.urlopen(request, timeout=timeout, context=self.context) as resp:  # noqa: S310 - same
            return str(resp.read().decode("utf-8"))

    def json(self, url: str, *, body: Any = None, timeout: float = HTTP_TIMEOUT) -> Any:
        return json.loads(self.text(url, body=body, timeout=timeout))

    def sealed_partitions(self, base_url: str, tier: str = "warm") -> dict[str, str]:
        """``partition path → content hash`` of every sealed partition the daemon serves."""
        listing = self.json(f"{base_url}/v1/partitions?tier={tier}")
        return {m["partition"]: m["content_hash"] for m in listing["partitions"]}


def metric_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """``(sample name, labels, value)`` for every sample of a Prometheus exposition."""
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def _total(samples: list[tuple[str, dict[str, str], float]], name: str, **match: str) -> float:
    return sum(
        v
        for n, labels, v in samples
        if n == name and all(labels.get(k) == want for k, want in match.items())
    )


@dataclass(frozen=True)
class RegionView:
    """One region as the live summary shows it (``error`` set when it did not answer)."""

    region: str
    role: str | None = None
    hot_records: dict[str, float] = field(default_factory=dict)
    hot_lag: float | None = None
    hot_slo: float | None = None
    seq_gaps: float = 0.0
    validation_errors: float = 0.0
    quarantined: float = 0.0
    warm_lag: float | None = None
    warm_slo: float | None = None
    feed_problem: str | None = None
    windows_sealed: int = 0
    warm_bytes_pulled: float = 0.0
    sealed: dict[str, str] = field(default_factory=dict)
    error: str | None = None


def read_region(reader: AdminReader, region: str, base_url: str) -> RegionView:
    """Fetch one region's view; a daemon that does not answer gives a view with ``error``."""
    try:
        status = reader.json(f"{base_url}/v1/status")
        samples = metric_samples(reader.text(f"{base_url}/metrics"))
        sealed = reader.sealed_partitions(base_url)
    except (OSError, ValueError, KeyError) as exc:
        return RegionView(region, error=f"{type(exc).__name__}: {exc}")
    tiers = status.get("tiers", {})
    warm = tiers.get("warm", {})
    stream = tiers.get("hot", {}).get("stream", {})
    sealer = stream.get("sealer") or {}
    down = [
        f"feed {name} not connected ({feed.get('last_error') or 'connecting'})"
        for name, feed in (stream.get("feeds") or {}).items()
        if not feed.get("connected")
    ]
    warm_sources = [s for s in warm.get("sources", {}).values() if s.get("lag_seconds") is not None]
    origins = {labels["origin"] for n, labels, _ in samples if n == "cryptorun_hot_records_total"}
    hot_lags = [
        v
        for n, labels, v in samples
        if n == "cryptorun_replication_lag_seconds"
        and labels.get("tier") == "hot"
        and labels.get("region") == region
    ]
    hot_slo = [
        v
        for n, labels, v in samples
        if n == "cryptorun_replication_slo_seconds"
        and labels.get("tier") == "hot"
        and labels.get("region") == region
    ]
    return RegionView(
        region=region,
        role=warm.get("role"),
        hot_records={
            o: _total(samples, "cryptorun_hot_records_total", region=region, origin=o)
            for o in sorted(origins)
        },
        hot_lag=max(hot_lags) if hot_lags else None,
        hot_slo=hot_slo[0] if hot_slo else None,
        seq_gaps=_total(samples, "cryptorun_hot_seq_gaps_total", region=region),
        validation_errors=_total(samples, "cryptorun_validation_errors_total", region=region),
        quarantined=_total(samples, "cryptorun_quarantine_total", region=region),
        warm_lag=max(s["lag_seconds"] for s in warm_sources) if warm_sources else None,
        warm_slo=min(s["lag_slo_seconds"] for s in warm_sources) if warm_sources else None,
        feed_problem="; ".join(down)[:FEED_PROBLEM_CHARS] or None,
        windows_sealed=int(sealer.get("windows_sealed") or 0),
        warm_bytes_pulled=_total(
            samples, "cryptorun_replication_bytes_total", tier="warm", to=region
        ),
        sealed=sealed,
    )


def format_line(view: RegionView, primary: RegionView | None, now: datetime) -> str:
    """One line: hot records by origin and lag, warm role/partitions/lag, gaps, quarantine.

    ``primary`` is the warm primary's view: a replica counts how many of its
    sealed partitions it holds with the same content hash.
    """
    stamp = now.astimezone(UTC).strftime("%H:%M:%S")
    head = f"{stamp}  {view.region:<10}"
    if view.error is not None:
        return f"{head}  not answering: {view.error}"
    own = view.hot_records.get(view.region, 0.0)
    mirrored = (
        " + ".join(f"{v:,.0f} from {o}" for o, v in view.hot_records.items() if o != view.region)
        or "nothing mirrored yet"
    )
    hot = f"hot {own:,.0f} own + {mirrored}, lag {_vs_slo(view.hot_lag, view.hot_slo)}"
    if view.feed_problem:
        hot += f" [{view.feed_problem}]"
    if view.role == "primary" or primary is None or primary is view:
        warm = (
            f"warm {view.role or '?'}: {len(view.sealed)} partitions sealed "
            f"({view.windows_sealed} window{'' if view.windows_sealed == 1 else 's'})"
        )
    else:
        wanted = primary.sealed
        same = sum(1 for p, h in wanted.items() if view.sealed.get(p) == h)
        warm = (
            f"warm {view.role or '?'}: {same}/{len(wanted)} in sync, "
            f"{view.warm_bytes_pulled / 1000:,.0f} kB pulled, "
            f"lag {_vs_slo(view.warm_lag, view.warm_slo)}"
        )
    checks = (
        f"gaps {view.seq_gaps:,.0f} | invalid {view.validation_errors:,.0f}, "
        f"quarantined {view.quarantined:,.0f}"
    )
    return f"{head}  {hot} | {warm} | {checks}"


def _vs_slo(lag: float | None, slo: float | None) -> str:
    """``0.4s/5s``, with ``OVER SLO`` when the lag exceeds it."""
    if lag is None:
        return "-"
    text = f"{lag:.1f}s" if lag < 10 else f"{lag:.0f}s"
    if slo is None:
        return text
    return f"{text}/{slo:g}s" + (" OVER SLO" if lag > slo else "")


# --- after the daemons stopped ----------------------------------------------------------


@dataclass(frozen=True)
class StorageReport:
    """Sealed partitions of one tier at the primary and at a replica, read from disk."""

    primary: dict[str, bytes]
    replica: dict[str, bytes]
    rows: int
    superseded: int

    @property
    def identical(self) -> list[str]:
        return sorted(p for p, raw in self.primary.items() if self.replica.get(p) == raw)

    @property
    def not_identical(self) -> list[str]:
        return sorted(p for p in self.primary if self.replica.get(p) != self.primary[p])


def sealed_manifests(root: Path, tier: str = "warm") -> dict[str, bytes]:
    """``partition path → _manifest.json bytes`` of every sealed partition under ``root``."""
    base = root / tier
    if not base.is_dir():
        return {}
    found: dict[str, bytes] = {}
    for marker in sorted(base.rglob(SUCCESS_MARKER)):
        manifest = marker.parent / MANIFEST_NAME
        if manifest.is_file():
            found[str(marker.parent.relative_to(base))] = manifest.read_bytes()
    return found


def compare_storage(primary_root: Path, replica_root: Path, tier: str = "warm") -> StorageReport:
    primary = sealed_manifests(primary_root, tier)
    rows = sum(int(json.loads(raw).get("rows") or 0) for raw in primary.values())
    superseded_dir = replica_root / SUPERSEDED_DIR / tier
    superseded = sum(1 for _ in superseded_dir.rglob("*-epoch*")) if superseded_dir.is_dir() else 0
    return StorageReport(primary, sealed_manifests(replica_root, tier), rows, superseded)


def hot_records_from_metrics(text: str, region: str) -> dict[str, float]:
    samples = metric_samples(text)
    origins = {labels["origin"] for n, labels, _ in samples if n == "cryptorun_hot_records_total"}
    return {
        o: _total(samples, "cryptorun_hot_records_total", region=region, origin=o)
        for o in sorted(origins)
    }
