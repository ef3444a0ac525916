"""``GET /v1/read`` on a real daemon: Arrow IPC for pyarrow, DuckDB and Polars; hostile input."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import duckdb
import polars as pl
import pyarrow as pa
import pytest
from aiohttp import web

from cryptorun_daemon.admin.app import build_app
from cryptorun_daemon.admin.server import AdminServer
from cryptorun_daemon.reader import METADATA_KEY, open_store
from cryptorun_daemon.reader.http import ARROW_STREAM, ReaderComponent
from cryptorun_daemon.security.credentials import Credentials
from cryptorun_daemon.storage.seal import seal_partition
from tests.harness.daemons import RegionSpec, auth_headers, run_daemon, two_regions
from tests.harness.research_data import at, flag_rows, key, write_part
from tests.harness.testdata import write_trade_partition

WINDOW = {"dataset": "trade", "start": "2025-09-01T00:00:00Z", "end": "2025-09-01T03:00:00Z"}


@pytest.fixture
async def region(tmp_path: Path) -> AsyncIterator[RegionSpec]:
    """A running daemon whose storage holds three sealed hours (one row flagged)."""
    spec, _ = two_regions(tmp_path)
    for hour in range(3):
        directory = write_part(spec.storage_root, key("warm", hour=hour), 5, first=hour * 10)
    flag_rows(directory, "part-0000.parquet", [("anomaly", "spike", [(4, 5)])], rows=5)
    async with run_daemon(spec.write()):
        yield spec


async def get_read(spec: RegionSpec, params: Any, **kwargs: Any) -> tuple[int, str, bytes]:
    headers = kwargs.pop("headers", auth_headers())
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{spec.base_url}/v1/read", params=params, headers=headers) as resp:
            return resp.status, resp.content_type, await resp.read()


async def test_stream_is_read_by_pyarrow_with_provenance(region: RegionSpec) -> None:
    """The stream decodes with pyarrow.ipc.open_stream to the library's rows and provenance."""
    status, content_type, body = await get_read(region, {**WINDOW, "quarantine": "keep"})
    assert status == 200
    assert content_type == ARROW_STREAM
    with pa.ipc.open_stream(body) as reader:
        table = reader.read_all()
    local = open_store(region.storage_root).read("trade", at(0), at(3), quarantine="keep")
    assert table.replace_schema_metadata(None).equals(local.replace_schema_metadata(None))
    assert b"parts" in table.schema.metadata[METADATA_KEY]
    assert table.column("quarantined").to_pylist().count(True) == 1


async def test_stream_is_queried_by_duckdb_and_polars(region: RegionSpec) -> None:
    """DuckDB scans the stream's record-batch reader; Polars reads the same bytes."""
    params = [*WINDOW.items(), ("symbol", "BTC/USD"), ("column", "symbol"), ("column", "trade_id")]
    status, _, body = await get_read(region, params)
    assert status == 200
    con = duckdb.connect()
    con.register("stream", pa.ipc.open_stream(body))
    rows = con.execute("SELECT symbol, count(*), max(trade_id) FROM stream GROUP BY 1").fetchall()
    assert rows == [("BTC-USD", 14, 23)]  # 15 rows, the flagged one dropped
    frame = pl.read_ipc_stream(io.BytesIO(body))
    assert frame.columns == ["symbol", "trade_id"]
    assert frame.height == 14


async def test_read_needs_the_bearer_token(region: RegionSpec) -> None:
    """Without the token the route answers 401 and reads nothing."""
    status, _, body = await get_read(region, WINDOW, headers={})
    assert status == 401
    assert b"unauthorized" in body


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({**WINDOW, "dataset": "../../outside/warm/trade"}, b"dataset"),
        ({**WINDOW, "dataset": "..%2F..%2Foutside"}, b"dataset"),
        ({**WINDOW, "venue": "../../../outside"}, b"venue"),
        ({**WINDOW, "symbol": "../../outside"}, b"symbol"),
        ({**WINDOW, "symbol": "BTC-USD/../../.."}, b"symbol"),
        ({**WINDOW, "tier": "../../outside/warm"}, b"tier"),
        ({**WINDOW, "tier": "/etc"}, b"tier"),
        ({**WINDOW, "path": "/etc/passwd"}, b"unknown read parameter"),
        ({**WINDOW, "column": "ts) FROM x; --"}, b"column"),
        ({**WINDOW, "start": "yesterday"}, b"RFC 3339"),
        ({**WINDOW, "end": "2025-08-01T00:00:00Z"}, b"empty or reversed"),
        ({"start": WINDOW["start"], "end": WINDOW["end"]}, b"dataset"),
    ],
)
async def test_hostile_query_strings_are_refused(
    region: RegionSpec, params: dict[str, str], needle: bytes
) -> None:
    """Values that could name a path outside the root, or a malformed window, answer 400 JSON."""
    status, content_type, body = await get_read(region, params)
    assert status == 400
    assert content_type == "application/json"
    assert needle in body


