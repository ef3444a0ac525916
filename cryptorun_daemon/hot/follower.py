"""What a mirror client does with each frame from one peer: the NATS-mirror rules.

Pure protocol logic, no sockets (``mirror_client`` owns the connection): accept
seq = last + 1, drop duplicates (seq <= last, counted), treat a jump (seq >
last + 1) as a gap to re-request, and when the peer says the range is gone
(``gap`` frame) or its replid changed, record an unfillable gap for warm
backfill instead of silently restarting. Every line of a records frame is
checked (``line_check``) before any of it is journaled; per-source freshness
comes from those checked lines, never from the header's ``latest`` summary.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from cryptorun_daemon.errors import ProtocolError
from cryptorun_daemon.hot import protocol
from cryptorun_daemon.hot.line_check import check_frame
from cryptorun_daemon.hot.log import HotLog
from cryptorun_daemon.metrics import Metrics

SKEW_SAMPLES = 16


class OriginFollower:
    """Applies one peer origin's stream to the local hot log.

    Error handling: a frame that contradicts the protocol (records for an
    unknown replid, a malformed header, any line that fails ``line_check``)
    raises :class:`ProtocolError` before anything of it is written; the
    client closes with 1007 and reconnects from the last applied seq.
    """

    def __init__(
        self,
        hot_log: HotLog,
        peer: str,
        metrics: Metrics,
        *,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.log = hot_log
        self.peer = peer
        self.metrics = metrics
        self.now_ns = now_ns
        region = hot_log.region
        self._dupes = metrics.hot_duplicates_total.labels(region=region, origin=peer)
        self._gaps = metrics.hot_seq_gaps_total.labels(region=region, origin=peer)
        self._lag = metrics.replication_lag_seconds.labels(tier="hot", region=region, source=peer)
        self._skew = metrics.hot_clock_skew_seconds.labels(region=region, origin=peer)
        self.head_seq = 0
        self.duplicates = 0
        self.jumps = 0
        self.rerequest_from: int | None = None
        self.latencies_ns: deque[int] = deque(maxlen=8192)
        self._skew_samples: deque[tuple[int, int]] = deque(maxlen=SKEW_SAMPLES)  # (rtt, skew)

    # --------------------------------------------------------------- requests
    def subscribe_request(self) -> str:
        """The subscribe message resuming from last applied + 1 (or 1 for a new origin)."""
        position = self.log.position(self.peer)
        if position is None or not position.replid:
            return protocol.subscribe(self.peer, None, 1)
        return protocol.subscribe(self.peer, position.replid, position.applied_seq + 1)

    # ----------------------------------------------------------- text frames
    def on_text(self, data: str) -> None:
        """Handle hello, gap and heartbeat messages.

        Error handling: :class:`ProtocolError` for an unknown type or bad fields.
        """
        body = protocol.parse_text(data)
        kind = body.get("type")
        try:
            if kind == "hello":
                self.head_seq = int(body["head_seq"])
            elif kind == "gap":
                self._on_gap(
                    str(body["replid"]),
                    int(body["from_seq"]),
                    int(body["available_from"]),
                    str(body.get("reason", "")),
                )
            elif kind == "heartbeat":
                echo = body.get("echo")
                self._on_heartbeat(
                    int(body["origin_ns"]),
                    int(body["head_seq"]),
                    echo if isinstance(echo, int) else None,
                )
            else:
                raise ProtocolError(f"unexpected message type {kind!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed {kind} message: {exc}") from None

    def _on_gap(self, replid: str, from_seq: int, available_from: int, reason: str) -> None:
        position = self.log.position(self.peer)
        self.rerequest_from = None
        if position is None or not position.replid:
            if available_from > from_seq:
                self.log.record_gap(
                    self.peer,
                    {
                        "reason": reason or "new_subscriber",
                        "replid": replid,
                        "missing_from": from_seq,
                        "missing_to": available_from - 1,
                        "at_ns": self.now_ns(),
                    },
                )
        elif replid != position.replid:
            # The origin lost or wiped its journal: never pretend seq 1 continues the old stream.
            self.log.record_gap(
                self.peer,
                {
                    "reason": "replid_changed",
                    "replid": position.replid,
                    "new_replid": replid,
                    "missing_from": position.applied_seq + 1,
                    "missing_to": None,
                    "available_from": available_from,
                    "at_ns": self.now_ns(),
                },
            )
        elif available_from > position.applied_seq + 1:
            self.log.record_gap(
                self.peer,
                {
                    "reason": reason or "evicted",
                    "replid": replid,
                    "missing_from": position.applied_seq + 1,
                    "missing_to": available_from - 1,
                    "at_ns": self.now_ns(),
                },
            )
        self.log.adopt_replid(self.peer, replid, available_from - 1)

    def on_disconnected(self) -> None:
        """Report lag while the peer cannot be heard.

        Connected, heartbeats prove an idle origin has nothing newer, so lag is
        0; disconnected, nothing proves that, so lag is the definition taken
        literally — now minus the origin ingest time of the newest applied
        record — and it keeps growing until the stream is back.
        """
        position = self.log.position(self.peer)
        if position is not None and position.applied_ingest_ns:
            self._lag.set(max(0.0, (self.now_ns() - position.applied_ingest_ns) / 1e9))

    def _on_heartbeat(self, origin_ns: int, head_seq: int, echo: int | None) -> None:
        now = self.now_ns()
        self.head_seq = max(self.head_seq, head_seq)
        position = self.log.position(self.peer)
        if position is not None and position.applied_seq >= head_seq:
            self._lag.set(0)  # in sync: idle is not lag
        elif position is not None and position.applied_ingest_ns:
            self._lag.set(max(0.0, (now - position.applied_ingest_ns) / 1e9))
        if echo is not None and echo <= now:
            # NTP-style: origin clock minus the midpoint of our send/receive times;
            # the sample with the smallest round trip bounds the error best.
            rtt = now - echo
            self._skew_samples.append((rtt, origin_ns - (echo + now) // 2))
            self._skew.set(min(self._skew_samples)[1] / 1e9)

    # --------------------------------------------------------- binary frames
    def on_records(self, frame: bytes) -> str | None:
        """Apply a records frame; returns a re-subscribe message when it reveals a jump.

        Error handling: :class:`ProtocolError` for a malformed frame, one
        under a replid this follower has not adopted, or one with any line
        that fails ``line_check`` (its ``reason`` says which check); in every
        case nothing of the frame is written.
        """
        header, lines = protocol.decode_records(frame)
        position = self.log.position(self.peer)
        if position is None or header.replid != position.replid:
            raise ProtocolError("records frame for a replid the subscriber has not adopted")
        # All or nothing, before the dedupe below looks at a single line.
        checked = check_frame(lines, origin=self.peer, first_seq=header.first_seq)
        self.head_seq = max(self.head_seq, header.head_seq)
        last = position.applied_seq
        first = header.first_seq
        end = first + header.count - 1
        if end <= last:
            self.duplicates += header.count
            self._dupes.inc(header.count)
            return None
        if first > last + 1:
            # A jump: count it once, drop the frame, ask again from last + 1.
            if self.rerequest_from != last + 1:
                self.jumps += 1
                self._gaps.inc()
                self.rerequest_from = last + 1
                return protocol.subscribe(self.peer, position.replid, last + 1)
            return None
        self.rerequest_from = None
        skip = 0
        if first <= last:
            skip = last - first + 1
            self.duplicates += skip
            self._dupes.inc(skip)
        # A market whose last line is among the duplicates has nothing new here.
        latest = [
            (venue, symbol, ns)
            for (venue, symbol), (index, ns) in checked.latest.items()
            if index >= skip
        ]
        last_ingest_ns = checked.ingest_ns[-1]
        self.log.apply_mirrored(
            self.peer, checked.lines[skip:] if skip else checked.lines, end, last_ingest_ns, latest
        )
        now = self.now_ns()
        # The oldest record of the batch waited longest: an upper bound for every record in it.
        self.latencies_ns.append(now - checked.ingest_ns[skip])
        self._lag.set(0 if end >= self.head_seq else max(0.0, (now - last_ingest_ns) / 1e9))
        return None

    # ----------------------------------------------------------------- status
    @property
    def skew_seconds(self) -> float | None:
        return min(self._skew_samples)[1] / 1e9 if self._skew_samples else None

    def latency_summary(self) -> dict[str, float | int | None]:
        samples = sorted(self.latencies_ns)
        if not samples:
            return {"batches": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}

        def pick(q: float) -> float:
            return round(samples[min(len(samples) - 1, int(q * len(samples)))] / 1e6, 3)

        return {
            "batches": len(samples),
            "p50_ms": pick(0.5),
            "p99_ms": pick(0.99),
            "max_ms": round(samples[-1] / 1e6, 3),
        }

    def status(self) -> dict[str, Any]:
        position = self.log.position(self.peer)
        gaps = list(position.gaps) if position is not None else []
        return {
            "replid": position.replid if position else None,
            "head_seq": self.head_seq,
            "applied_seq": position.applied_seq if position else 0,
            "duplicates": self.duplicates,
            "jumps": self.jumps,
            "recent_gaps": len(gaps),
            "last_gap": gaps[-1] if gaps else None,
            "clock_skew_seconds": self.skew_seconds,
            "apply_latency": self.latency_summary(),
        }
