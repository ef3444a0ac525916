"""A primary's sealing backlog is worked off in short rounds that keep their progress.

Found by the chaos soak (seed 42, docs/RELIABILITY.md): a region promoted with
33 closed windows its replica role had not seen replicated sealed them all in
one round. A round is all-or-nothing, and any seal in it is refused while the
etcd lease is short of the safety margin; on a loaded host a renewal ran late
every 10–40 s, so each attempt was refused part-way and redone from scratch,
and the new primary sealed nothing for the rest of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from cryptorun_daemon.config import FeedConfig
from cryptorun_daemon.hot.authority import SourceAuthority
from cryptorun_daemon.hot.feeds_builtin import SyntheticFeed
from cryptorun_daemon.hot.journal import Journal
from cryptorun_daemon.hot.record import encode_record
from cryptorun_daemon.hot.sealer import HotSealer
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.storage.fence_lock import install_write_permit
from tests.harness.wait import eventually

S = 1_000_000_000
T0 = 1_756_684_800 * S  # 2025-09-01T00:00:00Z
WINDOW = 60 * S
WINDOWS = 6
PERIOD = S // 4  # four synthetic events a second
# Each window is sealed into 4 partitions (2 datasets x 2 symbols), each seal asks the
# write permit twice: 8 asks per window, 48 for the whole backlog.
REFUSE_EVERY = 12


def journal_with_backlog(directory: Path) -> Journal:
    """A journal holding WINDOWS closed windows of 'eu' records, none sealed yet."""
    journal = Journal(directory, segment_bytes=1 << 20, fsync_interval=1, fsync_records=10**6)
    journal.recover(local_origin="eu", tail_records=10, tail_bytes=1 << 16)
    journal.write_control({"ctl": "replid", "o": "eu", "r": "e" * 40, "s": 0})
    config = FeedConfig(
        name="syn",
        kind="synthetic",
        venue="synthetic",
        symbols=("BTC/USD", "ETH/USD"),
        rate=S / PERIOD,
        seed=11,
        book_depth=2,
    )
    source = SyntheticFeed(config)
    for seq, k in enumerate(range(T0 // PERIOD, (T0 + WINDOWS * WINDOW) // PERIOD), start=1):
        record = source.event(k)
        fields: dict[str, Any] = {**record.fields, "ingest_ts": record.fields["ts"] + 1000}
        line = encode_record("eu", seq, fields["ts"] + 2000, record.dataset, fields).line
        journal.write_line(line)
    journal.flush()
    return journal


async def test_a_new_primary_seals_its_backlog_although_seals_are_refused_now_and_then(
    tmp_path: Path,
) -> None:
    """A primary with six closed windows to seal whose write permit refuses every twelfth
    ask (the etcd lease short of its safety margin because a renewal ran late): the
    scheduled rounds seal the windows oldest first, a budget's worth per round, each
    round saving its progress, until all six are sealed. Sealing all six in one round
    (48 asks) is refused part-way on every attempt and never gets anywhere."""
    root = tmp_path / "root"
    journal = journal_with_backlog(tmp_path / "journal")
    auth = SourceAuthority("eu", ["eu"], gate_seconds=5)
    now = T0 + WINDOWS * WINDOW + 31 * S
    sealer = HotSealer(
        region="eu",
        root=root,
        journal=journal,
        authority=auth,
        partition_length=WINDOW / S,
        seal_grace=30,
        is_warm_primary=lambda: True,
        epoch=lambda: 3,
        metrics=Metrics(),
        now_ns=lambda: now,
        check_interval=0.01,
        seal_budget=0.0,  # one window per round: deterministic on any host
    )
    asks = refused = 0

    def permit(tier: str) -> tuple[str, str] | None:
        nonlocal asks, refused
        asks += 1
        if asks % REFUSE_EVERY:
            return None
        refused += 1
        return "lease_expiring", "test: the lease renewal ran late"

    remove = install_write_permit(root, permit)
    task = asyncio.create_task(sealer.run())
    try:
        await eventually(
            lambda: len(sealer.sealed) == WINDOWS,
            "every backlog window sealed",
            timeout=90,
            detail=lambda: (sorted(sealer.sealed), asks, refused, sealer.last_error),
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        remove()
        journal.close()
    assert sorted(sealer.sealed) == [T0 + i * WINDOW for i in range(WINDOWS)]
    assert refused > 0  # the refusals really happened along the way
    for i in range(WINDOWS):
        name = f"part-20250901T00{i:02d}00Z.parquet"
        assert list((root / "warm").rglob(name)), name