async def test_symlinks_inside_the_root_never_lead_outside(tmp_path: Path) -> None:
    """A symbol folder linked to data outside the root is not streamed; the real data is."""
    spec, _ = two_regions(tmp_path)
    outside = tmp_path / "outside"
    write_part(outside, key("warm", hour=0, symbol="ETH-USD"), 3)
    write_part(spec.storage_root, key("warm", hour=0), 2)
    venue = spec.storage_root / "warm" / "trade" / "venue=kraken"
    os.symlink(outside / "warm/trade/venue=kraken/symbol=ETH-USD", venue / "symbol=ETH-USD")
    async with run_daemon(spec.write()):
        status, _, body = await get_read(spec, {**WINDOW, "symbol": "ETH-USD"})
        assert status == 200
        assert pa.ipc.open_stream(body).read_all().num_rows == 0
        status, _, body = await get_read(spec, WINDOW)
        assert pa.ipc.open_stream(body).read_all().column("symbol").to_pylist() == ["BTC-USD"] * 2


class _View:
    """The least a daemon view must offer build_app (only /v1/read is called here)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry

        from cryptorun_daemon.metrics import Metrics

        self.metrics = Metrics(CollectorRegistry())

    def is_alive(self) -> bool:
        return True

    def not_ready_reasons(self) -> list[str]:
        return []

    def write_refusals(self) -> dict[str, str]:
        return {}

    def known_regions(self) -> list[str]:
        return []

    def status(self, *, tier: str | None, region: str | None) -> dict[str, Any]:
        return {}


async def test_concurrent_reads_beyond_the_limit_answer_503(tmp_path: Path) -> None:
    """With one slot, a second read while the first is still streaming gets 503 read_busy."""
    root = tmp_path / "root"
    directory = write_trade_partition(root, key("warm", hour=0), rows=300_000)
    seal_partition(directory, writer_region="eu-central", epoch=1)
    component = ReaderComponent(lambda: root, max_concurrent=1, batch_rows=4096)
    app: web.Application = build_app(
        _View(),
        credentials=Credentials(),
        open_reads=True,
        max_request_bytes=1 << 20,
        extra_routes=component.routes(),
    )
    server = AdminServer(app, "127.0.0.1", 0, shutdown_timeout=5.0)
    await server.start()
    url = f"http://127.0.0.1:{server.port}/v1/read"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(url, params=WINDOW) as first:
                assert first.status == 200
                # The first body is far larger than the socket buffers and unread: still streaming.
                async with http.get(url, params=WINDOW) as second:
                    assert second.status == 503
                    assert (await second.json())["error"] == "read_busy"
                whole = await first.read()
            assert pa.ipc.open_stream(whole).read_all().num_rows == 300_000
            async with http.get(url, params=WINDOW) as third:
                assert third.status == 200
                await third.read()
    finally:
        await server.close()


async def test_failure_mid_stream_cuts_the_response_instead_of_ending_it(tmp_path: Path) -> None:
    """A file that cannot be decoded after the 200 leaves the body unfinished: the client fails."""
    root = tmp_path / "root"
    write_part(root, key("warm", hour=0), 50)
    directory = write_part(root, key("warm", hour=1), 50, first=100)
    with (directory / "part-0000.parquet").open("r+b") as handle:
        handle.seek(4)
        handle.write(b"\xff" * 64)  # size and footer intact: planning succeeds
    component = ReaderComponent(lambda: root)
    app = build_app(
        _View(),
        credentials=Credentials(),
        open_reads=True,
        max_request_bytes=1 << 20,
        extra_routes=component.routes(),
    )
    server = AdminServer(app, "127.0.0.1", 0, shutdown_timeout=5.0)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{server.port}/v1/read"
            async with http.get(url, params={**WINDOW, "end": "2025-09-01T02:00:00Z"}) as resp:
                assert resp.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):
                    await resp.read()
        assert component.active == 0
    finally:
        await server.close()
