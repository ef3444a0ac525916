"""Hot → warm sealing: closed windows of the hot journal become sealed warm partitions.

Windows are ``hot.partition_length`` long (an hour by default; the demo uses
minutes) and aligned to the Unix epoch; a window is *closed* ``hot.seal_grace``
after its end. Only the region that is warm primary writes: each closed window
becomes ``part-<window start>.parquet`` in the contract layout (one file per
dataset, venue, symbol and hour), and the hour partition is (re-)sealed through
``storage.seal.seal_partition``. Records that reach the journal after their
window was sealed are *late*: the next round writes them to a
``late-fill-<round>.parquet`` file in their own hour partition, re-seals it and
counts them in ``cryptorun_hot_late_records_total`` — they are never dropped.

A replica writes nothing; it treats a window as sealed once warm replication
has delivered every partition it touches. Journal segments are deleted only
when every record in them belongs to a sealed window.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from cryptorun_daemon.errors import FencedError
from cryptorun_daemon.hot import partition_writer as pw
from cryptorun_daemon.hot.authority import SourceAuthority
from cryptorun_daemon.hot.journal import Journal, Segment, iter_lines
from cryptorun_daemon.hot.record import decode_line
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.storage.atomic import atomic_write_bytes
from cryptorun_daemon.storage.layout import SUCCESS_MARKER
from cryptorun_daemon.timefmt import format_compact, format_rfc3339, utc_from_ns

log = structlog.get_logger("cryptorun.hot.sealer")
Position = tuple[int, int]  # (segment index, byte offset)
STATE_KEEP_NS = 7 * 86400 * 10**9


@dataclass
class RoundResult:
    """What one sealing round did (also the sealer's ``last_round`` status)."""

    at_ns: int
    primary: bool
    windows_sealed: list[int] = field(default_factory=list)
    partitions: list[str] = field(default_factory=list)
    rows: int = 0
    late_rows: int = 0
    deletable_segments: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "at": _iso(self.at_ns),
            "primary": self.primary,
            "windows_sealed": [_iso(w) for w in self.windows_sealed],
            "partitions": self.partitions,
            "rows": self.rows,
            "late_rows": self.late_rows,
            "segments_deleted": self.deletable_segments,
        }


