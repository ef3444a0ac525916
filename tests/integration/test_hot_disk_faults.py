"""The hot journal on a failing disk and a damaged journal, with real daemon processes.

- A storage root on a size-limited tmpfs is filled to ENOSPC while the daemon
  ingests its synthetic feed, then freed: the daemon drops and counts records,
  is not ready (``disk``), hands authority to peers, and resumes by itself.
- A journal segment with a garbage line in the middle: ``cryptorun daemon``
  exits 2 naming the segment and byte, and ``cryptorun journal salvage`` makes
  the next start succeed without deleting a byte.

The tmpfs test mounts a file system, so it needs root (or password-less sudo);
where ``mount`` fails it is skipped, except in CI (``CI=true``) where that is
a failure.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness.cli import run_cli as cli
from tests.harness.daemons import (
    STEADY_HOT,
    SYNTHETIC_FEED,
    RegionSpec,
    scrape_metric,
    start_daemon_process,
    stop_process,
    two_regions,
    wait_until_ready,
)
from tests.harness.tools import missing_tool, require_binary
from tests.harness.wait import eventually

pytestmark = pytest.mark.slow

REGION = "eu-central"


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` for the block (needs root)."""
    path.mkdir(parents=True, exist_ok=True)
    # Not root: sudo without a password prompt (CI runners), else skip/fail below.
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    options = f"size={size},uid={os.getuid()},gid={os.getgid()},mode=0700"
    mounted = subprocess.run(
        [*prefix, "mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        missing_tool(f"cannot mount a tmpfs (root or sudo needed): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run([*prefix, "umount", "-l", str(path)], check=False, capture_output=True)


def fill(path: Path) -> int:
    """Write ``path`` until the file system says ENOSPC; returns the bytes written."""
    written = 0
    chunk = b"\0" * (64 << 10)
    with path.open("wb", buffering=0) as handle:
        while True:
            try:
                written += handle.write(chunk) or 0
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return written


def origin_spec(tmp_path: Path) -> RegionSpec:
    """eu-central ingesting the synthetic feed; its peer us-east is never started."""
    spec, _ = two_regions(tmp_path)
    spec.sections["hot"] = dict(STEADY_HOT)
    spec.feeds = [SYNTHETIC_FEED]
    return spec


async def hot_stream(session: aiohttp.ClientSession, spec: RegionSpec) -> dict[str, Any]:
    async with session.get(f"{spec.base_url}/v1/status?tier=hot") as resp:
        assert resp.status == 200
        body = await resp.json()
    result: dict[str, Any] = body["tiers"]["hot"]["stream"]
    return result


async def readiness(session: aiohttp.ClientSession, spec: RegionSpec) -> tuple[int, list[str]]:
    async with session.get(f"{spec.base_url}/readyz") as resp:
        return resp.status, list((await resp.json())["reasons"])


def local_seqs(journal_dir: Path) -> list[int]:
    """Seqs of the local origin's records in journal file order (every line must parse)."""
    seqs = []
    for path in sorted(journal_dir.glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            body = json.loads(line)
            if "ctl" not in body and body["o"] == REGION:
                seqs.append(body["s"])
    return seqs


async def test_full_disk_drops_and_counts_then_resumes_without_restart(tmp_path: Path) -> None:
    """Filling the storage root's file system to ENOSPC while ingesting: the daemon keeps
    running, counts dropped records (cryptorun_hot_dropped_total{reason="disk"}), answers
    /readyz 503 with a `disk` reason and suspends the local source's authority; after the
    filler is deleted it resumes ingesting by itself (no restart), the journal's local seqs
    are contiguous with no half line, and a SIGKILL-ed daemon then starts again."""
    spec = origin_spec(tmp_path)
    config = spec.write()
    log_path = config.with_suffix(".log")
    journal_dir = spec.storage_root / "_state" / "hot" / "journal"
    dropped = ("cryptorun_hot_dropped_total", {"region": REGION, "reason": "disk"})
    with tmpfs(spec.storage_root, "4m"):
        proc = start_daemon_process(config)
        try:
            async with aiohttp.ClientSession() as session:
                await wait_until_ready(spec.base_url, proc=proc, log_path=log_path)

                async def ingesting(above: int) -> bool:
                    return int((await hot_stream(session, spec))["origins"][REGION]["head_seq"]) > (
                        above
                    )

                await eventually(lambda: ingesting(200), "ingest before the fault")
                filler = spec.storage_root / "filler"
                fill(filler)

                async def failing() -> bool:
                    count = await scrape_metric(session, spec.base_url, *dropped) or 0.0
                    status, reasons = await readiness(session, spec)
                    suspended = (await hot_stream(session, spec))["authority"]["suspended"]
                    return (
                        count > 0
                        and status == 503
                        and any(r.startswith("disk") for r in reasons)
                        and suspended == {REGION: "disk"}
                    )

                await eventually(
                    failing, "dropped records, /readyz 503 disk, local source suspended"
                )
                stream = await hot_stream(session, spec)
                assert stream["journal"]["writable"] is False
                seq_at_fault = int(stream["origins"][REGION]["head_seq"])
                assert proc.poll() is None

                filler.unlink()

                async def ready_again() -> bool:
                    return (await readiness(session, spec))[0] == 200

                await eventually(ready_again, "/readyz 200 after space returned")
                await eventually(
                    lambda: ingesting(seq_at_fault + 200), "ingest after space returned"
                )

                async def resumed() -> bool:
                    suspended = (await hot_stream(session, spec))["authority"]["suspended"]
                    return bool(suspended == {})

                await eventually(resumed, "the local source resumed")
                stream = await hot_stream(session, spec)
                assert stream["journal"]["writable"] is True
                assert stream["journal"]["failures"] >= 1
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=15)
            seqs = local_seqs(journal_dir)
            assert seqs == list(range(1, len(seqs) + 1))
            assert len(seqs) > seq_at_fault
            proc = start_daemon_process(config)
            await wait_until_ready(spec.base_url, proc=proc, log_path=log_path)
        finally:
            stop_process(proc)
    assert "hot journal writes resumed" in log_path.read_text(errors="replace")


async def test_damaged_journal_exits_2_and_salvage_lets_it_start(tmp_path: Path) -> None:
    """A garbage line in the middle of a journal segment: `cryptorun daemon` exits 2 (systemd
    does not restart it) with the segment, the byte offset and the salvage command on stderr;
    `journal check` exits 1; `journal salvage` moves the damaged tail aside (the bytes still
    exist under _quarantine/journal/) and records the gap; the next start succeeds and shows
    the salvaged gap in status."""
    spec = origin_spec(tmp_path)
    spec.sections["hot"] = {**STEADY_HOT, "segment_bytes": 4096}
    config = spec.write()
    log_path = config.with_suffix(".log")
    journal_dir = spec.storage_root / "_state" / "hot" / "journal"
    proc = start_daemon_process(config)
    try:
        await wait_until_ready(spec.base_url, proc=proc, log_path=log_path)
        async with aiohttp.ClientSession() as session:

            async def enough_segments() -> bool:
                return int((await hot_stream(session, spec))["journal"]["segments"]) >= 4

            await eventually(enough_segments, "four journal segments")
    finally:
        assert stop_process(proc) == 0
    segment = sorted(journal_dir.glob("*.jsonl"))[1]
    data = segment.read_bytes()
    offset = data.index(b"\n", len(data) // 2) + 1
    garbage = b'{"o":"eu-central","s":\x00\x00torn\n'
    segment.write_bytes(data[:offset] + garbage + data[offset:])

    refused = cli("daemon", "--config", str(config))
    assert refused.returncode == 2, refused.stderr
    assert str(segment) in refused.stderr
    assert f"byte {offset}" in refused.stderr
    assert f"cryptorun journal salvage --config {config}" in refused.stderr

    checked = cli("journal", "check", "--config", str(config))
    assert checked.returncode == 1
    assert "DAMAGED" in checked.stdout

    salvaged = cli("journal", "salvage", "--config", str(config), "--json")
    assert salvaged.returncode == 0, salvaged.stderr
    report = json.loads(salvaged.stdout)
    moved_tail = Path(report["quarantine"]) / f"{segment.name}.from-{offset}"
    assert moved_tail.read_bytes().startswith(garbage)
    assert spec.storage_root / "_quarantine" / "journal" in moved_tail.parents
    assert report["gaps"][0]["reason"] == "salvaged"
    assert cli("journal", "check", "--config", str(config)).returncode == 0

    proc = start_daemon_process(config)
    try:
        await wait_until_ready(spec.base_url, proc=proc, log_path=log_path)
        async with aiohttp.ClientSession() as session:
            local = (await hot_stream(session, spec))["origins"][REGION]
        assert local["last_gap"]["reason"] == "salvaged"
        assert local["head_seq"] >= report["gaps"][0]["missing_from"]
    finally:
        stop_process(proc)


ROLL_PROBE = """
import asyncio, sys
from pathlib import Path
from cryptorun_daemon.hot.buffer import ReplayBuffer
from cryptorun_daemon.hot.feed import MarketRecord
from cryptorun_daemon.hot.journal import Journal
from cryptorun_daemon.hot.log import HotLog
from cryptorun_daemon.metrics import Metrics

async def main():
    journal = Journal(Path(sys.argv[1]), segment_bytes=4096, fsync_interval=1,
                      fsync_records=10**6)
    log = HotLog("eu", journal, ReplayBuffer(1000, 1 << 20), Metrics())
    log.open()
    await journal.sync()
    i = 0
    while len(journal.segments()) < 2:
        i += 1
        log.append_local(MarketRecord("trade", {"ts": i, "venue": "v", "symbol": "A/B",
                                                "trade_id": i, "ingest_ts": i}))
    await journal.sync()
    print("SYNCED", flush=True)
    log.close()

asyncio.run(main())
"""


def test_segment_roll_and_new_journal_directory_are_fsynced(tmp_path: Path) -> None:
    """Seen in the system calls of a real process (strace): creating the journal directory
    fsyncs its parent, and after a segment roll the next sync fsyncs the journal directory
    (so the new segment's name survives a power loss) before the sync completes."""
    strace = require_binary("strace", "strace")
    journal_dir = tmp_path / "state" / "journal"
    trace = tmp_path / "syscalls.txt"
    probe = tmp_path / "probe.py"
    probe.write_text(ROLL_PROBE)
    subprocess.run(
        [
            strace,
            "-f",
            "-y",
            "-e",
            "trace=openat,fsync,write",
            "-o",
            str(trace),
            sys.executable,
            str(probe),
            str(journal_dir),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    lines = trace.read_text().splitlines()
    fsynced = [i for i, line in enumerate(lines) if "fsync(" in line]

    def fsync_of(directory: Path, after: int, before: int) -> bool:
        return any(
            f"<{directory}>)" in lines[i] and lines[i].rstrip().endswith("= 0")
            for i in fsynced
            if after < i < before
        )

    created = next(
        i for i, line in enumerate(lines) if "0000000002.jsonl" in line and "O_CREAT" in line
    )
    synced = next(i for i, line in enumerate(lines) if '"SYNCED"' in line)
    assert fsync_of(journal_dir.parent, -1, created), "journal directory creation not fsynced"
    assert fsync_of(journal_dir, created, synced), "no directory fsync after the segment roll"
