"""The research reader's facade: ``open_store(root).read(...)`` and ``.batches(...)``.

A read is planned first — partitions chosen (:mod:`.selection`), every data
file's schema read from its footer and unified (:mod:`.unify`), the output
schema fixed with its provenance — and then executed, either into one
:class:`pyarrow.Table` (``read``: files decoded in parallel) or as a stream of
record batches (``batches``: one file at a time, one row group at a time, so
memory stays bounded by the largest row group whatever the window).

Every returned schema carries ``cryptorun.read`` metadata: the request, and
per part its tier, partition, version (``live``, ``unsealed`` or
``_superseded/…``), manifest content hash, seal time, writer region and
epoch; ``read`` adds each part's rows read, returned and flagged.

Order: by ``ts``. Parts are read oldest first; the files of parts whose
spans overlap (several markets in one hour, a late-fill file, a cold day
beside another market's hours) are merged by ``ts`` (:mod:`.ordering`), one
batch per file in memory. Every ``symbol`` value is in the canonical
``BTC-USD`` form (:mod:`.symbols`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq

from cryptorun_daemon.errors import ReadError, UsageError
from cryptorun_daemon.reader.ordering import ORDER_COLUMN, merge_by_time, slots
from cryptorun_daemon.reader.quarantine import (
    FLAG_FIELDS,
    NO_FLAGS,
    FileFlags,
    apply_flags,
    sidecar_flags,
)
from cryptorun_daemon.reader.request import ReadRequest
from cryptorun_daemon.reader.selection import Selection, select_parts
from cryptorun_daemon.reader.symbols import (
    SYMBOL_COLUMN,
    canonical_symbol_column,
    constant_symbol_array,
    file_holds_only,
)
from cryptorun_daemon.reader.unify import conform, unify_schemas

METADATA_KEY: Final = b"cryptorun.read"
DEFAULT_BATCH_ROWS: Final = 65_536

Progress = Callable[[int, int], None]  # parts done, parts total


@dataclass
class ReadSummary:
    """What a read did: the contract of ``cryptorun read``'s summary line."""

    partitions: int = 0
    files: int = 0
    rows_read: int = 0
    rows_returned: int = 0
    rows_flagged: int = 0
    rows_dropped: int = 0
    tiers: dict[str, int] = field(default_factory=dict)
    unsealed_skipped: int = 0
    shadowed: int = 0
    not_yet_sealed: int = 0
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class FileTask:
    """One data file of a part, with what it needs to be read into the output schema."""

    part_index: int
    path: Path
    columns: tuple[str, ...]  # to decode from this file
    flags: FileFlags
    # The partition's market when the footer proves the column holds only it:
    # the column is then built from this instead of decoded (see symbols.py).
    symbol: str | None = None


@dataclass
class ReadPlan:
    """A planned read: the chosen parts, the output schema, the file tasks in order."""

    request: ReadRequest
    selection: Selection
    schema: pa.Schema  # the output, with provenance metadata
    tasks: list[FileTask]
    # What decoded batches are conformed to: the output's data columns, plus
    # ``ts`` when the output leaves it out but time order needs it.
    work_schema: pa.Schema
    # Groups of task indices merged by ``ts`` (see ordering.py); one task per
    # group when the files' time spans do not overlap.
    slots: list[list[int]]

    def summary(self) -> ReadSummary:
        s = self.selection
        return ReadSummary(
            partitions=len(s.parts),
            files=len(self.tasks),
            tiers=s.tiers_used(),
            unsealed_skipped=s.unsealed_skipped,
            shadowed=s.shadowed,
            not_yet_sealed=s.not_yet_sealed,
            problems=list(s.problems),
        )


