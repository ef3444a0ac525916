"""What a locally ingested feed produces, and the protocol every feed implements.

A feed yields :class:`MarketRecord` values: a dataset name (``trade`` or
``book``) and the record's fields, normalised to the schemas in
``cryptorun_daemon.data.validate.schema``. Feeds never assign ``origin`` or
``seq``: the local hot log stamps those, because local ingestion is
authoritative for the local region.

Timestamps (``ts`` = exchange time, ``ingest_ts`` = local receive time) are
integer nanoseconds since the Unix epoch, UTC.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

Dataset = Literal["trade", "book"]
DATASETS: tuple[Dataset, ...] = ("trade", "book")
Record = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class MarketRecord:
    """One normalised record from a feed, before the hot log stamps origin and seq."""

    dataset: Dataset
    fields: dict[str, Any]


@runtime_checkable
class Feed(Protocol):
    """An async source of normalised market records for one venue.

    Error handling: a feed handles its own transient failures (reconnects,
    resubscribes) and keeps yielding; it raises only for a configuration error
    it cannot recover from. Resource handling: closing the iterator (``aclose``)
    releases every connection the feed holds.
    """

    name: str
    venue: str

    def records(self) -> AsyncIterator[MarketRecord]: ...

    def status(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot for ``/v1/status`` (connection, gaps, errors)."""
        ...


@runtime_checkable
class BatchFeed(Feed, Protocol):
    """A feed that can also yield its records in batches (what the ingest loop prefers).

    A batch is whatever the feed has ready at once (a synthetic burst, one
    exchange message with many levels): the hot log stamps and journals it in
    one go, so per-record async overhead does not set the ingest ceiling.
    ``ingest_lag_seconds`` says how far the feed's output trails its source
    right now (a synthetic feed: behind its time grid); the ingest loop
    publishes it as ``cryptorun_hot_ingest_lag_seconds``.
    """

    def batches(self) -> AsyncIterator[list[MarketRecord]]: ...

    def ingest_lag_seconds(self) -> float: ...
