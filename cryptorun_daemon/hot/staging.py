"""The sealer's staging area: rows of windows not sealed yet, on disk, named by journal range.

The streaming sealer (``hot/sealer.py``) reads each journal byte once. Rows of
a window that is not sealed yet go here, batch by batch, instead of staying in
memory until the window closes::

    {root}/_state/staging/<region>/window=<start ns>/<warm partition path>/<range>.arrow

``<warm partition path>`` is the partition the rows will be sealed into
(``warm/trade/venue=…/symbol=…/date=…/hour=…``) and ``<range>`` the journal
range the batch was read from, ``<segment>.<offset>-<segment>.<offset>``
(start inclusive, end exclusive). Each file is an uncompressed Arrow IPC file
with the dataset's warm columns plus ``_ts`` (the row's window timestamp) and
``_ingest_ns`` (the hot log's ingest stamp): uncompressed so the sealer can
memory-map it instead of reading it into the heap. ``_state/`` is never part of
the catalog, so readers never see staged rows.

Redo safety: a file is committed (fsync, rename, fsync of the directory) before
the sealer saves the read position past its range, and every file whose range
*starts* at or after the saved position belongs to a round that did not save
(:meth:`StagingArea.truncate` removes them, and the round that follows stages
those bytes again). Files of a sealed window are removed only after the state
that records the seal is saved.

Blocking (file I/O): call from a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyarrow import ipc

from cryptorun_daemon.data.validate.schema import arrow_schema
from cryptorun_daemon.hot.durable import fsync_dir, make_durable_dirs
from cryptorun_daemon.hot.partition_writer import Row
from cryptorun_daemon.storage.layout import PARTIAL_SUFFIX

Position = tuple[int, int]  # (segment index, byte offset)
STAGING_DIR = "staging"
WINDOW_PREFIX = "window="
SUFFIX = ".arrow"
TS_COLUMN = "_ts"
INGEST_COLUMN = "_ingest_ns"


def staging_schema(dataset: str) -> pa.Schema:
    """The warm schema of ``dataset`` plus the two columns the sealer selects by."""
    return (
        arrow_schema(dataset)
        .append(pa.field(TS_COLUMN, pa.int64(), nullable=False))
        .append(pa.field(INGEST_COLUMN, pa.int64(), nullable=False))
    )


def rows_table(rows: list[Row], schema: pa.Schema) -> pa.Table:
    """``rows`` as a table of ``schema``, built column by column.

    The same table ``pa.Table.from_pylist`` makes from one dict per row
    (``fields`` with ``origin``, ``seq``, ``_ts`` and ``_ingest_ns`` set from
    the row; a missing field is null, an unknown one ignored), without the
    per-row dicts: one list per column converted in one call.

    Error handling: ``pa.ArrowInvalid``/``pa.ArrowTypeError`` for a value the
    column cannot hold, as ``from_pylist`` raises.
    """
    columns = []
    for field in schema:
        name = field.name
        values: list[Any]
        if name == "origin":
            values = [row.origin for row in rows]
        elif name == "seq":
            values = [row.seq for row in rows]
        elif name == TS_COLUMN:
            values = [row.ts for row in rows]
        elif name == INGEST_COLUMN:
            values = [row.ingest_ns for row in rows]
        else:
            values = [row.fields.get(name) for row in rows]
        columns.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def range_name(start: Position, end: Position) -> str:
    """``<segment>.<offset>-<segment>.<offset>.arrow``: fixed width, so names sort by range."""
    return f"{start[0]:010d}.{start[1]:012d}-{end[0]:010d}.{end[1]:012d}{SUFFIX}"


def range_start(name: str) -> Position | None:
    """The start of the range a staged file's name gives (None for anything else)."""
    if not name.endswith(SUFFIX):
        return None
    head = name[: -len(SUFFIX)].split("-", 1)[0]
    segment, _, offset = head.partition(".")
    if not (segment.isdigit() and offset.isdigit()):
        return None
    return int(segment), int(offset)


class StagingArea:
    """Owns ``{root}/_state/staging``: stage batches, list, truncate and drop windows.

    Resource handling: holds no open files between calls; a staged file is
    written under a hidden ``.partial`` name and renamed into place.
    """

    def __init__(self, root: Path, region: str) -> None:
        self.root = root
        # Per region, so regions that share a storage root never mix staged rows.
        self.directory = root / "_state" / STAGING_DIR / region

    def window_dir(self, window: int) -> Path:
        return self.directory / f"{WINDOW_PREFIX}{window}"

    def stage(
        self,
        groups: dict[tuple[int, Path], list[Row]],
        start: Position,
        end: Position,
    ) -> int:
        """Write each (window, warm partition) group of one batch; returns the rows staged.

        Every file and every new directory is durable when this returns.
        """
        tables = {
            key: rows_table(rows, staging_schema(rows[0].dataset)) for key, rows in groups.items()
        }
        return self.stage_tables(tables, start, end)

    def stage_tables(
        self, groups: dict[tuple[int, Path], pa.Table], start: Position, end: Position
    ) -> int:
        """:meth:`stage` for groups already in staging tables (``hot/journal_columns.py``)."""
        name = range_name(start, end)
        touched: set[Path] = set()
        staged = 0
        for (window, partition), table in sorted(groups.items(), key=lambda item: item[0]):
            target = self.window_dir(window) / partition.relative_to(self.root)
            make_durable_dirs(target)
            partial = target / f".{name}{PARTIAL_SUFFIX}"
            with pa.OSFile(str(partial), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
            fd = os.open(partial, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(partial, target / name)
            touched.add(target)
            staged += table.num_rows
        for directory in touched:
            fsync_dir(directory)
        return staged

    def windows(self) -> list[int]:
        """Windows with a staging directory, oldest first."""
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            text = entry.name.removeprefix(WINDOW_PREFIX)
            if entry.name.startswith(WINDOW_PREFIX) and text.lstrip("-").isdigit():
                found.append(int(text))
        return sorted(found)

    def partitions(self, window: int) -> dict[Path, list[Path]]:
        """Warm partition directory → its staged files (in journal order) for ``window``."""
        base = self.window_dir(window)
        found: dict[Path, list[Path]] = {}
        for path in sorted(base.rglob(f"*{SUFFIX}")):
            if range_start(path.name) is None:
                continue
            partition = self.root / path.parent.relative_to(base)
            found.setdefault(partition, []).append(path)
        return found

    def truncate(self, position: Position) -> int:
        """Remove staged files whose range starts at or after ``position``, and partials.

        Those are the work of a round that never saved its read position; the
        next round reads their bytes again. Returns the number of files removed.
        """
        removed = 0
        if not self.directory.is_dir():
            return 0
        for path in _files(self.directory):
            start = range_start(path.name)
            if path.name.endswith(PARTIAL_SUFFIX) or (start is not None and start >= position):
                path.unlink()
                removed += 1
        if removed:
            _remove_empty_dirs(self.directory)
        return removed

    def drop(self, windows: Iterable[int]) -> list[int]:
        """Remove the staging of ``windows`` (sealed, state saved); returns those removed."""
        dropped = []
        for window in windows:
            path = self.window_dir(window)
            if path.exists():
                shutil.rmtree(path)
                dropped.append(window)
        if dropped:
            fsync_dir(self.directory)
        return dropped


def _files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()]


def _remove_empty_dirs(directory: Path) -> None:
    for path in sorted((p for p in directory.rglob("*") if p.is_dir()), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir()  # only succeeds when empty