class BatchStream:
    """Record batches of a read, in order, produced lazily; iterate once.

    ``schema`` (with provenance) is known before the first batch;
    ``summary`` is complete once the stream is exhausted. Resource handling:
    Parquet files are open only while their slot is being merged (one file
    at a time when spans do not overlap), each holding one row group and one
    batch in memory; all are closed as the stream moves on or when
    :meth:`close` is called (also by garbage collection of the generator).
    """

    def __init__(self, store: Store, plan: ReadPlan, progress: Progress | None) -> None:
        self.plan = plan
        self.schema = plan.schema
        self.summary = plan.summary()
        self._iterator = store._stream(plan, self.summary, progress)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        return self._iterator

    def close(self) -> None:
        self._iterator.close()  # type: ignore[attr-defined]  # a generator


class Store:
    """Reads one storage root (``{root}/{tier}/{dataset}/…``) by the research rules.

    ``read`` and ``batches`` take the arguments of :meth:`ReadRequest.build`.
    Blocking: call from a worker thread in async code. Error handling:
    :class:`~cryptorun_daemon.errors.UsageError`/``PathRejectedError`` for a
    malformed request (before anything is read),
    :class:`~cryptorun_daemon.errors.SchemaDriftError` for schemas that cannot
    be unified, :class:`~cryptorun_daemon.errors.ReadError` for a partition
    that cannot be read as its manifest says.
    """

    def __init__(
        self, root: Path, *, batch_rows: int = DEFAULT_BATCH_ROWS, threads: int | None = None
    ) -> None:
        self.root = root
        self.batch_rows = batch_rows
        self.threads = threads if threads is not None else min(8, os.cpu_count() or 1)

    # --- planning ----------------------------------------------------------------

    def plan(self, request: ReadRequest) -> ReadPlan:
        """Choose parts, read file footers, unify schemas, fix the output schema."""
        selection = select_parts(self.root, request)
        schemas: list[pa.Schema] = []
        file_schemas: list[tuple[int, Path, pa.Schema, bool]] = []
        for index, part in enumerate(selection.parts):
            for path in part.files:
                try:
                    metadata = pq.read_metadata(path)
                    schema = metadata.schema.to_arrow_schema()
                except (OSError, pa.ArrowException) as exc:
                    raise ReadError(
                        f"{part.key}: {path.name} is not readable Parquet: {exc}"
                    ) from exc
                schemas.append(schema)
                constant = file_holds_only(metadata, part.key.symbol)
                file_schemas.append((index, path, schema, constant))
        unified = unify_schemas(schemas, request.on_drift)
        # Time order needs ``ts`` in every file (a drifted file without it cannot be placed).
        ordered = all(s.get_field_index(ORDER_COLUMN) >= 0 for s in schemas) and bool(schemas)
        order_field = unified.field(ORDER_COLUMN) if ordered else None
        if request.columns is not None:
            missing = [c for c in request.columns if unified.get_field_index(c) < 0]
            if missing and selection.parts:
                raise UsageError(f"no such column(s) in {request.dataset}: {', '.join(missing)}")
            unified = pa.schema([unified.field(c) for c in request.columns if c not in missing])
        flags_by_folder: dict[Path, dict[str, FileFlags]] = {}
        tasks = []
        for index, path, schema, constant in file_schemas:
            folder_flags = flags_by_folder.get(path.parent)
            if folder_flags is None:
                folder_flags = flags_by_folder[path.parent] = sidecar_flags(path.parent)
            wanted = request.columns if request.columns is not None else tuple(schema.names)
            if ordered and ORDER_COLUMN not in wanted:
                wanted = (*wanted, ORDER_COLUMN)
            present = tuple(c for c in wanted if schema.get_field_index(c) >= 0)
            symbol = None
            # (At least one column is always decoded: it gives the batches their length.)
            if constant and SYMBOL_COLUMN in present and len(present) > 1:
                symbol = selection.parts[index].key.symbol
                present = tuple(c for c in present if c != SYMBOL_COLUMN)
            flags = folder_flags.get(path.name, NO_FLAGS)
            tasks.append(FileTask(index, path, present, flags, symbol))
        work = unified
        if order_field is not None and unified.get_field_index(ORDER_COLUMN) < 0:
            work = unified.append(order_field)
        output = unified
        if request.quarantine != "drop":
            output = output.append(FLAG_FIELDS[0]).append(FLAG_FIELDS[1])
        provenance = {
            "request": request.describe(),
            "parts": [p.provenance() for p in selection.parts],
        }
        output = output.with_metadata({METADATA_KEY: json.dumps(provenance).encode()})
        spans = [(p.key.start, p.key.end) for p in selection.parts]
        owners = [t.part_index for t in tasks]
        groups = slots(spans, owners) if ordered else [[i] for i in range(len(tasks))]
        return ReadPlan(request, selection, output, tasks, work, groups)

    # --- reading -------------------------------------------------------------------

    def read(self, dataset: str, start: datetime, end: datetime, **options: Any) -> pa.Table:
        """The whole window as one table; provenance and per-part counts in its metadata."""
        plan = self.plan(ReadRequest.build(dataset, start, end, **options))
        return self.read_plan(plan)[0]

    def read_plan(
        self, plan: ReadPlan, progress: Progress | None = None
    ) -> tuple[pa.Table, ReadSummary]:
        """Execute ``plan`` into one table: files decoded in parallel, slots merged by time."""
        summary = plan.summary()
        counts = [[0, 0, 0] for _ in plan.selection.parts]  # read, returned, flagged

        def load(task: FileTask) -> tuple[list[pa.RecordBatch], int, int, int]:
            table = _read_file(task)
            out: list[pa.RecordBatch] = []
            offset = flagged = 0
            for batch in table.to_batches():
                done, n = _finish(batch, task, offset, plan)
                offset += batch.num_rows
                flagged += n
                out.extend(b for b in done if b.num_rows)
            return out, table.num_rows, sum(b.num_rows for b in out), flagged

        loaded: list[list[pa.RecordBatch]] = []
        with ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="reader") as pool:
            for done_count, (task, result) in enumerate(
                zip(plan.tasks, pool.map(load, plan.tasks), strict=True), 1
            ):
                out, read_rows, returned, flagged = result
                loaded.append(out)
                counts[task.part_index][0] += read_rows
                counts[task.part_index][1] += returned
                counts[task.part_index][2] += flagged
                if progress is not None:
                    progress(done_count, len(plan.tasks))
        batches: list[pa.RecordBatch] = []
        for group in plan.slots:
            if len(group) == 1:
                batches.extend(_output(b, plan) for b in loaded[group[0]])
            else:
                merged = merge_by_time([iter(loaded[i]) for i in group])
                batches.extend(_output(b, plan) for b in merged)
        for read_rows, returned, flagged in counts:
            _count(summary, plan.request, read_rows, returned, flagged)
        provenance = json.loads(plan.schema.metadata[METADATA_KEY])
        for entry, (read_rows, returned, flagged) in zip(provenance["parts"], counts, strict=True):
            entry.update(rows_read=read_rows, rows_returned=returned, rows_flagged=flagged)
        provenance["summary"] = summary.to_json()
        schema = plan.schema.with_metadata({METADATA_KEY: json.dumps(provenance).encode()})
        table = pa.Table.from_batches(batches, schema=plan.schema).replace_schema_metadata(
            schema.metadata
        )
        return table, summary

    def batches(
        self,
        dataset: str,
        start: datetime,
        end: datetime,
        *,
        progress: Progress | None = None,
        **options: Any,
    ) -> BatchStream:
        """The window as a lazy stream of record batches (bounded memory)."""
        plan = self.plan(ReadRequest.build(dataset, start, end, **options))
        return BatchStream(self, plan, progress)

    def stream_plan(self, plan: ReadPlan, progress: Progress | None = None) -> BatchStream:
        return BatchStream(self, plan, progress)

    def _stream(
        self, plan: ReadPlan, summary: ReadSummary, progress: Progress | None
    ) -> Iterator[pa.RecordBatch]:
        done = [0]

        def file_batches(task: FileTask) -> Iterator[pa.RecordBatch]:
            read_rows = returned = flagged = 0
            try:
                handle = pq.ParquetFile(task.path)
            except (OSError, pa.ArrowException) as exc:
                raise ReadError(f"{task.path}: {exc}") from exc
            with handle:
                for batch in _decoded(handle, task, self.batch_rows):
                    pieces, n = _finish(batch, task, read_rows, plan)
                    read_rows += batch.num_rows
                    flagged += n
                    for piece in pieces:
                        if piece.num_rows:
                            returned += piece.num_rows
                            yield piece
            _count(summary, plan.request, read_rows, returned, flagged)
            done[0] += 1
            if progress is not None:
                progress(done[0], len(plan.tasks))

        for group in plan.slots:
            streams = [file_batches(plan.tasks[i]) for i in group]
            merged = streams[0] if len(streams) == 1 else merge_by_time(streams)
            for batch in merged:
                yield _output(batch, plan)


