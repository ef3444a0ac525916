"""``cryptorun read DATASET``: a research read of local storage into a file or the terminal.

The read streams (``Store.stream_plan``): batches go to the output as they are
decoded, so a window larger than memory can be written to Parquet, CSV or
Arrow. A progress bar goes to stderr when stderr is a terminal; a one-line
summary (partitions, tiers, rows read, returned, dropped) always does.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal, TextIO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from cryptorun_daemon.cli.render import table as render_table
from cryptorun_daemon.config import load_config
from cryptorun_daemon.errors import PathRejectedError, UsageError
from cryptorun_daemon.reader.request import ReadRequest
from cryptorun_daemon.reader.store import BatchStream, ReadSummary, open_store

OutputFormat = Literal["parquet", "csv", "arrow", "table"]
FORMATS: Final[tuple[OutputFormat, ...]] = ("parquet", "csv", "arrow", "table")
_BAR_WIDTH: Final = 30
_PROGRESS_AFTER_SECONDS: Final = 0.5  # short reads print no bar at all


def run_read(
    dataset: str,
    *,
    root: str | None,
    config: str | None,
    values: dict[str, list[str]],
    output_format: OutputFormat,
    output: str | None,
    limit: int,
    progress: bool,
    out: TextIO,
    err: TextIO | None = None,
) -> int:
    """Plan, stream into the chosen format, print the summary; returns 0.

    Error handling: :class:`UsageError` (exit 2) for a malformed request, a
    missing root or a binary format aimed at a terminal; read failures
    (:class:`~cryptorun_daemon.errors.ReadError`, schema drift) propagate to
    ``main`` (exit 1). Resource handling: the output file is written in place
    and closed on every path; a failed read leaves what was written so far.
    """
    err = err if err is not None else sys.stderr
    if (root is None) == (config is None):
        raise UsageError("give exactly one of --root PATH or --config PATH")
    storage_root = Path(root) if root is not None else load_config(config or "").storage.root
    try:
        request = ReadRequest.from_strings(dataset, values)
    except PathRejectedError as exc:  # a value that cannot be a path segment: bad usage here
        raise UsageError(str(exc)) from exc
    store = open_store(storage_root)
    plan = store.plan(request)
    bar = _ProgressBar(err) if progress and err.isatty() else None
    stream = store.stream_plan(plan, progress=bar.update if bar is not None else None)
    try:
        if output_format == "table" and output not in (None, "-"):
            with open(str(output), "w", encoding="utf-8") as handle:
                _write_table(stream, limit, handle)
        elif output_format == "table":
            _write_table(stream, limit, out)
        else:
            _write_binary(stream, output_format, output, out)
    finally:
        stream.close()
        if bar is not None:
            bar.finish()
    err.write(summary_line(stream.summary, request) + "\n")
    return 0


def summary_line(summary: ReadSummary, request: ReadRequest) -> str:
    """``read 24 partitions (warm 24) in 24 files; 10000 rows read; … dropped (…)``."""
    tiers = ", ".join(f"{tier} {count}" for tier, count in summary.tiers.items()) or "none"
    parts = [
        f"read {summary.partitions} partitions ({tiers}) in {summary.files} files",
        f"{summary.rows_read} rows read",
        f"{summary.rows_returned} returned",
        f"{summary.rows_dropped} dropped (quarantine={request.quarantine}, "
        f"{summary.rows_flagged} flagged)",
    ]
    skipped = [
        f"{n} {what}"
        for n, what in (
            (summary.unsealed_skipped, "unsealed skipped"),
            (summary.shadowed, "served by an earlier tier"),
            (summary.not_yet_sealed, "not yet sealed at as_of"),
            (len(summary.problems), "unreadable skipped"),
        )
        if n
    ]
    return "; ".join(parts + skipped)


def _write_binary(stream: BatchStream, fmt: OutputFormat, output: str | None, out: TextIO) -> None:
    if output is None or output == "-":
        if fmt != "csv" and out.isatty():
            raise UsageError(f"--format {fmt} is binary; give -o FILE or redirect stdout")
        sink: BinaryIO | _TextBytes = sys.stdout.buffer if fmt != "csv" else _TextBytes(out)
        _write_to(stream, fmt, sink)
        return
    with open(output, "wb") as handle:
        _write_to(stream, fmt, handle)


def _write_to(stream: BatchStream, fmt: OutputFormat, sink: BinaryIO | _TextBytes) -> None:
    schema = stream.schema
    writer: Any
    if fmt == "parquet":
        writer = pq.ParquetWriter(sink, schema, compression="zstd")
    elif fmt == "arrow":
        writer = pa.ipc.new_file(sink, schema)
    else:
        writer = pacsv.CSVWriter(sink, schema)
    with writer:
        for batch in stream:
            writer.write_batch(batch)


def _write_table(stream: BatchStream, limit: int, sink: TextIO) -> None:
    rows: list[list[Any]] = []
    total = 0
    names = stream.schema.names
    for batch in stream:
        total += batch.num_rows
        if len(rows) < limit:
            rows.extend(
                [row[n] for n in names] for row in batch.slice(0, limit - len(rows)).to_pylist()
            )
    sink.write(render_table(names, rows) + "\n")
    if total > len(rows):
        sink.write(f"... {total - len(rows)} more rows (--limit {limit})\n")


class _TextBytes:
    """A binary sink over a text stream (CSV to a ``TextIO`` such as stdout)."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self.closed = False

    def write(self, data: bytes) -> int:
        self._out.write(bytes(data).decode("utf-8"))
        return len(data)

    def flush(self) -> None:
        self._out.flush()


class _ProgressBar:
    """``[#####-----] 12/24 files`` on stderr, redrawn in place; silent for short reads."""

    def __init__(self, err: TextIO) -> None:
        self._err = err
        self._started = time.monotonic()
        self._drawn = False

    def update(self, done: int, total: int) -> None:
        if time.monotonic() - self._started < _PROGRESS_AFTER_SECONDS and done < total:
            return
        filled = _BAR_WIDTH * done // max(total, 1)
        self._err.write(f"\r[{'#' * filled}{'-' * (_BAR_WIDTH - filled)}] {done}/{total} files")
        self._err.flush()
        self._drawn = True

    def finish(self) -> None:
        if self._drawn:
            self._err.write("\n")


def read_values(args: Any) -> dict[str, list[str]]:
    """The request fields of parsed ``cryptorun read`` arguments, as text lists."""
    values: dict[str, list[str]] = {"start": [args.start], "end": [args.end]}
    for name, given in (
        ("venue", args.venue),
        ("symbol", args.symbol),
        ("column", args.column),
        ("tier", args.tier),
    ):
        if given:
            values[name] = list(given)
    for name, single in (
        ("as_of", args.as_of),
        ("quarantine", args.quarantine),
        ("on_drift", args.on_drift),
    ):
        if single is not None:
            values[name] = [single]
    if args.include_unsealed:
        values["include_unsealed"] = ["true"]
    return values
