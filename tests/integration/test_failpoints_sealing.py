"""The fail-point matrix: a daemon killed at every step of sealing converges after a restart.

Each scenario runs real ``python -m cryptorun_daemon daemon`` processes on one
storage root. The input is fixed: the test writes the hot journal itself
(deterministic synthetic events, three symbols, trades and books, in the three
20-minute windows of an hour that closed a while ago), so every run seals the
same records whatever the machine's speed.

- Phase 1 (seal): the daemon starts on journal ``A`` and seals the three
  windows into the hour's partitions (the second and third window re-seal
  them); then it is stopped with SIGTERM.
- Phase 2 (late fill): the test appends ``B`` to the journal: records of the
  same, already sealed windows (new trades and books, plus copies of trades
  already sealed); the daemon writes them as late fills and re-seals.

A clean run (no fail point) gives the reference partitions after each phase.
For each fail point the phase it belongs to is run with
``CRYPTORUN_FAILPOINTS=<name>=exit``: the process must die with the fail-point
exit code, having logged that fail point. It is then restarted without it, and
once a sealing round as primary has run, the partitions must equal the clean
run's: the same rows (no row lost, none twice), the same manifests (row counts,
sources, late rows), ``_SUCCESS`` everywhere, and no data file outside a
manifest.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pyarrow.parquet as pq
import pytest

from cryptorun_daemon.config import FeedConfig
from cryptorun_daemon.hot.feeds_builtin import SyntheticFeed
from cryptorun_daemon.hot.record import encode_control, encode_record
from cryptorun_daemon.runtime.failpoints import ENV_VAR, EXIT_CODE, KNOWN
from tests.harness.daemons import (
    RegionSpec,
    free_port,
    start_daemon_process,
    stop_process,
    wait_until_ready,
)

pytestmark = pytest.mark.slow

REGION = "eu-central"
HOUR_NS = 3600 * 10**9
PERIOD_NS = 30 * 10**9  # one synthetic event every 30 s: 120 events in the hour
HOT = {
    "partition_length": "20m",
    "seal_grace": "1s",
    "fsync_interval": "50ms",
    # The journal written by the test is larger than this, so the first write
    # after start-up rolls a segment (the journal.roll fail points).
    "segment_bytes": 4096,
}
PHASE_1 = (
    "journal.roll.after_open",
    "journal.roll.after_checkpoint",
    "stage.after_batch",
    "seal.after_data",
    "seal.after_manifest",
    "seal.after_success",
    "reseal.after_unseal",
    "sealer.after_state",
    "staging.after_drop",
)
PHASE_2 = (
    "late.after_intent",
    "reseal.after_unseal",
    "late.after_data",
    "seal.after_manifest",
    "seal.after_success",
    "late.after_seal",
    "sealer.after_state",
)


def events(hour_start_ns: int) -> list[tuple[int, str, dict[str, Any]]]:
    """The hour's synthetic events as ``(k, dataset, fields)``, a pure function of the hour."""
    config = FeedConfig(
        name="syn",
        kind="synthetic",
        venue="synthetic",
        symbols=("BTC/USD", "ETH/USD", "SOL/USD"),
        rate=1e9 / PERIOD_NS,
        seed=7,
        book_depth=3,
    )
    feed = SyntheticFeed(config)
    first = hour_start_ns // feed.period_ns
    out: list[tuple[int, str, dict[str, Any]]] = []
    for k in range(first, first + HOUR_NS // feed.period_ns):
        record = feed.event(k)
        fields = {**record.fields, "ingest_ts": record.fields["ts"] + 1000}
        out.append((k, record.dataset, fields))
    return out


def journal_lines(
    items: list[tuple[str, dict[str, Any]]], *, first_seq: int, replid: str | None
) -> bytes:
    """Journal lines of local records (``seq`` from ``first_seq``), after a replid line."""
    lines = []
    if replid is not None:
        lines.append(encode_control({"ctl": "replid", "o": REGION, "r": replid, "s": 0}))
    for offset, (dataset, fields) in enumerate(items):
        seq = first_seq + offset
        lines.append(encode_record(REGION, seq, fields["ts"] + 2000, dataset, fields).line)
    return b"".join(line + b"\n" for line in lines)


@dataclass(frozen=True)
class Input:
    """Journal ``A`` (even events) and ``B`` (odd events, plus copies of A's first trades)."""

    a: bytes
    b: bytes


def make_input() -> Input:
    hour = (time.time_ns() // HOUR_NS - 2) * HOUR_NS  # closed long ago, kept in sealer state
    all_events = events(hour)
    even = [(d, f) for k, d, f in all_events if k % 2 == 0]
    odd = [(d, f) for k, d, f in all_events if k % 2 == 1]
    copies = [(d, f) for d, f in even if d == "trade"][:5]  # already sealed in phase 1
    a = journal_lines(even, first_seq=1, replid="a" * 40)
    b = journal_lines(odd + copies, first_seq=len(even) + 1, replid=None)
    return Input(a, b)


class Node:
    """One region's config and storage root; runs daemon processes on them one at a time."""

    def __init__(self, directory: Path) -> None:
        # A warm rule needs a peer; this one never answers, and is declared down
        # quickly so the file store lets this region seal as warm primary.
        self.spec = RegionSpec(
            REGION,
            free_port(),
            directory,
            peers={"us-east": free_port()},
            rules=[{"tier": "warm", "from": REGION, "to": ["us-east"], "lag_slo": "60s"}],
            sections={"hot": dict(HOT), "replication": {"peer_down_after": "200ms"}},
        )
        self.config = self.spec.write()
        self.root = self.spec.storage_root
        self.journal = self.root / "_state" / "hot" / "journal"
        self.log_path = self.config.with_suffix(".log")

    def write_journal(self, data: bytes) -> None:
        self.journal.mkdir(parents=True, exist_ok=True)
        (self.journal / f"{1:010d}.jsonl").write_bytes(data)

    def append_journal(self, data: bytes) -> None:
        newest = max(self.journal.glob("*.jsonl"))
        with newest.open("ab") as handle:
            handle.write(data)

    async def crash_at(self, failpoint: str) -> None:
        """Run with ``failpoint`` armed; it must end the process there."""
        mark = self.log_path.stat().st_size if self.log_path.exists() else 0
        proc = start_daemon_process(self.config, env={ENV_VAR: f"{failpoint}=exit"})
        try:
            code = await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            stop_process(proc)
            raise AssertionError(f"{failpoint} never fired:\n{self.log_text(mark)}") from None
        assert code == EXIT_CODE, f"exit {code}, not at {failpoint}:\n{self.log_text(mark)}"
        assert f"failpoint {failpoint}: exit" in self.log_text(mark)

    async def run_one_round(self) -> None:
        """Start, wait for a successful sealing round as primary, stop with SIGTERM."""
        mark = self.log_path.stat().st_size if self.log_path.exists() else 0
        proc = start_daemon_process(self.config)
        try:
            await wait_until_ready(self.spec.base_url, proc=proc, log_path=self.log_path)
            async with aiohttp.ClientSession() as session:
                deadline = time.monotonic() + 60
                while not await self._sealed_as_primary(session):
                    if time.monotonic() > deadline:
                        raise AssertionError(f"no sealing round:\n{self.log_text(mark)}")
                    await asyncio.sleep(0.1)
        finally:
            code = stop_process(proc)
        assert code == 0, self.log_text(mark)

    async def _sealed_as_primary(self, session: aiohttp.ClientSession) -> bool:
        async with session.get(f"{self.spec.base_url}/v1/status?tier=hot") as resp:
            body = await resp.json()
        sealer = body["tiers"]["hot"]["stream"]["sealer"]
        last = sealer.get("last_round")
        return bool(last and last["primary"] and sealer["last_error"] is None)

    def log_text(self, mark: int = 0) -> str:
        return self.log_path.read_bytes()[mark:].decode(errors="replace")


def partitions(root: Path) -> dict[str, dict[str, Any]]:
    """Every warm partition: its rows (sorted) and what its manifest says, for comparison."""
    found: dict[str, dict[str, Any]] = {}
    for success_or_manifest in sorted((root / "warm").rglob("_manifest.json")):
        directory = success_or_manifest.parent
        manifest = json.loads(success_or_manifest.read_text())
        data_files = sorted(p.name for p in directory.glob("*.parquet"))
        assert (directory / "_SUCCESS").is_file(), f"{directory} is not sealed"
        assert data_files == sorted(f["name"] for f in manifest["files"]), (
            f"{directory}: data files outside the manifest"
        )
        rows = []
        for name in data_files:
            rows += [
                json.dumps(r, sort_keys=True, default=str)
                for r in pq.read_table(directory / name).to_pylist()
            ]
        assert len(rows) == len(set(rows)), f"{directory}: duplicated rows"
        if "/trade/" in str(directory):
            ids = [json.loads(r)["trade_id"] for r in rows]
            assert len(ids) == len(set(ids)), f"{directory}: duplicated trades"
        found[str(directory.relative_to(root))] = {
            "rows": sorted(rows),
            "manifest_rows": manifest["rows"],
            "files": len(data_files),
            "sources": manifest["sources"],
            "worst_freshness_seconds": manifest["worst_freshness_seconds"],
        }
    return found


@dataclass
class Reference:
    """The clean run: partitions after each phase and the storage root after phase 1."""

    after_seal: dict[str, dict[str, Any]]
    after_late_fill: dict[str, dict[str, Any]]
    phase_1_root: Path


@pytest.fixture(scope="module")
def fixed_input() -> Input:
    return make_input()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, fixed_input: Input) -> Reference:
    node = Node(tmp_path_factory.mktemp("clean"))
    node.write_journal(fixed_input.a)
    asyncio.run(node.run_one_round())
    after_seal = partitions(node.root)
    snapshot = tmp_path_factory.mktemp("phase1") / "data"
    shutil.copytree(node.root, snapshot)
    node.append_journal(fixed_input.b)
    asyncio.run(node.run_one_round())
    return Reference(after_seal, partitions(node.root), snapshot)


def test_clean_run_seals_every_window_and_late_fills(
    reference: Reference, fixed_input: Input
) -> None:
    """The reference itself: phase 1 seals the even events of all three windows into
    trade and book partitions; phase 2 adds every odd (late) event once, books included,
    as late rows, and drops the copies of sealed trades."""
    even_lines = fixed_input.a.count(b'"s":') - 1  # minus the replid line
    late_lines = fixed_input.b.count(b'"s":') - 5  # minus the five trade copies
    assert {p.split("/")[1] for p in reference.after_seal} == {"trade", "book"}
    assert max(p["files"] for p in reference.after_seal.values()) == 3  # one per window
    total_1 = sum(p["manifest_rows"] for p in reference.after_seal.values())
    total_2 = sum(p["manifest_rows"] for p in reference.after_late_fill.values())
    assert total_1 == even_lines
    assert total_2 == even_lines + late_lines
    late_rows = {
        path: sum(s["late_rows"] for s in p["sources"])
        for path, p in reference.after_late_fill.items()
    }
    assert sum(late_rows.values()) == late_lines
    assert any(rows for path, rows in late_rows.items() if "/book/" in path)


@pytest.mark.parametrize("failpoint", PHASE_1)
async def test_crash_while_sealing_converges_after_restart(
    tmp_path: Path, fixed_input: Input, reference: Reference, failpoint: str
) -> None:
    """Killed at the fail point while sealing closed windows, the daemon restarted without
    it seals exactly the partitions a clean run seals: no row lost or doubled, sealed."""
    node = Node(tmp_path)
    node.write_journal(fixed_input.a)
    await node.crash_at(failpoint)
    await node.run_one_round()
    assert partitions(node.root) == reference.after_seal


@pytest.mark.parametrize("failpoint", PHASE_2)
async def test_crash_while_late_filling_converges_after_restart(
    tmp_path: Path, fixed_input: Input, reference: Reference, failpoint: str
) -> None:
    """Killed at the fail point while writing late records into sealed partitions, the
    daemon restarted without it ends with exactly the clean run's partitions: every late
    record once (books included), trade copies dropped, every partition sealed."""
    node = Node(tmp_path)
    shutil.copytree(reference.phase_1_root, node.root)
    node.append_journal(fixed_input.b)
    await node.crash_at(failpoint)
    await node.run_one_round()
    assert partitions(node.root) == reference.after_late_fill


def test_the_matrices_cover_every_fail_point() -> None:
    """No registered fail point is left out of a crash test: here, the replica's
    (test_failpoints_replica.py) or the object store's multipart resume
    (test_object_store.py and test_object_store_daemon.py)."""
    elsewhere = {name for name in KNOWN if name.startswith(("replica.", "multipart."))}
    assert set(PHASE_1) | set(PHASE_2) | elsewhere == set(KNOWN)