def open_store(root: str | Path, **options: Any) -> Store:
    """A :class:`Store` over a storage root (``storage.root`` of a region's config).

    Error handling: :class:`UsageError` for a bucket URL (object storage is
    not supported yet) or a path that is not a directory.
    """
    if "://" in str(root):
        raise UsageError(f"{root}: bucket URLs are not supported yet; give a local storage root")
    path = Path(root)
    if not path.is_dir():
        raise UsageError(f"storage root {path} is not a directory")
    return Store(path, **options)


def _output(batch: pa.RecordBatch, plan: ReadPlan) -> pa.RecordBatch:
    """A worked batch in the output's columns (drops ``ts`` kept only for ordering)."""
    if batch.num_columns == len(plan.schema):
        return batch
    return pa.RecordBatch.from_arrays(
        [batch.column(name) for name in plan.schema.names], schema=plan.schema.remove_metadata()
    )


def _decoded(handle: Any, task: FileTask, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """``handle``'s batches; a decoding failure becomes :class:`ReadError` naming the file."""
    batches = handle.iter_batches(
        batch_size=batch_rows, columns=list(task.columns), use_threads=True
    )
    while True:
        try:
            batch = next(batches, None)
        except (OSError, pa.ArrowException) as exc:
            raise ReadError(f"{task.path}: cannot decode: {exc}") from exc
        if batch is None:
            return
        yield batch


def _read_file(task: FileTask) -> pa.Table:
    try:
        with pq.ParquetFile(task.path) as handle:
            return handle.read(columns=list(task.columns), use_threads=True)
    except (OSError, pa.ArrowException) as exc:
        raise ReadError(f"{task.path}: {exc}") from exc


def _finish(
    batch: pa.RecordBatch, task: FileTask, offset: int, plan: ReadPlan
) -> tuple[list[pa.RecordBatch], int]:
    """One decoded batch → pieces: conformed, canonical symbols, quarantine applied."""
    schema, request = plan.work_schema, plan.request
    if task.symbol is not None:
        column = constant_symbol_array(task.symbol, batch.num_rows)
        batch = conform(batch.append_column(SYMBOL_COLUMN, column), schema)
    else:
        batch = canonical_symbol_column(conform(batch, schema))
    if task.flags.count == 0 and request.quarantine == "drop":
        return [batch], 0
    if task.flags.count == 0 and request.quarantine == "only":
        return [], 0
    return apply_flags(batch, task.flags, offset, request.quarantine)


def _count(
    summary: ReadSummary, request: ReadRequest, read_rows: int, returned: int, flagged: int
) -> None:
    summary.rows_read += read_rows
    summary.rows_returned += returned
    summary.rows_flagged += flagged
    if request.quarantine == "drop":
        summary.rows_dropped += flagged
    elif request.quarantine == "only":
        summary.rows_dropped += read_rows - returned
