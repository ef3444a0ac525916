"""The change feed of a storage root: positions, resync answers, digests and the scrub."""

from __future__ import annotations

import shutil
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cryptorun_daemon.errors import ResyncNeededError, StorageError
from cryptorun_daemon.storage.catalog import Catalog
from cryptorun_daemon.storage.change_feed import ChangeFeed, feed_for, fold
from cryptorun_daemon.storage.layout import parse_partition_dir
from cryptorun_daemon.storage.manifest import read_manifest
from cryptorun_daemon.storage.scrub import scrub_tier
from cryptorun_daemon.storage.seal import seal_partition
from tests.harness.testdata import seed_partitions, write_trade_partition

T0 = datetime(2025, 9, 1, tzinfo=UTC)


def test_every_seal_is_an_entry_and_positions_grow(tmp_path: Path) -> None:
    """Sealing records one ``sealed`` entry per partition, in order, with its manifest."""
    dirs = seed_partitions(tmp_path, start=T0, count=3, rows=20)
    feed = feed_for(tmp_path)
    page = feed.read("warm", after=0, limit=10)
    assert [c.kind for c in page.changes] == ["sealed"] * 3
    assert [c.position for c in page.changes] == sorted(c.position for c in page.changes)
    assert page.head == page.changes[-1].position
    assert page.changes[0].manifest == read_manifest(dirs[0]).to_bytes()
    later = feed.read("warm", after=page.changes[0].position, limit=10)
    assert [c.position for c in later.changes] == [c.position for c in page.changes[1:]]
    assert feed.read("cold", after=0, limit=10).changes == ()


def test_reopened_feed_keeps_its_id_and_positions(tmp_path: Path) -> None:
    """A new connection (a restarted daemon) sees the same feed id and continues the positions."""
    seed_partitions(tmp_path, start=T0, count=2, rows=20)
    first = feed_for(tmp_path)
    feed_id, head = first.feed_id, first.head()
    again = ChangeFeed(tmp_path.resolve())
    assert again.feed_id == feed_id
    assert again.head() == head
    assert again.read("warm", after=head, limit=5, feed_id=feed_id).changes == ()
    again.close()


def test_positions_the_feed_cannot_answer_need_a_resync(tmp_path: Path) -> None:
    """Another incarnation's id, a position beyond the head, or a pruned range: resync needed."""
    seed_partitions(tmp_path, start=T0, count=5, rows=20)
    feed = ChangeFeed(tmp_path.resolve(), retention=2)
    head = feed.head()
    with pytest.raises(ResyncNeededError):
        feed.read("warm", after=0, limit=5, feed_id="another-incarnation")
    with pytest.raises(ResyncNeededError):
        feed.read("warm", after=head + 1, limit=5)
    feed.prune()
    with pytest.raises(ResyncNeededError):
        feed.read("warm", after=1, limit=5)
    kept = feed.read("warm", after=head - 2, limit=5)
    assert [c.position for c in kept.changes] == [head - 1, head]
    assert kept.oldest == head - 1
    feed.close()


def test_day_digest_follows_reseals_and_supersedes(tmp_path: Path) -> None:
    """The day digest is the fold of what is held: a reseal swaps the pair, a removal drops it."""
    dirs = seed_partitions(tmp_path, start=T0, count=2, rows=20)
    feed = feed_for(tmp_path)

    def expected() -> tuple[int, str]:
        held = feed.held("warm", "2025-09-01")
        return len(held), fold((h.partition, h.content_hash) for h in held)

    assert feed.day_digests("warm") == {"2025-09-01": expected()}
    before = feed.day_digests("warm")
    key = parse_partition_dir(dirs[1])
    write_trade_partition(tmp_path, key, rows=30, seed=99, files=2)
    seal_partition(dirs[1], writer_region="eu-central", epoch=1)
    after = feed.day_digests("warm")
    assert after != before
    assert after == {"2025-09-01": expected()}
    assert feed.hour_digests("warm", "2025-09-01")[1] == (
        1,
        fold([(key.relpath, read_manifest(dirs[1]).content_hash)]),
    )
    feed.record_removed(key, "superseded", None, None)
    assert feed.day_digests("warm")["2025-09-01"][0] == 1
    assert feed.day_digests("warm") == {"2025-09-01": expected()}


