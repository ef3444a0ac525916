"""Which source is authoritative for each (venue, symbol): local first, then peers.

Every region ingests its own feeds and mirrors its peers', so the same market
can arrive from several origins. The ordered source list is the local region
followed by the peers in config order; the first source whose newest record is
within the freshness gate is authoritative. When the local feed goes stale a
peer takes over, and when it recovers authority returns. Each change is
logged, counted in ``cryptorun_hot_source_switches_total{region,venue}`` and
kept on a timeline that the sealer reads to pick, record by record, the source
that was authoritative at that moment.

Peers decide which (venue, symbol) pairs they send, so the pairs tracked are
capped (``hot.max_tracked_markets``): once the cap is reached, a new pair from
a peer is not tracked — counted in ``cryptorun_hot_untracked_markets_total``
and dropped — while pairs of the local feeds (bounded by this region's own
config) are always tracked. The label set of the switch counter grows only
with tracked pairs.

A source can be *suspended* (the local one while its journal refuses writes):
it is then never elected while another source has the market, however fresh
its last record, so the peers' copies take over at once rather than after the
freshness gate; resuming it re-elects immediately.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from cryptorun_daemon.metrics import Metrics

log = structlog.get_logger("cryptorun.hot.authority")
Key = tuple[str, str]  # (venue, symbol)
TIMELINE_LIMIT = 10_000


class SourceAuthority:
    """Tracks freshness per (venue, symbol, source) and elects the authoritative source.

    Error handling: none needed; unknown sources (not in the list) are
    ranked after the configured ones in order of first appearance.
    Resource handling: at most ``max_markets`` pairs from peers (see the
    module docstring); a timeline keeps at most ``TIMELINE_LIMIT`` entries.
    """

    def __init__(
        self,
        region: str,
        sources: Sequence[str],
        *,
        gate_seconds: float,
        metrics: Metrics | None = None,
        now_ns: Callable[[], int] = time.time_ns,
        max_markets: int = 10_000,
    ) -> None:
        self.region = region
        self.max_markets = max_markets
        self.untracked = 0  # observations dropped at the cap
        self.sources = list(dict.fromkeys(sources))
        self.gate_ns = int(gate_seconds * 1e9)
        self.metrics = metrics
        self.now_ns = now_ns
        self._seen: dict[Key, dict[str, int]] = {}
        self.current: dict[Key, str] = {}
        self._timeline: dict[Key, tuple[list[int], list[str]]] = {}
        self.switches: deque[dict[str, Any]] = deque(maxlen=100)
        self.switch_count = 0
        self.suspended: dict[str, str] = {}  # source -> why

    def rank(self, source: str) -> int:
        """Preference of a source: 0 = local, then peers in config order."""
        try:
            return self.sources.index(source)
        except ValueError:
            self.sources.append(source)
            return len(self.sources) - 1

    def observe(self, source: str, venue: str, symbol: str, ingest_ns: int) -> None:
        """Note that ``source`` delivered a record for (venue, symbol) ingested at ``ingest_ns``."""
        key = (venue, symbol)
        seen = self._seen.get(key)
        if seen is None:
            if len(self._seen) >= self.max_markets and source != self.region:
                self.untracked += 1
                if self.metrics is not None:
                    self.metrics.hot_untracked_markets_total.labels(
                        region=self.region, origin=source
                    ).inc()
                return
            seen = self._seen[key] = {}
        if ingest_ns > seen.get(source, 0):
            seen[source] = ingest_ns
        if key not in self.current:
            self._elect(key, ingest_ns)

    def evaluate(self, now_ns: int | None = None) -> None:
        """Re-elect every pair against the gate (called periodically by the component)."""
        now = self.now_ns() if now_ns is None else now_ns
        for key in self._seen:
            self._elect(key, now)

    def suspend(self, source: str, reason: str) -> None:
        """Take authority from ``source`` wherever another source has the market."""
        if self.suspended.get(source) == reason:
            return
        self.suspended[source] = reason
        log.warning("hot source suspended", source=source, reason=reason)
        self.evaluate()

    def resume(self, source: str) -> None:
        """Let ``source`` be elected again (re-elects every market now)."""
        if self.suspended.pop(source, None) is not None:
            log.warning("hot source resumed", source=source)
            self.evaluate()

    def _elect(self, key: Key, now: int) -> None:
        seen = self._seen[key]
        ranked = sorted(seen, key=self.rank)
        usable = [s for s in ranked if s not in self.suspended] or ranked
        fresh = [s for s in usable if now - seen[s] <= self.gate_ns]
        # Nobody fresh: keep the least stale source rather than flapping.
        choice = fresh[0] if fresh else max(usable, key=lambda s: seen[s])
        previous = self.current.get(key)
        if choice == previous:
            return
        self.current[key] = choice
        times, names = self._timeline.setdefault(key, ([], []))
        times.append(now)
        names.append(choice)
        if len(times) > TIMELINE_LIMIT:
            del times[0], names[0]
        if previous is None:
            return
        self.switch_count += 1
        event = {
            "venue": key[0],
            "symbol": key[1],
            "from": previous,
            "to": choice,
            "at_ns": now,
            "staleness_seconds": {s: round((now - seen[s]) / 1e9, 3) for s in ranked},
        }
        self.switches.append(event)
        if self.metrics is not None:
            self.metrics.hot_source_switches_total.labels(region=self.region, venue=key[0]).inc()
        log.warning("hot source switch", **event)

    def source_at(self, venue: str, symbol: str, at_ns: int) -> str | None:
        """The source that was authoritative for (venue, symbol) at ``at_ns`` (None if unknown)."""
        timeline = self._timeline.get((venue, symbol))
        if timeline is None:
            return None
        times, names = timeline
        index = bisect.bisect_right(times, at_ns) - 1
        return names[index] if index >= 0 else names[0]

    def status(self) -> dict[str, Any]:
        now = self.now_ns()
        pairs = []
        for (venue, symbol), seen in sorted(self._seen.items()):
            pairs.append(
                {
                    "venue": venue,
                    "symbol": symbol,
                    "authoritative": self.current.get((venue, symbol)),
                    "freshness_seconds": {
                        s: round((now - ns) / 1e9, 3)
                        for s, ns in sorted(seen.items(), key=lambda item: self.rank(item[0]))
                    },
                }
            )
        return {
            "sources": list(self.sources),
            "freshness_gate_seconds": self.gate_ns / 1e9,
            "switches": self.switch_count,
            "tracked_markets": len(self._seen),
            "max_tracked_markets": self.max_markets,
            "untracked_observations": self.untracked,
            "suspended": dict(self.suspended),
            "recent_switches": list(self.switches)[-10:],
            "pairs": pairs,
        }
