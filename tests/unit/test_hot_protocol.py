"""Mirror wire format and the follower's resume rules (dedupe, jump, gap, replid change)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cryptorun_daemon.errors import ProtocolError
from cryptorun_daemon.hot import protocol
from cryptorun_daemon.hot.buffer import ReplayBuffer
from cryptorun_daemon.hot.follower import OriginFollower
from cryptorun_daemon.hot.journal import Journal
from cryptorun_daemon.hot.log import HotLog
from cryptorun_daemon.hot.record import HotRecord, encode_record
from cryptorun_daemon.metrics import Metrics


def records(first: int, count: int, origin: str = "eu") -> list[HotRecord]:
    return [
        encode_record(
            origin, s, 1_000 + s, "trade", {"venue": "kraken", "symbol": "BTC/USD", "trade_id": s}
        )
        for s in range(first, first + count)
    ]


def test_records_frame_round_trips() -> None:
    """A records frame carries contiguous lines plus a per-pair freshness summary."""
    batch = records(5, 3)
    header, lines = protocol.decode_records(protocol.encode_records("r1", batch, head_seq=9))
    assert (header.replid, header.first_seq, header.count, header.head_seq) == ("r1", 5, 3, 9)
    assert lines == [r.line for r in batch]
    assert header.latest == [("kraken", "BTC/USD", 1_007)]


@pytest.mark.parametrize(
    "frame",
    [
        b"X{}\n1",
        b"R{not json\n1",
        b"R{}\n1",
        protocol.encode_records("r", records(1, 2), 2)[:-30] + b"\n",
    ],
)
def test_malformed_records_frames_are_protocol_errors(frame: bytes) -> None:
    """Wrong tag, bad header or a line count that disagrees never gets applied."""
    with pytest.raises(ProtocolError):
        protocol.decode_records(frame)


@pytest.mark.parametrize(
    "message",
    [
        {"origin": "eu", "replid": None},
        {"origin": "", "replid": None, "from_seq": 1},
        {"origin": "eu", "replid": 5, "from_seq": 1},
        {"origin": "eu", "replid": None, "from_seq": 0},
        {"origin": "eu", "replid": None, "from_seq": True},
        {"type": "ping", "origin": "eu", "from_seq": 1},
    ],
)
def test_bad_subscribe_requests_are_rejected(message: dict[str, object]) -> None:
    """Every subscribe field is validated; the error names what is wrong."""
    with pytest.raises(ProtocolError):
        protocol.parse_subscribe(message)


def test_subscribe_without_type_is_accepted() -> None:
    """The contract's bare {"origin","replid","from_seq"} is a subscribe."""
    sub = protocol.parse_subscribe({"origin": "eu", "replid": "x", "from_seq": 3})
    assert (sub.origin, sub.replid, sub.from_seq) == ("eu", "x", 3)


@pytest.fixture
def follower(tmp_path: Path) -> OriginFollower:
    journal = Journal(tmp_path, segment_bytes=1 << 20, fsync_interval=1, fsync_records=100)
    log = HotLog("us", journal, ReplayBuffer(10, 1 << 20), Metrics())
    log.open()
    return OriginFollower(log, "eu", log.metrics, now_ns=lambda: 2_000_000)


def test_new_subscriber_adopts_replid_and_applies_in_order(follower: OriginFollower) -> None:
    """First contact: subscribe from 1, adopt the replid from the gap/hello, apply records."""
    assert json.loads(follower.subscribe_request())["from_seq"] == 1
    follower.on_text(protocol.gap(1, 1, "r1", "new_subscriber"))
    follower.on_records(protocol.encode_records("r1", records(1, 5), 5))
    status = follower.status()
    assert (status["replid"], status["applied_seq"], status["recent_gaps"]) == ("r1", 5, 0)
    assert json.loads(follower.subscribe_request()) == {
        "type": "subscribe",
        "origin": "eu",
        "replid": "r1",
        "from_seq": 6,
    }


def test_duplicates_are_dropped_and_counted(follower: OriginFollower) -> None:
    """Overlapping frames apply only the new tail; fully old frames apply nothing."""
    follower.on_text(protocol.gap(1, 1, "r1", "new_subscriber"))
    follower.on_records(protocol.encode_records("r1", records(1, 5), 5))
    follower.on_records(protocol.encode_records("r1", records(3, 5), 7))
    follower.on_records(protocol.encode_records("r1", records(1, 2), 7))
    assert follower.status()["applied_seq"] == 7
    assert follower.duplicates == 3 + 2


def test_jump_is_counted_once_and_re_requested(follower: OriginFollower) -> None:
    """seq > last + 1: drop the frame, count one gap, ask again from last + 1."""
    follower.on_text(protocol.gap(1, 1, "r1", "new_subscriber"))
    follower.on_records(protocol.encode_records("r1", records(1, 3), 3))
    again = follower.on_records(protocol.encode_records("r1", records(10, 2), 11))
    assert again is not None
    assert json.loads(again)["from_seq"] == 4
    assert follower.on_records(protocol.encode_records("r1", records(12, 1), 12)) is None
    assert follower.jumps == 1
    assert follower.status()["applied_seq"] == 3


def test_evicted_range_is_recorded_as_a_gap(follower: OriginFollower) -> None:
    """The origin no longer holds the range: a gap for warm backfill, then resume."""
    follower.on_text(protocol.gap(1, 1, "r1", "new_subscriber"))
    follower.on_records(protocol.encode_records("r1", records(1, 3), 3))
    follower.on_text(protocol.gap(4, 50, "r1", "evicted"))
    gap = follower.status()["last_gap"]
    assert (gap["missing_from"], gap["missing_to"], gap["reason"]) == (4, 49, "evicted")
    follower.on_records(protocol.encode_records("r1", records(50, 1), 50))
    assert follower.status()["applied_seq"] == 50


def test_replid_change_is_a_gap_not_a_silent_restart(follower: OriginFollower) -> None:
    """A new replid (origin wiped its journal) records replid_changed before seq 1 again."""
    follower.on_text(protocol.gap(1, 1, "r1", "new_subscriber"))
    follower.on_records(protocol.encode_records("r1", records(1, 3), 3))
    follower.on_text(protocol.gap(4, 1, "r2", "replid_changed"))
    gap = follower.status()["last_gap"]
    assert (gap["reason"], gap["replid"], gap["new_replid"]) == ("replid_changed", "r1", "r2")
    follower.on_records(protocol.encode_records("r2", records(1, 2), 2))
    assert follower.status()["applied_seq"] == 2


def test_records_under_an_unadopted_replid_are_refused(follower: OriginFollower) -> None:
    """Records for a replid the follower never adopted are a protocol violation."""
    with pytest.raises(ProtocolError):
        follower.on_records(protocol.encode_records("zz", records(1, 1), 1))


def test_heartbeat_echo_measures_skew(follower: OriginFollower) -> None:
    """Skew = origin clock - midpoint of our ping send/receive (now_ns is 2_000_000)."""
    follower.on_text(protocol.heartbeat(origin_ns=1_500_000, head_seq=0, echo=1_000_000))
    assert follower.skew_seconds == 0.0
