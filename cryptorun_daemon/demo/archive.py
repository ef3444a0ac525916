"""``cryptorun demo --object-store``: yesterday's cold partitions, archived as an archiver would.

Cold partitions are daily: the day's partition can be sealed (and is
replicated) only once the day is over, so a minutes-long demo never produces
one from its live feed. What an operator does instead is run an archiver that
writes a completed day's partition directories under the primary's
``storage.root`` and seals them through ``POST /v1/partitions/seal``
(docs/OPERATIONS.md); this module is the demo's archiver. Its data is
**simulated**: the same :class:`SimulatedMarket` the demo's local Kraken
server publishes (same instruments), stepped once every
:data:`TICK_SECONDS` across yesterday (UTC), each trade normalised by the
Kraken connector's own ``trade_record`` and written by the hot sealer's
``write_file`` (same schema, per-file source summary). Point in time: only
trades stamped inside ``[day, day + 1 day)`` are written; nothing at or after
the window's end.

From the seal on, everything is the product's normal path: the seal endpoint
stamps the tier's epoch through the storage fence and appends to the change
feed, the primary's ``object_store:cold`` worker commits the partition into
its bucket, the replica's cold link pulls it and its worker copies it into
the replica's bucket.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from time import monotonic, sleep
from typing import Final

from cryptorun_daemon.hot.partition_writer import Row, write_file
from cryptorun_daemon.ingest.kraken.messages import Trade
from cryptorun_daemon.ingest.kraken.normalise import trade_record
from cryptorun_daemon.ingest.kraken.simulator import DEFAULT_INSTRUMENTS, SimulatedMarket
from cryptorun_daemon.storage.layout import SUCCESS_MARKER, PartitionKey, symbol_segment
from cryptorun_daemon.timefmt import format_rfc3339

VENUE: Final = "kraken"
#: One simulated market step every this many seconds of the archived day.
TICK_SECONDS: Final = 30
SEED: Final = 20_250_101
FILE_NAME: Final = "part-0000.parquet"


def archive_day_key(day: date, symbol: str) -> PartitionKey:
    """The cold partition of ``symbol``'s trades on ``day``."""
    return PartitionKey(
        day=day,
        hour=None,
        tier="cold",
        dataset="trade",
        venue=VENUE,
        symbol=symbol_segment(symbol),
    )


def simulated_day(day: date, symbol: str, *, origin: str) -> list[Row]:
    """The simulated trades of ``symbol`` inside ``day`` (UTC), as rows for the writer."""
    market = SimulatedMarket(DEFAULT_INSTRUMENTS[symbol], seed=SEED + day.toordinal())
    start = datetime.combine(day, time(), tzinfo=UTC)
    end = start + timedelta(days=1)
    rows: list[Row] = []
    moment = start
    while moment < end:  # the window's end itself is never read
        market.step()
        for printed in market.trades(format_rfc3339(moment, precision="microseconds")):
            trade = Trade(
                symbol=str(printed["symbol"]),
                side=printed["side"],
                price=printed["price"],
                qty=printed["qty"],
                trade_id=int(printed["trade_id"]),
                timestamp=str(printed["timestamp"]),
                ord_type=printed["ord_type"],
            )
            ts = int(moment.timestamp()) * 1_000_000_000
            record = trade_record(trade, venue=VENUE, ingest_ts=ts)
            rows.append(Row(origin, len(rows) + 1, ts, record.dataset, record.fields))
        moment += timedelta(seconds=TICK_SECONDS)
    return rows


def write_archive(
    root: Path, day: date, symbols: tuple[str, ...], *, origin: str
) -> list[PartitionKey]:
    """Write ``day``'s cold partition directories under ``root`` (unsealed); return their keys.

    A partition already sealed there (a reused demo directory) is left as it is.
    Blocking (Parquet I/O).
    """
    keys: list[PartitionKey] = []
    for symbol in symbols:
        key = archive_day_key(day, symbol)
        directory = key.directory(root)
        if not (directory / SUCCESS_MARKER).is_file():
            directory.mkdir(parents=True, exist_ok=True)
            write_file(directory, FILE_NAME, simulated_day(day, symbol, origin=origin))
        keys.append(key)
    return keys


def seal_through_api(
    seal: Callable[[PartitionKey], None],
    keys: list[PartitionKey],
    *,
    timeout: float,
    stop: Callable[[], bool],
) -> list[PartitionKey]:
    """Seal each of ``keys`` with ``seal`` (``POST /v1/partitions/seal``); return the sealed.

    The endpoint answers 503 until the regions have confirmed their roles with
    each other after start-up, so each seal is retried every second until
    ``timeout``. Error handling: the last ``OSError`` is raised if a partition
    is still refused at the deadline.
    """
    sealed: list[PartitionKey] = []
    deadline = monotonic() + timeout
    for key in keys:
        while True:
            try:
                seal(key)
            except OSError:
                if monotonic() >= deadline or stop():
                    raise
                sleep(1.0)
                continue
            sealed.append(key)
            break
    return sealed
