"""Hot tier across origin restarts, with real daemon processes on 127.0.0.1.

The origin (``eu-central``, synthetic feed ingesting) and the subscriber
(``us-east``) run as ``python -m cryptorun_daemon daemon`` subprocesses; the
origin is stopped with SIGTERM, killed with SIGKILL, or has its journal wiped,
then restarted on the same config. Everything is observed from outside, as an
operator would: ``/v1/status`` (``tiers.hot.stream``), ``/metrics`` and the
journal files on disk.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness import admin
from tests.harness.daemons import (
    STEADY_HOT,
    SYNTHETIC_FEED,
    RegionSpec,
    start_daemon_process,
    stop_process,
    two_regions,
    wait_until_ready,
)
from tests.harness.wait import eventually

pytestmark = pytest.mark.slow


class Region:
    """One daemon subprocess that the test can stop, kill and start again on its config."""

    def __init__(self, spec: RegionSpec) -> None:
        self.spec = spec
        self.config = spec.write()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def journal_dir(self) -> Path:
        return self.spec.storage_root / "_state" / "hot" / "journal"

    async def start(self) -> None:
        self.proc = start_daemon_process(self.config)
        await wait_until_ready(
            self.spec.base_url, proc=self.proc, log_path=self.config.with_suffix(".log")
        )

    def terminate(self) -> int:
        """SIGTERM and wait: the daemon shuts down in order and closes its journal cleanly."""
        assert self.proc is not None
        return stop_process(self.proc)

    def kill(self) -> int:
        """SIGKILL: no shutdown code runs; Python's unflushed journal buffer is lost."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(timeout=15)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@contextlib.asynccontextmanager
async def origin_and_subscriber(
    tmp_path: Path,
) -> AsyncIterator[tuple[Region, Region, aiohttp.ClientSession]]:
    """Origin A (ingesting) and subscriber B (no feeds), both running, B mirroring A."""
    a_spec, b_spec = two_regions(tmp_path)
    a_spec.sections["hot"], b_spec.sections["hot"] = dict(STEADY_HOT), dict(STEADY_HOT)
    a_spec.feeds = [SYNTHETIC_FEED]
    a, b = Region(a_spec), Region(b_spec)
    try:
        async with aiohttp.ClientSession() as session:
            await a.start()
            await b.start()
            yield a, b, session
    finally:
        b.stop()
        a.stop()


async def stream(session: aiohttp.ClientSession, region: Region) -> dict[str, Any]:
    """``tiers.hot.stream`` of a region's ``/v1/status``."""
    async with session.get(f"{region.spec.base_url}/v1/status?tier=hot") as resp:
        assert resp.status == 200
        body = await resp.json()
    result: dict[str, Any] = body["tiers"]["hot"]["stream"]
    return result


async def origin_view(session: aiohttp.ClientSession, b: Region, a: Region) -> dict[str, Any]:
    """What subscriber B's status says about origin A."""
    view: dict[str, Any] = (await stream(session, b))["origins"][a.spec.region]
    return view


async def metric(session: aiohttp.ClientSession, daemon: Region, name: str, **labels: str) -> float:
    """One sample of a daemon's ``/metrics`` (0 when absent)."""
    return await admin.metric(session, daemon.spec.base_url, name, labels)


async def applied_at_least(
    session: aiohttp.ClientSession, b: Region, a: Region, seq: int, replid: str | None = None
) -> bool:
    view = await origin_view(session, b, a)
    return view["applied_seq"] >= seq and (replid is None or view["replid"] == replid)