class HotSealer:
    """Schedules sealing rounds and keeps the sealed-window state on disk.

    Error handling: a failing round (disk full, unreadable segment) is
    logged, kept in ``last_error`` and retried at the next tick; nothing is
    deleted from the journal unless the round succeeded. Resource handling:
    Parquet and hashing run in a worker thread; state is written atomically.
    """

    def __init__(
        self,
        *,
        region: str,
        root: Path,
        journal: Journal,
        authority: SourceAuthority,
        partition_length: float,
        seal_grace: float,
        is_warm_primary: Callable[[], bool],
        epoch: Callable[[], int],
        metrics: Metrics,
        now_ns: Callable[[], int] = time.time_ns,
        check_interval: float = 1.0,
    ) -> None:
        self.region = region
        self.root = root
        self.journal = journal
        self.authority = authority
        self.length_ns = int(partition_length * 1e9)
        self.grace_ns = int(seal_grace * 1e9)
        self.is_warm_primary = is_warm_primary
        self.epoch = epoch
        self.metrics = metrics
        self.now_ns = now_ns
        self.check_interval = check_interval
        self.state_path = root / "_state" / "hot" / "sealer.json"
        self.sealed: dict[int, Position] = {}
        self.late_through: Position = (0, 0)
        self.late_total = 0
        self.rounds = 0
        self.last_round: RoundResult | None = None
        self.last_error: str | None = None
        self._late = metrics.hot_late_records_total.labels(region=region)
        self._load()

    # ----------------------------------------------------------------- state
    def _load(self) -> None:
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        self.sealed = {int(k): (int(v[0]), int(v[1])) for k, v in data["sealed"].items()}
        self.late_through = (int(data["late_through"][0]), int(data["late_through"][1]))
        self.late_total = int(data.get("late_total", 0))

    def _save(self, now: int, late_total: int) -> None:
        self.sealed = {w: p for w, p in self.sealed.items() if w >= now - STATE_KEEP_NS}
        body = {
            "sealed": {str(w): list(p) for w, p in sorted(self.sealed.items())},
            "late_through": list(self.late_through),
            "late_total": late_total,
        }
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.state_path, json.dumps(body, indent=1).encode())

    def closed_limit(self, now: int) -> int:
        """Windows ending at or before this instant are closed."""
        return now - self.grace_ns

    # ------------------------------------------------------------------ loop
    async def run(self) -> None:
        """Run a round whenever another window has closed (and once at start).

        Error handling: see the class docstring. Resource handling: owns no
        open files between rounds.
        """
        done_through = -1
        while True:
            now = self.now_ns()
            boundary = self.closed_limit(now) // self.length_ns
            if boundary != done_through:
                try:
                    await self.round(now)
                    done_through = boundary
                    self.last_error = None
                except Exception as exc:  # retried next tick; the journal is untouched
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.error("hot sealing round failed", exc_info=True)
            await asyncio.sleep(self.check_interval)

    async def round(self, now: int | None = None) -> RoundResult:
        """One sealing round over everything journaled so far."""
        now = self.now_ns() if now is None else now
        position = self.journal.position()
        segments = self.journal.segments()
        primary, epoch = self.is_warm_primary(), self.epoch()
        try:
            result = await asyncio.to_thread(self._round, now, position, segments, primary, epoch)
        except FencedError:
            # The storage fence refused the seal (primacy lost between the role
            # check and the write): counted, and the round is retried as usual.
            self.metrics.fenced_total.labels(tier="warm", operation="seal").inc()
            raise
        for index in result.deletable_segments:
            self.journal.delete_segment(index)
        self.late_total += result.late_rows
        self._late.inc(result.late_rows)
        self.rounds += 1
        self.last_round = result
        if result.windows_sealed or result.late_rows:
            log.info("hot sealing round", **result.to_json())
        return result

    # ---------------------------------------------------------------- blocking
    def _round(
        self, now: int, position: Position, segments: list[Segment], primary: bool, epoch: int
    ) -> RoundResult:
        result = RoundResult(at_ns=now, primary=primary)
        length, limit = self.length_ns, self.closed_limit(now)
        to_seal: dict[int, list[pw.Row]] = defaultdict(list)
        late: list[pw.Row] = []
        still_open: set[int] = set()
        for segment in segments:
            if segment.index > position[0]:
                continue
            stop = position[1] if segment.index == position[0] else None
            for end, line in iter_lines(segment.path, stop=stop):
                if line.startswith(b'{"ctl"'):
                    continue
                body = decode_line(line)
                row = pw.Row(body["o"], body["s"], body["i"], body["d"], body["f"])
                window = row.ts // length * length
                here = (segment.index, end)
                sealed_at = self.sealed.get(window)
                if sealed_at is not None:
                    if here > sealed_at and here > self.late_through:
                        late.append(row)
                elif window + length <= limit:
                    to_seal[window].append(row)
                else:
                    still_open.add(segment.index)
        for window in sorted(to_seal):
            if primary:
                self._seal_window(window, to_seal[window], epoch, result)
            elif not self._replicated(to_seal[window]):
                # A replica waits for warm replication before forgetting its copy.
                still_open.update(s.index for s in segments)
                continue
            self.sealed[window] = position
            result.windows_sealed.append(window)
        if primary and late:
            self._late_fill(late, now, epoch, result)
        self.late_through = position
        # ``late_total`` and the counter move together on the event loop (in
        # ``round``), so nobody observes one ahead of the other.
        self._save(now, self.late_total + result.late_rows)
        result.deletable_segments = [
            s.index for s in segments if s.index < position[0] and s.index not in still_open
        ]
        return result

    def _groups(self, rows: list[pw.Row]) -> dict[Path, list[pw.Row]]:
        groups: dict[Path, list[pw.Row]] = defaultdict(list)
        for row in rows:
            directory = pw.partition_dir(self.root, row.dataset, row.venue, row.symbol, row.ts)
            groups[directory].append(row)
        return groups

    def _replicated(self, rows: list[pw.Row]) -> bool:
        return all((d / SUCCESS_MARKER).is_file() for d in self._groups(rows))

    def _seal_window(
        self, window: int, rows: list[pw.Row], epoch: int, result: RoundResult
    ) -> None:
        name = f"part-{_compact(window)}.parquet"
        for directory, group in sorted(self._groups(rows).items()):
            chosen = pw.select_rows(group, self.authority.source_at, self.authority.rank)
            if not chosen:
                continue
            result.rows += pw.write_file(directory, name, chosen)
            pw.seal(
                directory,
                writer_region=self.region,
                epoch=epoch,
                new_sources=pw.source_summary(chosen),
            )
            result.partitions.append(str(directory.relative_to(self.root)))

    def _late_fill(self, rows: list[pw.Row], now: int, epoch: int, result: RoundResult) -> None:
        name = f"late-fill-{_compact(now)}.parquet"
        for directory, group in sorted(self._groups(rows).items()):
            fresh = group
            if group[0].dataset == "trade" and directory.is_dir():
                known = pw.existing_trade_ids(directory)
                fresh = [r for r in group if r.fields.get("trade_id") not in known]
            chosen = pw.select_rows(fresh, self.authority.source_at, self.authority.rank)
            if not chosen:
                continue
            pw.write_file(directory, name, chosen)
            sources = [{**s, "rows": 0, "late_rows": s["rows"]} for s in pw.source_summary(chosen)]
            pw.seal(directory, writer_region=self.region, epoch=epoch, new_sources=sources)
            result.late_rows += len(chosen)
            result.partitions.append(str(directory.relative_to(self.root)))

    def status(self) -> dict[str, Any]:
        return {
            "partition_length_seconds": self.length_ns / 1e9,
            "seal_grace_seconds": self.grace_ns / 1e9,
            "primary": self.is_warm_primary(),
            "rounds": self.rounds,
            "windows_sealed": len(self.sealed),
            "last_sealed_window": _iso(max(self.sealed)) if self.sealed else None,
            "late_records": self.late_total,
            "last_round": self.last_round.to_json() if self.last_round else None,
            "last_error": self.last_error,
        }


def _iso(ns: int) -> str:
    return format_rfc3339(utc_from_ns(ns), precision="seconds")


def _compact(ns: int) -> str:
    return format_compact(utc_from_ns(ns), precision="seconds")