def test_scrub_records_what_the_disk_says(tmp_path: Path) -> None:
    """A partition copied in behind the feed's back is discovered; a deleted file is lost."""
    staged = tmp_path / "staged"
    root = tmp_path / "root"
    seed_partitions(staged, start=T0, count=2, rows=20)
    shutil.copytree(staged / "warm", root / "warm")
    feed = feed_for(root)
    found = scrub_tier(Catalog(root), feed, "warm")
    assert (found.discovered, found.lost) == (2, 0)
    assert sum(c for c, _ in feed.day_digests("warm").values()) == 2
    assert feed_for(staged).day_digests("warm") == feed.day_digests("warm")
    victim = next((root / "warm").rglob("part-0000.parquet"))
    victim.unlink()
    found = scrub_tier(Catalog(root), feed, "warm")
    assert (found.discovered, found.lost) == (0, 1)
    assert [c.kind for c in feed.read("warm", after=0, limit=10).changes][-1] == "lost"
    assert scrub_tier(Catalog(root), feed, "warm").lost == 0


def test_bulk_import_indexes_like_the_seals_did(tmp_path: Path) -> None:
    """``import_index`` gives the same index and day digests as sealing did, with no entries.

    A tree copied in behind the feed's back and imported in bulk then agrees
    with the scrub (nothing to discover or lose); importing a partition the
    index holds already, or a path that breaks the layout, imports nothing.
    """
    staged = tmp_path / "staged"
    root = tmp_path / "root"
    dirs = seed_partitions(staged, start=T0, count=3, rows=20, symbols=("BTC-USD", "ETH-USD"))
    shutil.copytree(staged / "warm", root / "warm")
    feed = ChangeFeed(root.resolve())
    rows = [(m.partition, m.content_hash, m.epoch) for m in (read_manifest(d) for d in dirs)]
    assert feed.import_index("warm", rows) == len(dirs)
    assert feed.day_digests("warm") == feed_for(staged).day_digests("warm")
    assert feed.held("warm", "2025-09-01", 1) == feed_for(staged).held("warm", "2025-09-01", 1)
    assert feed.head() == 0  # the index only: no feed entries
    found = scrub_tier(Catalog(root), feed, "warm")
    assert (found.discovered, found.lost) == (0, 0)

    digests = feed.day_digests("warm")
    with pytest.raises(StorageError):
        feed.import_index("warm", rows[:1])
    bad = [("trade/venue=kraken/symbol=BTC-USD/date=2025-09-02/hour=24", "x", 1)]
    with pytest.raises(StorageError):
        feed.import_index("warm", bad)
    with pytest.raises(StorageError):
        feed.import_index(
            "warm", [("../../etc/venue=x/symbol=A-B/date=2025-09-02/hour=01", "x", 1)]
        )
    assert feed.day_digests("warm") == digests
    feed.close()


def test_a_scrub_asked_to_stop_records_nothing(tmp_path: Path) -> None:
    """A scrub whose owner asked it to stop (the daemon is shutting down) ends before its
    next partition and records nothing: the partitions it did not reach are not taken for
    lost, and the index keeps every partition it held."""
    seed_partitions(tmp_path, start=T0, count=3, rows=10)
    feed = ChangeFeed(tmp_path)
    head = feed.head()
    stop = threading.Event()
    stop.set()
    with pytest.raises(StorageError, match="stopped"):
        scrub_tier(Catalog(tmp_path), feed, "warm", stop=stop)
    assert feed.head() == head
    assert len(feed.held("warm", T0.date().isoformat())) == 3