def journal_stream(journal_dir: Path, origin: str) -> list[tuple[str, int]]:
    """(replid, seq) of every record of ``origin`` in a journal, in file order."""
    replid, found = "", []
    for path in sorted(journal_dir.glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            body = json.loads(line)
            if body.get("ctl") == "replid" and body["o"] == origin:
                replid = body["r"]
            elif "ctl" not in body and body["o"] == origin:
                found.append((replid, body["s"]))
    return found


async def test_sigterm_restart_keeps_replid_and_the_subscriber_continues_without_a_gap(
    tmp_path: Path,
) -> None:
    """SIGTERM the origin and start it again on the same config: it recovers cleanly with the
    same replid and seq continues; the subscriber resumes at applied + 1 and ends up with the
    origin's records 1..n exactly once, in order, with no gap counted."""
    async with origin_and_subscriber(tmp_path) as (a, b, session):
        origin = a.spec.region
        await eventually(lambda: applied_at_least(session, b, a, 200), "200 records at B")
        before = (await stream(session, a))["origins"][origin]
        assert a.terminate() == 0
        await a.start()
        after = await stream(session, a)
        assert after["journal"]["recovered_clean"] is True
        assert after["origins"][origin]["replid"] == before["replid"]
        assert after["origins"][origin]["available_from"] == 1  # the journal still has it all
        restart_head = after["origins"][origin]["head_seq"]
        assert restart_head >= before["head_seq"]
        await eventually(
            lambda: applied_at_least(session, b, a, restart_head + 200, before["replid"]),
            "B continues past the restart",
        )
        view = await origin_view(session, b, a)
        assert view["last_gap"] is None
        assert (
            await metric(
                session, b, "cryptorun_hot_seq_gaps_total", region=b.spec.region, origin=origin
            )
            == 0
        )
        assert (
            await metric(
                session, b, "cryptorun_hot_reconnects_total", region=b.spec.region, origin=origin
            )
            >= 1
        )
        b.stop()
        records = journal_stream(b.journal_dir, origin)
        assert {replid for replid, _ in records} == {before["replid"]}
        assert [seq for _, seq in records] == list(range(1, len(records) + 1))
        assert len(records) >= restart_head + 200


async def test_sigkill_restart_truncates_torn_tail_takes_new_replid_and_subscriber_records_gap(
    tmp_path: Path,
) -> None:
    """SIGKILL the origin (plus a torn half-line at the end of its newest segment) and start it
    again: recovery truncates the torn tail, keeps every synced record, keeps counting seq and
    takes a new replid; the subscriber records an explicit replid_changed gap (status and
    metric) and follows the new replid from the recovered seq + 1 — never from seq 1."""
    async with origin_and_subscriber(tmp_path) as (a, b, session):
        origin = a.spec.region
        await eventually(lambda: applied_at_least(session, b, a, 200), "200 records at B")
        before = await stream(session, a)
        old_replid = before["origins"][origin]["replid"]
        synced = before["journal"]["synced_records"]
        assert synced > 0
        assert a.kill() == -signal.SIGKILL
        torn = b'{"o":"' + origin.encode() + b'","s":999999,"i":17'
        newest = max(a.journal_dir.glob("*.jsonl"))
        with newest.open("ab") as handle:
            handle.write(torn)
        await a.start()
        after = await stream(session, a)
        new_replid = after["origins"][origin]["replid"]
        recovered_from = after["origins"][origin]["available_from"]
        assert after["journal"]["recovered_clean"] is False
        assert after["journal"]["recovered_torn_bytes"] >= len(torn)
        assert new_replid != old_replid
        assert recovered_from - 1 >= synced  # a crash loses at most the unsynced window
        await eventually(
            lambda: applied_at_least(session, b, a, recovered_from + 100, new_replid),
            "B follows the new replid",
        )
        gap = (await origin_view(session, b, a))["last_gap"]
        assert gap is not None
        assert (gap["reason"], gap["replid"], gap["new_replid"]) == (
            "replid_changed",
            old_replid,
            new_replid,
        )
        assert gap["available_from"] == recovered_from > 1
        assert (
            await metric(
                session, b, "cryptorun_hot_seq_gaps_total", region=b.spec.region, origin=origin
            )
            >= 1
        )
        b.stop()
        records = journal_stream(b.journal_dir, origin)
        for replid in (old_replid, new_replid):
            seqs = [seq for r, seq in records if r == replid]
            first = 1 if replid == old_replid else recovered_from
            assert seqs == list(range(first, first + len(seqs)))


async def test_wiped_journal_gives_new_replid_and_subscriber_records_gap(tmp_path: Path) -> None:
    """Stop the origin, delete its journal and start it again: it starts a new replid at seq 1;
    the subscriber records a replid_changed gap (status and metric) instead of silently
    treating the new seq 1 as the continuation of the old stream."""
    async with origin_and_subscriber(tmp_path) as (a, b, session):
        origin = a.spec.region
        await eventually(lambda: applied_at_least(session, b, a, 200), "200 records at B")
        old_replid = (await stream(session, a))["origins"][origin]["replid"]
        assert a.terminate() == 0

        async def disconnected() -> bool:
            return (await origin_view(session, b, a))["connected"] is False

        await eventually(disconnected, "B sees the origin go away")
        applied_before = (await origin_view(session, b, a))["applied_seq"]
        shutil.rmtree(a.journal_dir)
        await a.start()
        after = await stream(session, a)
        new_replid = after["origins"][origin]["replid"]
        assert new_replid != old_replid
        assert after["origins"][origin]["available_from"] == 1
        await eventually(
            lambda: applied_at_least(session, b, a, 100, new_replid), "B follows the new replid"
        )
        gap = (await origin_view(session, b, a))["last_gap"]
        assert gap is not None
        assert (gap["reason"], gap["replid"], gap["new_replid"]) == (
            "replid_changed",
            old_replid,
            new_replid,
        )
        assert gap["missing_from"] == applied_before + 1
        assert gap["available_from"] == 1
        assert (
            await metric(
                session, b, "cryptorun_hot_seq_gaps_total", region=b.spec.region, origin=origin
            )
            == 1
        )
