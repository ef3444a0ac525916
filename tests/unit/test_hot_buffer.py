"""The replay buffer: bounded by records and bytes, indexed by seq."""

from __future__ import annotations

import pytest

from cryptorun_daemon.hot.buffer import ReplayBuffer
from cryptorun_daemon.hot.record import encode_record


def rec(seq: int, size: int = 10) -> object:
    fields = {"venue": "v", "symbol": "A/B", "pad": "x" * size}
    return encode_record("eu", seq, seq, "trade", fields)


def test_evicts_oldest_beyond_record_limit() -> None:
    """With max_records=3, appending 5 records keeps seqs 3..5."""
    buffer = ReplayBuffer(3, 1 << 20)
    for seq in range(1, 6):
        buffer.append(rec(seq))  # type: ignore[arg-type]
    assert (buffer.first_seq, buffer.last_seq, len(buffer)) == (3, 5, 3)


def test_evicts_oldest_beyond_byte_limit_but_keeps_newest() -> None:
    """Bytes never exceed the limit, except that one oversized newest record is kept."""
    buffer = ReplayBuffer(100, 300)
    for seq in range(1, 20):
        buffer.append(rec(seq))  # type: ignore[arg-type]
        assert buffer.bytes <= 300
    buffer.append(rec(20, size=1000))  # type: ignore[arg-type]
    assert len(buffer) == 1
    assert buffer.first_seq == 20


def test_read_from_returns_contiguous_slices_and_nothing_outside() -> None:
    """read_from honours seq, record and byte caps; out-of-range seqs give []."""
    buffer = ReplayBuffer(1000, 1 << 20)
    for seq in range(1, 101):
        buffer.append(rec(seq))  # type: ignore[arg-type]
    assert [r.seq for r in buffer.read_from(10, max_records=3, max_bytes=1 << 20)] == [10, 11, 12]
    one = buffer.read_from(10, max_records=50, max_bytes=1)
    assert [r.seq for r in one] == [10]  # at least one record even past max_bytes
    assert buffer.read_from(101, max_records=5, max_bytes=1 << 20) == []
    assert buffer.read_from(0, max_records=5, max_bytes=1 << 20) == []


def test_compaction_keeps_seq_indexing_correct() -> None:
    """After many evictions (internal compaction) reads still return the right seqs."""
    buffer = ReplayBuffer(10, 1 << 20)
    for seq in range(1, 5001):
        buffer.append(rec(seq))  # type: ignore[arg-type]
    assert [r.seq for r in buffer.read_from(4995, max_records=3, max_bytes=1 << 20)] == [
        4995,
        4996,
        4997,
    ]


def test_rejects_non_contiguous_seq() -> None:
    """A seq that does not follow the last one is refused."""
    buffer = ReplayBuffer(10, 1 << 20)
    buffer.append(rec(1))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        buffer.append(rec(3))  # type: ignore[arg-type]
