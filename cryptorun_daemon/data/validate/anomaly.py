"""Price and volume anomalies per venue/symbol: robust z-scores that ignore noise.

Trades are judged on two series — log returns of ``price`` and log ``qty`` —
and books on the log returns of their mid price (best bid + best ask) / 2.
The detector itself (baseline, MAD fallbacks, warm-up, guards, spike versus
level shift) lives in :mod:`cryptorun_daemon.data.validate.robust`; this module
maps records and tables onto it.

A spike is only known once the price comes back, so the per-record form
reports it on the record that reverts it, with ``lag`` pointing back to the
flagged record(s). The batch form reports the flagged rows directly. Values
the schema check rejects (null, NaN/inf, price <= 0, qty <= 0) are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from cryptorun_daemon.config.model import AnomalyConfig
from cryptorun_daemon.data.validate.findings import (
    BatchResult,
    ErrorGroup,
    Record,
    ValidationError,
)
from cryptorun_daemon.data.validate.robust import (
    BASELINE_SAMPLES,
    BPS,
    DetectorParams,
    Event,
    FloatArray,
    SeriesDetector,
    SeriesKind,
)
from cryptorun_daemon.data.validate.schema import is_real
from cryptorun_daemon.data.validate.tables import (
    float_chunks,
    numbers,
    single_value,
    value_ids,
)

Dataset = Literal["trade", "book"]
PRICE_FIELD: Final[dict[str, str]] = {"trade": "price", "book": "mid"}


@dataclass(frozen=True)
class AnomalyParams:
    """``AnomalyConfig`` plus the knobs that have sound defaults and no config key yet.

    ``tick_size`` (0 = unknown) raises the price floor to one tick;
    ``spike_horizon`` is the longest run of outliers still called a spike;
    ``volume_min_ratio`` is how many times the trailing median size a trade
    must be before its size can be an anomaly — ordinary whale trades are
    hundreds of times the median, unit errors are millions;
    ``baseline_samples`` is the most values a baseline is estimated from (see
    :mod:`cryptorun_daemon.data.validate.robust`).
    """

    config: AnomalyConfig = field(default_factory=AnomalyConfig)
    tick_size: float = 0.0
    spike_horizon: int = 3
    flag_level_shifts: bool = False
    volume_min_ratio: float = 1000.0
    check_volume: bool = True
    baseline_samples: int = BASELINE_SAMPLES

    def price(self) -> DetectorParams:
        cfg = self.config
        return DetectorParams(
            window=cfg.window,
            min_samples=cfg.min_samples,
            threshold=cfg.threshold,
            guard=math.log1p(cfg.min_relative_move),
            floor=max(cfg.floor_bps * BPS, 1e-12),
            tick_size=self.tick_size,
            spike_horizon=self.spike_horizon,
            flag_level_shifts=self.flag_level_shifts,
            baseline_samples=self.baseline_samples,
        )

    def volume(self) -> DetectorParams:
        # Only oversized trades: dust trades far below the median are legitimate.
        return replace(
            self.price(),
            guard=math.log(self.volume_min_ratio),
            tick_size=0.0,
            two_sided=False,
        )

    def expected(self) -> str:
        cfg = self.config
        return (
            f"robust z <= {cfg.threshold:g} against the trailing {cfg.window} accepted samples "
            "(or a move below the minimum)"
        )


def _positive_number(value: Any) -> float | None:
    if not is_real(value):
        return None
    number = float(value)
    return number if math.isfinite(number) and number > 0.0 else None


def _mid(record: Record) -> float | None:
    bids, asks = record.get("bids_px"), record.get("asks_px")
    if not isinstance(bids, list | tuple) or not isinstance(asks, list | tuple):
        return None
    if not bids or not asks:
        return None
    bid, ask = _positive_number(bids[0]), _positive_number(asks[0])
    if bid is None or ask is None:
        return None
    return (bid + ask) * 0.5


@dataclass
class _Stream:
    price: SeriesDetector
    volume: SeriesDetector | None
    records: int = 0


class AnomalyChecker:
    """The stateful per-record anomaly check (one detector pair per venue/symbol).

    ``observe`` returns every finding a record settles (a spike of several
    records is settled at once); calling the checker returns the first of
    them, which makes it a :data:`ValidateFn`.

    Resource handling: memory grows with the number of distinct venue/symbol
    pairs (bounded by config), each holding at most ``window`` samples.
    """

    def __init__(self, params: AnomalyParams | None = None, dataset: Dataset = "trade") -> None:
        self.params = params or AnomalyParams()
        self.dataset = dataset
        self._streams: dict[tuple[str, str], _Stream] = {}

    def _stream(self, key: tuple[str, str]) -> _Stream:
        stream = self._streams.get(key)
        if stream is None:
            volume = (
                SeriesDetector(self.params.volume(), "level")
                if self.dataset == "trade" and self.params.check_volume
                else None
            )
            stream = _Stream(SeriesDetector(self.params.price(), "return"), volume)
            self._streams[key] = stream
        return stream

    def observe(self, record: Record) -> list[ValidationError]:
        """Feed one record; every finding it settles, oldest flagged record first."""
        venue, symbol = record.get("venue"), record.get("symbol")
        if not isinstance(venue, str) or not isinstance(symbol, str):
            return []
        stream = self._stream((venue, symbol))
        index = stream.records
        stream.records += 1
        found: list[tuple[str, Event]] = []
        price = _positive_number(record.get("price")) if self.dataset == "trade" else _mid(record)
        if price is not None:
            found += [(PRICE_FIELD[self.dataset], e) for e in stream.price.push(index, price)]
        if stream.volume is not None:
            qty = _positive_number(record.get("qty"))
            if qty is not None:
                found += [("qty", e) for e in stream.volume.push(index, qty)]
        found.sort(key=lambda item: item[1].tag)
        return [
            ValidationError(
                "anomaly", name, e.raw, self.params.expected(), e.reason, lag=index - e.tag
            )
            for name, e in found
        ]

    def __call__(self, record: Record) -> ValidationError | None:
        errors = self.observe(record)
        return errors[0] if errors else None


def anomaly_check(
    cfg: AnomalyConfig | AnomalyParams | None = None, *, dataset: Dataset = "trade"
) -> AnomalyChecker:
    """A fresh stateful per-record anomaly check (see :class:`AnomalyChecker`)."""
    params = cfg if isinstance(cfg, AnomalyParams) else AnomalyParams(cfg or AnomalyConfig())
    return AnomalyChecker(params, dataset)


# --- batch ----------------------------------------------------------------------------


def _stream_rows(table: pa.Table) -> Iterator[npt.NDArray[np.int64]]:
    """Row indices of each venue/symbol stream, in table order; null keys are skipped."""
    symbol, symbols = value_ids(table.column("symbol"))
    if single_value(table.column("venue")):
        streams, keys, nulls = symbols, symbol, symbol < 0
    else:
        venue, venues = value_ids(table.column("venue"))
        streams = venues * symbols
        keys = venue.astype(np.int64) * symbols + symbol
        nulls = (venue < 0) | (symbol < 0)
    if nulls.any():
        keys = np.where(nulls, streams, keys)  # one extra bucket, dropped below
    # Few distinct keys fit 8 or 16 bits, where numpy's stable sort is a radix
    # sort: about 14x (uint8) or 8x (uint16) faster than its int64 merge sort.
    if streams < 1 << 8:
        keys = keys.astype(np.uint8)
    elif streams < 1 << 16:
        keys = keys.astype(np.uint16)
    order = np.argsort(keys, kind="stable")
    ends = np.cumsum(np.bincount(keys, minlength=streams + 1))
    for start, stop in zip(
        [0, *ends[: streams - 1].tolist()], ends[:streams].tolist(), strict=True
    ):
        if stop > start:
            yield order[start:stop].astype(np.int64, copy=False)


def _price_chunks(table: pa.Table, dataset: Dataset) -> list[FloatArray]:
    """The series judged as price, as float64 pieces (nulls as NaN) in row order."""
    if dataset == "trade":
        return float_chunks(table.column("price"))
    out = np.full(table.num_rows, np.nan)
    bids, asks = (table.column(name).combine_chunks() for name in ("bids_px", "asks_px"))
    best = []
    for lists in (bids, asks):
        offsets = np.asarray(lists.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
        values = numbers(lists.values)
        has = (offsets[1:] > offsets[:-1]) & np.asarray(
            lists.is_valid().to_numpy(zero_copy_only=False), dtype=np.bool_
        )
        first = np.full(table.num_rows, np.nan)
        first[has] = values[offsets[:-1][has]]
        best.append(first)
    bid, ask = best
    ok = np.isfinite(bid) & (bid > 0) & np.isfinite(ask) & (ask > 0)
    out[ok] = (bid[ok] + ask[ok]) * 0.5
    return [out]


def _all_usable(values: FloatArray) -> bool:
    """True when every value is positive and finite (two reductions; NaN fails both)."""
    return bool(values.min() > 0.0) and bool(values.max() < np.inf)


def _run_usable(
    detector: SeriesDetector, values: FloatArray, rows: npt.NDArray[np.int64] | None, offset: int
) -> list[Event]:
    """Feed the usable values (positive, finite: the rest is the schema check's) in order."""
    if not values.size:
        return []
    if _all_usable(values):
        return detector.run(values, rows, offset=offset)
    picked = np.flatnonzero(np.isfinite(values) & (values > 0.0))
    tags = picked + offset if rows is None else rows[picked]
    return detector.run(values[picked], tags)


def _series_events(
    chunks: list[FloatArray],
    streams: list[npt.NDArray[np.int64]] | None,
    params: DetectorParams,
    kind: SeriesKind,
) -> list[Event]:
    """Events of one series; ``streams`` is ``None`` when the table is one stream."""
    if streams is None:
        # A partition (one venue, one symbol): one detector walks the column's
        # chunks in place, no copy, no gather.
        detector = SeriesDetector(params, kind)
        events: list[Event] = []
        offset = 0
        for chunk in chunks:
            events += _run_usable(detector, chunk, None, offset)
            offset += len(chunk)
        return events
    if not streams:
        return []
    values = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    events = []
    for rows in streams:
        events += _run_usable(SeriesDetector(params, kind), values[rows], rows, 0)
    return events


def anomaly_batch(
    table: pa.Table,
    cfg: AnomalyConfig | AnomalyParams | None = None,
    *,
    dataset: Dataset = "trade",
) -> BatchResult:
    """Anomalies in a table, each venue/symbol stream judged from a fresh state.

    Behaviour: identical flags to feeding the rows in order to a fresh
    :func:`anomaly_check` (a run still open at the end of the table is not
    judged). Groups: ``(anomaly, price|mid, spike)``, ``(anomaly, qty, spike)``
    and, when enabled, the ``level_shift`` variants.
    """
    params = cfg if isinstance(cfg, AnomalyParams) else AnomalyParams(cfg or AnomalyConfig())
    n = table.num_rows
    one_stream = single_value(table.column("venue")) and single_value(table.column("symbol"))
    streams = None if one_stream else list(_stream_rows(table)) if n else []
    found: list[tuple[str, Event]] = []
    price_field = PRICE_FIELD[dataset]
    found += [
        (price_field, e)
        for e in _series_events(_price_chunks(table, dataset), streams, params.price(), "return")
    ]
    if dataset == "trade" and params.check_volume:
        found += [
            ("qty", e)
            for e in _series_events(
                float_chunks(table.column("qty")), streams, params.volume(), "level"
            )
        ]
    mask = np.zeros(n, dtype=np.bool_)
    groups: list[ErrorGroup] = []
    for name in (price_field, "qty"):
        for reason in ("spike", "level_shift"):
            hits = sorted(
                (e for f, e in found if f == name and e.reason == reason), key=lambda e: e.tag
            )
            if not hits:
                continue
            rows = np.array([e.tag for e in hits], dtype=np.int64)
            mask[rows] = True
            examples = tuple(
                (e.tag, ValidationError("anomaly", name, e.raw, params.expected(), e.reason))
                for e in hits[:5]
            )
            groups.append(ErrorGroup("anomaly", name, reason, params.expected(), rows, examples))
    return BatchResult(mask=mask, groups=tuple(groups))
