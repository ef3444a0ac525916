"""``GET /v1/read``: a research read streamed as Arrow IPC from the admin server.

A notebook far from the storage reads with ``pyarrow.ipc.open_stream`` (or
``polars``/DuckDB over it) exactly what :func:`~cryptorun_daemon.reader.open_store`
would return locally: same rules, same provenance in the stream's schema
metadata, ``symbol`` in the ``BTC-USD`` form.

Query: ``dataset`` (once) plus the fields of
:meth:`~cryptorun_daemon.reader.request.ReadRequest.from_strings` (``start``,
``end``, ``venue``, ``symbol``, ``column``, ``tier``, ``as_of``,
``quarantine``, ``on_drift``, ``include_unsealed``). Answers: 200 with
``application/vnd.apache.arrow.stream``; 400 for a malformed window or a value
that is not a path segment (nothing is read); 409 ``schema_drift``; 503
``read_busy`` when :data:`MAX_CONCURRENT_READS` reads are already streaming.

The route is named ``read`` (:data:`READ_ROUTE_NAME`) so a scoped credential
can grant it alone; until scopes exist it takes the admin bearer token.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import structlog
from aiohttp import web

from cryptorun_daemon.config import Config
from cryptorun_daemon.errors import ReadBusyError, UsageError
from cryptorun_daemon.reader.request import ReadRequest
from cryptorun_daemon.reader.store import ReadPlan, Store
from cryptorun_daemon.runtime.component import ReloadResult

log = structlog.get_logger("cryptorun.reader")

READ_PATH: Final = "/v1/read"
READ_ROUTE_NAME: Final = "read"
ARROW_STREAM: Final = "application/vnd.apache.arrow.stream"
MAX_CONCURRENT_READS: Final = 4
# Encoded chunks waiting for the socket per request; with the batch being
# encoded and the one being written this bounds a request's memory to about
# (QUEUED_CHUNKS + 2) batches plus one Parquet row group being decoded.
QUEUED_CHUNKS: Final = 2
STREAM_BATCH_ROWS: Final = 65_536
_SLOT_POLL_SECONDS: Final = 0.1

_Item = bytes | BaseException | None  # a chunk, the producer's failure, or the end


class ReaderComponent:
    """Serves ``GET /v1/read`` over this region's storage root.

    Error handling: request problems answer 400/409/503 before anything is
    streamed; a failure after the 200 (a partition unreadable mid-read) is
    logged and the connection closed before the chunked body's last chunk,
    so the client's read fails instead of returning a short table.
    Resource handling: each read runs its Parquet decoding in one worker
    thread owned by the request (awaited before the handler returns, also on
    disconnect or cancellation); at most :data:`MAX_CONCURRENT_READS` at once.
    """

    name = "reader"

    def __init__(
        self,
        storage_root: Callable[[], Path],
        *,
        max_concurrent: int = MAX_CONCURRENT_READS,
        batch_rows: int = STREAM_BATCH_ROWS,
    ) -> None:
        self._storage_root = storage_root
        self._max_concurrent = max_concurrent
        self._batch_rows = batch_rows
        self.active = 0  # reads being served; only touched on the event loop

    def routes(self) -> Sequence[web.RouteDef]:
        return [web.get(READ_PATH, self.handle, name=READ_ROUTE_NAME)]

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None  # in-flight reads end with the admin server's shutdown

    def status(self, *, tier: str | None, region: str | None) -> dict[str, Any]:
        return {}

    def not_ready_reasons(self) -> list[str]:
        return []

    def reload(self, new_config: Config) -> ReloadResult:
        """Claims nothing: ``storage.root`` is read afresh per request (the daemon owns it)."""
        return ReloadResult()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Parse, plan (in a thread), then stream Arrow IPC with backpressure."""
        read = parse_query(request)
        if self.active >= self._max_concurrent:
            raise ReadBusyError(
                f"{self.active} reads are streaming (limit {self._max_concurrent}); retry shortly"
            )
        self.active += 1
        try:
            store = Store(self._storage_root(), batch_rows=self._batch_rows, threads=1)
            plan = await asyncio.to_thread(store.plan, read)
            response = web.StreamResponse(headers={"Content-Type": ARROW_STREAM})
            await response.prepare(request)
            try:
                await _stream(store, plan, response)
            except ConnectionError:
                log.info("read client went away", dataset=read.dataset)
                return response
            except Exception:
                log.error("read failed mid-stream", dataset=read.dataset, exc_info=True)
                if request.transport is not None:
                    request.transport.close()  # no final chunk: the client sees the cut
                return response
            await response.write_eof()
            return response
        finally:
            self.active -= 1


def parse_query(request: web.Request) -> ReadRequest:
    """The checked read of a query string.

    Error handling: ``UsageError`` or ``PathRejectedError`` (both answer 400).
    """
    values = {name: request.query.getall(name) for name in set(request.query.keys())}
    datasets = values.pop("dataset", [])
    if len(datasets) != 1:
        raise UsageError("give dataset exactly once (e.g. dataset=trade)")
    return ReadRequest.from_strings(datasets[0], values)


async def _stream(store: Store, plan: ReadPlan, response: web.StreamResponse) -> None:
    """Encode batches in a worker thread, write them here; at most QUEUED_CHUNKS in between."""
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[_Item] = asyncio.Queue()
    slots = threading.Semaphore(QUEUED_CHUNKS)
    cancelled = threading.Event()

    def hand_over(item: _Item) -> bool:
        while not slots.acquire(timeout=_SLOT_POLL_SECONDS):
            if cancelled.is_set():
                return False
        if cancelled.is_set():
            return False
        loop.call_soon_threadsafe(chunks.put_nowait, item)
        return True

    def produce() -> None:
        sink = _ChunkSink()
        try:
            stream = store.stream_plan(plan)
            try:
                with pa.ipc.new_stream(sink, plan.schema) as writer:
                    for batch in stream:
                        writer.write_batch(batch)
                        if not hand_over(sink.take()):
                            return
            finally:
                stream.close()
            if hand_over(sink.take()):  # the end-of-stream marker
                loop.call_soon_threadsafe(chunks.put_nowait, None)
        except Exception as exc:  # handed to the event loop, raised there
            loop.call_soon_threadsafe(chunks.put_nowait, exc)

    producer = asyncio.ensure_future(asyncio.to_thread(produce))
    try:
        while True:
            item = await chunks.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            slots.release()
            if item:
                await response.write(item)
    finally:
        cancelled.set()
        # The producer notices within _SLOT_POLL_SECONDS (or after its current batch).
        # Shielded: a thread cannot be cancelled, and if this handler is, the
        # thread still ends by itself on ``cancelled`` instead of running on.
        await asyncio.shield(producer)


class _ChunkSink:
    """A write-only file for ``pyarrow.ipc``: collects bytes until :meth:`take`."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._parts.append(chunk)
        return len(chunk)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data
