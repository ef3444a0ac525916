"""Warm/cold replication benchmark: two daemons over loopback HTTP, baselines in the same run.

Measures, in one run on one disk:

1. **steady state at scale**: for each history size (``--history``, default
   10k and 100k sealed warm partitions; add 1000000 for a year), a synthetic
   history is built on both sides fast (per series one template Parquet file
   and ``_SUCCESS`` hard-linked into every partition, a real manifest rendered
   from a per-series template, two processes, written into both roots at once) and
   indexed in bulk through the daemons' own store (``ChangeFeed.import_index``);
   the daemons then start normally (their start-up scrub checks the disk
   against the index). The bench reports: the no-change feed pass (the
   scheduled steady state) and the digest (anti-entropy) pass, each as the
   daemon's own pass time and as the HTTP round trip of
   ``POST /v1/replication/sync``; sealed → committed at the replica for one
   new partition (sealed through the source's API, the replica polling its
   feed on its own); ``cryptorun replication status`` and ``simulate`` (CLI
   and HTTP); the replica's RSS (when ready, steady, peak); the event-loop
   lag p99 of both daemons next to an idle asyncio process's (the box's own
   scheduling latency); the work tree is removed afterwards;
2. **copy**: a verified copy of ``--size-mb`` MB of hourly Parquet (every
   byte hashed with xxh3-128, every file fsynced, manifests and _SUCCESS
   committed) vs ``cp -r`` of the same tree followed by ``sync``; prints the
   ratio, both daemons' CPU time (per thread role: event loop, copier
   threads, validation threads, ...; from ``/proc`` and ``py-spy dump``),
   their minor page faults, the ceiling that CPU time implies on two cores,
   and the pulling daemon's RSS idle and peak; ``--profile DIR`` adds a
   py-spy profile of both daemons.

Usage: ``python bench/replication.py [--size-mb 450] [--history 10000,100000,1000000]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cryptorun_daemon.storage.change_feed import ChangeFeed  # noqa: E402
from cryptorun_daemon.storage.layout import PartitionKey  # noqa: E402
from cryptorun_daemon.storage.manifest import FileEntry, Manifest, compute_manifest  # noqa: E402
from cryptorun_daemon.storage.seal import seal_partition  # noqa: E402
from tests.harness.admin import auth_headers  # noqa: E402
from tests.harness.daemons import (  # noqa: E402
    RegionSpec,
    stop_process,
    two_regions,
    wait_until_ready,
)
from tests.harness.testdata import seed_partitions, write_trade_partition  # noqa: E402

A, B = "eu-central", "us-east"
#: Series per hour in the synthetic history: 2 datasets x 50 markets.
DATASETS = ("trade", "book")
MARKETS = 50
SERIES = len(DATASETS) * MARKETS
HISTORY_START = datetime(2020, 1, 1, tzinfo=UTC)


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` so far (all threads)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (all threads)."""
    return sum(cpu_split(pid))


def minor_faults(pid: int) -> int:
    """Minor page faults of ``pid`` so far (fresh anonymous pages touched, all threads)."""
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rpartition(")")[2].split()[7])


def thread_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """(user, system) CPU seconds of every live thread of ``pid``, by thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    times: dict[int, tuple[float, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the thread ended meanwhile
        times[int(task.name)] = (int(fields[11]) / tick, int(fields[12]) / tick)
    return times


def thread_roles(pid: int) -> dict[int, str]:
    """Thread id → what it does in the copy, from the Python thread names (``py-spy dump``)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return {}
    dump = [spy, "dump", "-p", str(pid)]
    out = subprocess.run(dump, check=False, capture_output=True, text=True).stdout
    roles: dict[int, str] = {}
    for line in out.splitlines():
        if not line.startswith("Thread "):
            continue
        tid_text, _, rest = line[len("Thread ") :].partition(" ")
        name = rest.partition('"')[2].rstrip('"')
        roles[int(tid_text, 0)] = (
            "event loop (HTTP, aiohttp parsing, scheduling)"
            if name == "MainThread"
            else "copier threads (hash, write, fsync, commit)"
            if name.startswith("copier")
            else "validation threads (decode + checks)"
            if name.startswith("validate")
            else "default pool (plans, feed, metadata)"
            if name.startswith(("uvloop", "asyncio", "ThreadPoolExecutor"))
            else f"other ({name})"
        )
    return roles


def _native_role(pid: int, tid: int) -> str:
    """A thread Python does not know: Arrow's own pools (decoding, prefetch) or others."""
    try:
        comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except OSError:
        return "threads that ended"
    return f"native threads ({comm}: Arrow's decode and I/O pools, allocator)"


def cpu_by_role(
    pid: int, before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]]
) -> list[tuple[str, float, float]]:
    """(role, user, system) CPU seconds used between two :func:`thread_cpu` readings."""
    roles = thread_roles(pid)
    totals: dict[str, tuple[float, float]] = {}
    for tid, (user, system) in after.items():
        u0, s0 = before.get(tid, (0.0, 0.0))
        role = roles.get(tid) or _native_role(pid, tid)
        u, s = totals.get(role, (0.0, 0.0))
        totals[role] = (u + user - u0, s + system - s0)
    return sorted(((r, u, s) for r, (u, s) in totals.items()), key=lambda t: -(t[1] + t[2]))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def shell(*argv: str) -> None:
    """Run a command to completion without blocking the event loop."""
    proc = await asyncio.create_subprocess_exec(*argv)
    if await proc.wait() != 0:
        raise SystemExit(f"{argv} failed")


def start(config: Path) -> subprocess.Popen[bytes]:
    log = (config.parent / "daemon.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "cryptorun_daemon", "daemon", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=config.parent,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


async def sync(base_url: str, tier: str, check: str) -> tuple[dict[str, Any], float]:
    """One pass through the API; the report and the HTTP round trip in seconds."""
    timeout = aiohttp.ClientTimeout(total=3600)
    started = time.monotonic()
    async with (
        aiohttp.ClientSession(headers=auth_headers(), timeout=timeout) as session,
        session.post(
            f"{base_url}/v1/replication/sync", json={"tier": tier, "from": A, "check": check}
        ) as resp,
    ):
        doc = await resp.json()
        if resp.status != 200:
            raise SystemExit(f"sync failed: {doc}")
    return dict(doc["passes"][0]), time.monotonic() - started


async def lag_buckets(base_url: str) -> dict[float, float]:
    """Cumulative bucket counts of ``cryptorun_event_loop_lag_seconds`` right now."""
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/metrics") as resp:
        text = await resp.text()
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "cryptorun_event_loop_lag_seconds":
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                buckets[float(sample.labels["le"])] = sample.value
    return buckets


def p99_between(before: dict[float, float], after: dict[float, float]) -> tuple[float, float, int]:
    """(p99 upper bound, worst bucket bound, ticks) of the ticks between two scrapes."""
    delta = sorted((le, after[le] - before.get(le, 0.0)) for le in after)
    total = delta[-1][1] if delta else 0
    p99 = next((le for le, n in delta if n >= 0.99 * total), float("inf"))
    worst = next((le for le, n in delta if n >= total), float("inf"))
    return p99, worst, int(total)


def configure(a: RegionSpec, b: RegionSpec, concurrency: int, validations: int = 2) -> None:
    for spec in (a, b):
        spec.sections["replication"] = {
            "max_concurrency": concurrency,
            "max_validations": validations,
        }
        spec.sections["log"] = {"level": "warning"}


# --- synthetic history ------------------------------------------------------------------


def _series(index: int) -> tuple[int, int]:
    """(dataset, market) of the ``index``-th series of an hour."""
    return divmod(index, MARKETS)


def manifest_template(template: Path) -> tuple[FileEntry, str]:
    """The file entry of ``template`` and its schema fingerprint (hashed once)."""
    facts = compute_manifest(
        template.parent, _key(0, 0, 0), writer_region=A, epoch=1, sealed_at=HISTORY_START
    )
    assert facts.schema_fingerprint is not None  # a Parquet file has a schema
    return facts.files[0], facts.schema_fingerprint


def manifest_bytes(key: PartitionKey, entry: FileEntry, fingerprint: str) -> bytes:
    """The manifest a writer would seal ``key`` with (the slow, exact form)."""
    return Manifest(
        tier="warm",
        partition=key.relpath,
        files=(entry,),
        schema_fingerprint=fingerprint,
        writer_region=A,
        epoch=1,
        sealed_at=key.end,
    ).to_bytes()


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def build_series(roots: list[Path], count: int, series: int, template: Path) -> int:
    """Write the partitions of one series (every ``SERIES``-th partition of the history).

    Per partition and root: a directory, the series' copy of the template
    Parquet file and an empty ``_SUCCESS`` hard-linked in (kept under the
    first root's ``.bench/``, linked into every root as ``cp -al`` would),
    and a real manifest. The manifest differs
    between hours only in its partition path, window and seal time, so it is
    rendered once per series and those strings are replaced per hour; the
    first and last partition of the series are checked against the exact
    rendering. Returns the partitions written.
    """
    entry, fingerprint = manifest_template(template)
    dataset, market = _series(series)
    first = _key(0, dataset, market)
    text = manifest_bytes(first, entry, fingerprint).decode()
    # One template copy per series: a filesystem caps the links to one inode
    # (ext4: 65,000), and a year is 10,000 partitions per series.
    own = roots[0] / ".bench" / f"series-{series:03d}"
    own.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, own / entry.name)
    (own / "_SUCCESS").write_bytes(b"")
    template, success = own / entry.name, own / "_SUCCESS"
    bases = [first.directory(root).parent.parent for root in roots]  # .../symbol=...
    made = 0
    day_made = ""
    hours = range(series, count, SERIES)
    for index in hours:
        hour = index // SERIES
        start = HISTORY_START + timedelta(hours=hour)
        day = start.date().isoformat()
        hour_part = f"date={day}/hour={start.hour:02d}"
        rendered = (
            text.replace("date=2020-01-01/hour=00", hour_part)
            .replace('"2020-01-01T01:00:00Z"', f'"{_stamp(start + timedelta(hours=1))}"')
            .replace('"2020-01-01T00:00:00Z"', f'"{_stamp(start)}"')
        )
        if index in (hours[0], hours[-1]):
            exact = manifest_bytes(_key(hour, dataset, market), entry, fingerprint).decode()
            assert rendered == exact, (rendered, exact)
        for base in bases:
            if day != day_made:
                (base / f"date={day}").mkdir(parents=True, exist_ok=True)
            directory = base / hour_part
            os.mkdir(directory)
            os.link(template, directory / entry.name)
            (directory / "_manifest.json").write_text(rendered)
            os.link(success, directory / "_SUCCESS")
        day_made = day
        made += 1
    return made


def history_rows(count: int, content_hash: str) -> Iterator[tuple[str, str, int]]:
    """``(partition path, content hash, epoch)`` of every partition :func:`build_history` makes."""
    prefixes = []
    for series in range(SERIES):
        dataset, market = _series(series)
        prefixes.append(f"{DATASETS[dataset]}/venue=kraken/symbol=M{market:03d}-USD")
    for index in range(count):
        hour, series = divmod(index, SERIES)
        start = HISTORY_START + timedelta(hours=hour)
        yield (
            f"{prefixes[series]}/date={start.date().isoformat()}/hour={start.hour:02d}",
            content_hash,
            1,
        )


def build_history(roots: list[Path], count: int, template: Path, workers: int = 2) -> str:
    """``count`` sealed warm partitions under each of ``roots`` (see :func:`build_series`).

    Series are written by ``workers`` processes, into every root in the same
    pass (one walk of the history instead of a build plus ``cp -al``). Returns
    the content hash every partition shares (same file, same schema), for the
    index import.
    """
    entry, fingerprint = manifest_template(template)
    for root in roots:
        (root / "warm").mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        made = sum(
            pool.map(
                build_series,
                [roots] * SERIES,
                [count] * SERIES,
                range(SERIES),
                [template] * SERIES,
            )
        )
    assert made == count, (made, count)
    return Manifest(
        tier="warm",
        partition=_key(0, 0, 0).relpath,
        files=(entry,),
        schema_fingerprint=fingerprint,
        writer_region=A,
        epoch=1,
        sealed_at=HISTORY_START,
    ).content_hash


def import_history(root: Path, count: int, content_hash: str) -> int:
    """Index the built history in ``root``'s change feed in bulk (the daemon's own store)."""
    feed = ChangeFeed(root)
    try:
        return feed.import_index("warm", history_rows(count, content_hash))
    finally:
        feed.close()


def _key(hour: int, dataset: int, market: int) -> PartitionKey:
    moment = HISTORY_START + timedelta(hours=hour)
    return PartitionKey(
        day=moment.date(),
        hour=moment.hour,
        tier="warm",
        dataset=DATASETS[dataset],
        venue="kraken",
        symbol=f"M{market:03d}-USD",
    )


async def wait_indexed(a_url: str, b_url: str, count: int) -> None:
    """Until A's index holds ``count`` partitions and B's digests equal A's."""
    async with aiohttp.ClientSession(headers=auth_headers()) as session:
        while True:
            async with session.get(
                f"{a_url}/v1/partitions/digest", params={"tier": "warm"}
            ) as resp:
                doc = await resp.json() if resp.status == 200 else {"days": {}}
            held = sum(int(v[0]) for v in doc["days"].values())
            if held >= count:
                break
            await asyncio.sleep(1)
    while True:
        report, _ = await sync(b_url, "warm", "digest")
        ae = report.get("anti_entropy") or {}
        if report["ok"] and ae.get("differences") == 0:
            return
        await asyncio.sleep(1)


async def divergence_check(url: str) -> dict[str, Any]:
    """The replica's divergence walk as its status shows it."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{url}/v1/status", params={"tier": "warm"}) as resp,
    ):
        doc = await resp.json()
    return dict(doc["tiers"]["warm"]["reconciliation"]["divergence_check"] or {})


async def wait_following(url: str) -> None:
    """Until the replica's link from A holds a feed position (its first pass is over)."""
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"{url}/v1/status", params={"tier": "warm"}) as resp:
                doc = await resp.json()
            link = doc["tiers"]["warm"]["sources"].get(A) or {}
            if (link.get("feed") or {}).get("position") is not None:
                return
            await asyncio.sleep(0.1)


class RssSampler:
    """Peak RSS of a process, sampled every 50 ms while running (``with``-style, async)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mb(self.pid))
            await asyncio.sleep(0.05)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> float:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return self.peak


#: A process doing nothing but a 100 ms asyncio tick: how late a tick wakes on this
#: box right now, whatever the daemons do (the baseline of the loop-lag figures).
LAG_PROBE = """
import asyncio, sys
async def main():
    loop = asyncio.get_running_loop()
    while True:
        t = loop.time()
        await asyncio.sleep(0.1)
        print(f"{loop.time() - t - 0.1:.4f}", flush=True)
asyncio.run(main())
"""


class LagProbe:
    """Runs :data:`LAG_PROBE` in its own process and collects its ticks' lateness."""

    def __init__(self) -> None:
        self.late: list[float] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> LagProbe:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", LAG_PROBE, stdout=asyncio.subprocess.PIPE
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self._proc is not None
        assert self._proc.stdout is not None
        async for line in self._proc.stdout:
            self.late.append(float(line))

    async def result(self) -> str:
        """Stop the probe; its p99 and worst tick lateness as a sentence."""
        assert self._proc is not None
        assert self._reader is not None
        self._proc.terminate()
        await self._proc.wait()
        await self._reader
        late = sorted(self.late)
        if not late:
            return "baseline lag probe: no ticks"
        return (
            f"baseline, an idle asyncio process's 100 ms tick over the same time: p99 "
            f"{late[int(0.99 * (len(late) - 1))] * 1000:.0f} ms, worst {late[-1] * 1000:.0f} "
            f"ms over {len(late)} ticks"
        )


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}"


async def cli_seconds(*argv: str) -> float:
    """Wall time of one ``cryptorun`` CLI run (a fresh interpreter, as an operator runs it)."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cryptorun_daemon",
        *argv,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"cryptorun {' '.join(argv)} failed: {err.decode()[-500:]}")
    return time.monotonic() - started


async def bench_history(
    work: Path, count: int, concurrency: int, template: Path, scrub_max: int
) -> None:
    print(f"\n== history of {count:,} sealed warm partitions ({load()}) ==")
    base = work / f"history-{count}"
    a, b = two_regions(base, rules=[{"tier": "warm", "from": A, "to": [B], "lag_slo": "1h"}])
    configure(a, b, concurrency)
    t = time.monotonic()
    content_hash = await asyncio.to_thread(
        build_history, [a.storage_root, b.storage_root], count, template
    )
    build = time.monotonic() - t
    t = time.monotonic()
    for spec in (a, b):
        await asyncio.to_thread(import_history, spec.storage_root, count, content_hash)
    print(
        f"built in {build:.1f}s (both roots: hard links + manifests, 2 processes) + "
        f"{time.monotonic() - t:.1f}s (bulk index import into both change feeds)  ({load()})"
    )
    procs = [start(a.write()), start(b.write())]
    sampler = RssSampler(procs[1].pid)
    try:
        t = time.monotonic()
        sampler.start()
        for spec, proc in zip((a, b), procs, strict=True):
            # A first start walks every manifest once for the divergence check
            # (docs/WARM_COLD.md): minutes at a year's size on a loaded box.
            await wait_until_ready(spec.base_url, proc=proc, timeout=3600)
        print(
            f"both daemons ready after {time.monotonic() - t:.1f}s; replica RSS peak so far "
            f"{sampler.peak:.0f} MB  ({load()})"
        )
        rss_ready = rss_mb(procs[1].pid)
        walk = await divergence_check(b.base_url)
        print(f"replica's divergence walk when ready (runs in the background): {walk}")
        t = time.monotonic()
        await wait_indexed(a.base_url, b.base_url, count)
        print(
            f"start-up scrub (both daemons, worker threads) checked the disk against the "
            f"index and the first digest pass agreed after {time.monotonic() - t:.1f}s; "
            f"replica RSS {rss_ready:.0f} MB when ready, {rss_mb(procs[1].pid):.0f} MB after  "
            f"({load()})"
        )
        print(f"replica's divergence walk after that: {await divergence_check(b.base_url)}")

        lag_before = {spec.region: await lag_buckets(spec.base_url) for spec in (a, b)}
        probe = await LagProbe().start()
        passes, trips = [], []
        for _ in range(7):
            report, trip = await sync(b.base_url, "warm", "feed")
            assert report["ok"], report
            assert report["steps"] == 0, report
            passes.append(float(report["seconds"]))
            trips.append(trip)
        print(
            f"no-change feed pass: median {statistics.median(passes) * 1000:.1f} ms "
            f"(max {max(passes) * 1000:.1f}) in the daemon, HTTP round trip median "
            f"{statistics.median(trips) * 1000:.1f} ms  (target < 50 ms, flat in history; "
            f"{load()})"
        )
        if count <= scrub_max:
            # Baseline from the same run: the full listing every pass fetched before
            # the feed (the source scanned its catalog and rendered every manifest).
            async with aiohttp.ClientSession(headers=auth_headers()) as session:
                listings = []
                for _ in range(2):
                    t = time.monotonic()
                    async with session.get(
                        f"{a.base_url}/v1/partitions",
                        params={"tier": "warm", "purpose": "source"},
                        timeout=aiohttp.ClientTimeout(total=3600),
                    ) as resp:
                        size = len(await resp.read())
                    listings.append(time.monotonic() - t)
            print(
                f"baseline, the full listing a pass fetched before the feed: {size / 1e6:.1f} "
                f"MB in {listings[0]:.2f}s cold, {listings[1]:.2f}s warm (before parsing and "
                f"scanning the replica's own catalog; {load()})"
            )
        report, trip = await sync(b.base_url, "warm", "digest")
        ae = report["anti_entropy"]
        print(
            f"digest pass (anti-entropy, {ae['days']} days compared, "
            f"{ae['differences']} differences): {report['seconds'] * 1000:.0f} ms in the daemon, "
            f"{trip * 1000:.0f} ms round trip  ({load()})"
        )

        key = PartitionKey(
            # After any history built here and before now (the planner never
            # replicates a partition whose hour has not ended).
            day=datetime(2026, 6, 1, tzinfo=UTC).date(),
            hour=0,
            tier="warm",
            dataset="trade",
            venue="kraken",
            symbol="NEW-USD",
        )
        await asyncio.to_thread(write_trade_partition, a.storage_root, key, rows=1000, origin=A)
        target = key.directory(b.storage_root) / "_SUCCESS"
        async with aiohttp.ClientSession(headers=auth_headers()) as session:
            t = time.monotonic()
            async with session.post(
                f"{a.base_url}/v1/partitions/seal",
                json={"tier": "warm", "partition": key.relpath},
            ) as resp:
                assert resp.status == 200, await resp.text()
            sealed = time.monotonic()
            while not target.exists():  # noqa: ASYNC110 - a file, not an in-process event
                await asyncio.sleep(0.01)
            arrived = time.monotonic()
        rss_new = rss_mb(procs[1].pid)
        print(
            f"new partition (replica RSS {rss_new:.0f} MB after): sealed (API answered) "
            f"after {(sealed - t) * 1000:.0f} ms, committed at the replica "
            f"{arrived - sealed:.2f}s after the seal  (target <= 2 s; {load()})"
        )

        # Operators' commands over this catalog, as they run them (fresh CLI
        # process); the baseline is the CLI's own start-up (``--help``).
        config = str(b.write())
        startup = await cli_seconds("replication", "status", "--help")
        status_s = await cli_seconds("replication", "status", "--config", config)
        middle = HISTORY_START + timedelta(days=(count // SERIES) // 48)
        simulated = []
        for hours in (6, 24):
            window = f"{_stamp(middle)}/{_stamp(middle + timedelta(hours=hours))}"
            seconds = await cli_seconds(
                "replication", "simulate", "--from", A, "--to", B, "--tier", "warm",
                "--window", window, "--config", config,
            )  # fmt: skip
            simulated.append(f"{hours} h window ({hours * SERIES:,} partitions) {seconds:.2f}s")
        print(
            f"cryptorun replication status: {status_s:.2f}s; simulate of a "
            f"{'; '.join(simulated)}; baseline, the CLI's start-up alone (--help): "
            f"{startup:.2f}s  (target < 1 s; {load()})"
        )
        # The same requests without the CLI's interpreter start-up (HTTP round trips).
        async with aiohttp.ClientSession(headers=auth_headers()) as session:
            t = time.monotonic()
            async with session.get(f"{b.base_url}/v1/status") as resp:
                await resp.read()
            status_trip = time.monotonic() - t
            trips_sim = []
            for hours in (6, 24):
                window = f"{_stamp(middle)}/{_stamp(middle + timedelta(hours=hours))}"
                t = time.monotonic()
                async with session.post(
                    f"{b.base_url}/v1/replication/simulate",
                    json={"from": A, "to": B, "tier": "warm", "window": window},
                ) as resp:
                    assert resp.status == 200, await resp.text()
                    await resp.read()
                trips_sim.append(f"{hours} h {time.monotonic() - t:.2f}s")
        print(
            f"the same over HTTP: GET /v1/status {status_trip:.2f}s; POST simulate "
            f"{', '.join(trips_sim)}  ({load()})"
        )

        # Ten seconds of steady state: the replica polls the feed on its own.
        await asyncio.sleep(10)
        print(
            f"replica RSS: {rss_mb(procs[1].pid):.0f} MB steady, peak {sampler.peak:.0f} MB "
            f"since start-up (targets < 150 / < 200 MB); source RSS {rss_mb(procs[0].pid):.0f} MB"
        )
        print(await probe.result())
        for name, spec in (("source", a), ("replica", b)):
            p99, worst, ticks = p99_between(
                lag_before[spec.region], await lag_buckets(spec.base_url)
            )
            print(
                f"event-loop lag of the {name} during the above and 10 s idle: p99 <= "
                f"{p99 * 1000:.0f} ms, worst <= {worst * 1000:.0f} ms over {ticks} ticks  "
                f"(target p99 < 50 ms)"
            )
        if count <= scrub_max:
            before = await lag_buckets(b.base_url)
            probe = await LagProbe().start()
            report, _trip = await sync(b.base_url, "warm", "full")
            print(await probe.result())
            p99, worst, ticks = p99_between(before, await lag_buckets(b.base_url))
            print(
                f"full check at the replica (scrub of {report['scrub']['partitions']:,} "
                f"partitions in a worker thread + digest comparison): {report['seconds']:.1f}s; "
                f"event-loop lag meanwhile p99 <= {p99 * 1000:.0f} ms, worst <= "
                f"{worst * 1000:.0f} ms over {ticks} ticks  (target p99 < 50 ms; {load()})"
            )
        print(f"replica RSS peak over the whole run: {await sampler.stop():.0f} MB")
    finally:
        await sampler.stop()
        for proc in procs:
            stop_process(proc)
        t = time.monotonic()
        await shell("rm", "-rf", str(base))
        print(f"(cleaned up in {time.monotonic() - t:.0f}s)")


# --- copy ---------------------------------------------------------------------------------


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    """``py-spy record --gil`` of ``pid``: raw collapsed stacks of the thread holding the GIL."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy not found: no profile")
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [spy, "record", "-p", str(pid), "-o", str(out), "--format", "raw", "-r", "100", "--gil"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_profiler(proc: subprocess.Popen[bytes] | None, out: Path, title: str) -> None:
    """Stop ``py-spy`` and print the top entries: self share and inclusive share per function."""
    if proc is None:
        return
    proc.send_signal(2)
    proc.wait(timeout=60)
    if not out.exists():
        print(f"{title}: no profile written")
        return
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [
            f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].rstrip(")") for f in stack.split(";")
        ]
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames[1:]):
            inclusive[frame] = inclusive.get(frame, 0) + count
    print(f"{title}: {total} samples (all threads, idle left out)")
    for name, count in sorted(own.items(), key=lambda kv: -kv[1])[:12]:
        share = 100 * count / max(1, total)
        incl = 100 * inclusive.get(name, count) / max(1, total)
        print(f"  self {share:5.1f}%  incl {incl:5.1f}%  {name}")
    print("  top inclusive:")
    for name, count in sorted(inclusive.items(), key=lambda kv: -kv[1])[:15]:
        print(f"  incl {100 * count / max(1, total):5.1f}%  {name}")


def validate_all(staged: Path, threads: int) -> tuple[float, float]:
    """(wall, CPU seconds) of the daemon's step validator over every staged Parquet file."""
    from concurrent.futures import ThreadPoolExecutor

    from prometheus_client import CollectorRegistry

    from cryptorun_daemon.config.model import ValidationConfig
    from cryptorun_daemon.data.validate.batch import partition_validator
    from cryptorun_daemon.metrics import Metrics

    validate = partition_validator(
        region=B,
        config=ValidationConfig(),
        metrics=Metrics(CollectorRegistry()),
        storage_root=staged,
    )
    files = sorted((staged / "warm").rglob("*.parquet"))
    wall, cpu = time.monotonic(), time.process_time()
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        verdicts = list(pool.map(lambda f: validate(f, "trade", "warm"), files))
    assert all(v.ok for v in verdicts), "the staged files must validate"
    return time.monotonic() - wall, time.process_time() - cpu


async def bench_copy(
    work: Path, size_mb: int, concurrency: int, validations: int, profile: Path | None = None
) -> None:
    print(f"\n== verified copy of ~{size_mb} MB of hourly Parquet ==")
    staged = work / "staged"
    t = time.monotonic()
    symbols = ("BTC-USD", "ETH-USD", "SOL-USD")
    rows = 100_000  # ~5 MB per hourly partition with snappy
    hours = max(1, round(size_mb / 5.0 / len(symbols)))
    written = await asyncio.to_thread(
        seed_partitions,
        staged,
        tier="warm",
        start=datetime(2025, 8, 1, tzinfo=UTC),
        count=hours,
        symbols=symbols,
        rows=rows,
        seal=False,
    )
    big = tree_bytes(staged / "warm")
    print(
        f"generated {len(written)} warm partitions, {big / 1e6:.0f} MB "
        f"in {time.monotonic() - t:.1f}s"
    )
    await shell("sync")
    cp_target = work / "cp-copy"
    t = time.monotonic()
    await shell("cp", "-r", str(staged / "warm"), str(cp_target))
    await shell("sync")
    cp_seconds = time.monotonic() - t
    cp_rate = big / cp_seconds / 1e6
    print(f"cp -r + sync: {big / 1e6:.0f} MB in {cp_seconds:.2f}s = {cp_rate:.0f} MB/s")
    shutil.rmtree(cp_target)
    # Baseline from the same run: what the replica's step validation alone costs
    # (the daemon's own validator on every staged file, ``validations`` threads).
    v_wall, v_cpu = await asyncio.to_thread(validate_all, staged, validations)
    print(
        f"baseline, step validation alone (the daemon's validator, {validations} threads, "
        f"files in the page cache): {v_wall:.2f}s wall, {v_cpu:.2f}s CPU = "
        f"{big / v_wall / 1e6:.0f} MB/s  (load {os.getloadavg()[0]:.1f})"
    )

    a, b = two_regions(
        work / "regions", rules=[{"tier": "warm", "from": A, "to": [B], "lag_slo": "1h"}]
    )
    configure(a, b, concurrency, validations)
    print(f"replication.max_validations = {validations}")
    # The timed pass below is the one that copies: the replica polls hourly here.
    b.sections["replication"]["feed_poll_interval"] = "1h"
    procs = [start(a.write()), start(b.write())]
    try:
        for spec, proc in zip((a, b), procs, strict=True):
            await wait_until_ready(spec.base_url, proc=proc)
        # The replica's first pass (anti-entropy: no feed position yet) must be over,
        # so the timed pass below follows the feed as a steady-state replica does.
        await wait_following(b.base_url)
        (a.storage_root / "warm").mkdir(parents=True, exist_ok=True)
        os.rename(staged / "warm" / "trade", a.storage_root / "warm" / "trade")
        # Sealed in place, as a writer would: every seal enters the source's feed.
        for directory in written:
            moved = a.storage_root / directory.relative_to(staged)
            await asyncio.to_thread(seal_partition, moved, writer_region=A, epoch=1)
        await shell("sync")

        peak = 0.0
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, rss_mb(procs[1].pid))
                await asyncio.sleep(0.02)

        sampler = asyncio.create_task(sample())
        rss_before = rss_mb(procs[1].pid)
        lag_before = await lag_buckets(b.base_url)
        spies = (
            [start_profiler(p.pid, profile / f"{n}.txt") for n, p in zip("AB", procs, strict=True)]
            if profile is not None
            else []
        )
        load = os.getloadavg()
        split_before = [cpu_split(p.pid) for p in procs]
        threads_before = [thread_cpu(p.pid) for p in procs]
        faults_before = [minor_faults(p.pid) for p in procs]
        report, seconds = await sync(b.base_url, "warm", "feed")
        split_used = [
            (u1 - u0, s1 - s0)
            for (u0, s0), (u1, s1) in zip(
                split_before, [cpu_split(p.pid) for p in procs], strict=True
            )
        ]
        threads_after = [thread_cpu(p.pid) for p in procs]
        faults_used = [minor_faults(p.pid) - f for p, f in zip(procs, faults_before, strict=True)]
        cpu_used = [u + s for u, s in split_used]
        done.set()
        await sampler
        for name, spy in zip(("source", "puller"), spies, strict=False):
            assert profile is not None
            stop_profiler(spy, profile / f"{'AB'[name == 'puller']}.txt", f"py-spy of the {name}")
        print(f"load average at the start of the timed pass: {load[0]:.2f} {load[1]:.2f}")
        if report["anti_entropy"] is not None or report["partitions_committed"] != len(written):
            print(f"NOTE: the timed pass was not a plain feed pass: {report}")
        moved_bytes = int(report["bytes"])
        rate = moved_bytes / seconds / 1e6
        print(
            f"daemon pull (HTTP, xxh3 verify, fsync, atomic commit): {moved_bytes / 1e6:.0f} MB "
            f"in {seconds:.2f}s = {rate:.0f} MB/s; committed "
            f"{report['partitions_committed']} partitions, ok={report['ok']}"
        )
        print(
            f"CPU during the pass: source {cpu_used[0]:.2f}s, puller {cpu_used[1]:.2f}s "
            f"({cpu_used[1] / seconds:.2f} cores) over {seconds:.2f}s wall; puller user "
            f"{split_used[1][0]:.2f}s + system {split_used[1][1]:.2f}s"
        )
        print(f"RATIO daemon / (cp -r + sync) = {rate / cp_rate:.2f}x  (target >= 0.9x)")
        # Where the CPU went, per process and per thread role (the roles are the
        # pipeline's stages: the loop receives every byte, the copier threads hash,
        # write and fsync, the validation threads decode and check).
        for name, proc, t0, t1, faults in zip(
            ("source", "puller"), procs, threads_before, threads_after, faults_used, strict=True
        ):
            print(f"CPU account of the {name} ({faults:,} minor page faults):")
            for role, user, system in cpu_by_role(proc.pid, t0, t1):
                if user + system >= 0.005:
                    total = user + system
                    print(f"  {total:5.2f}s = {user:.2f} user + {system:.2f} system  {role}")
        total_cpu = sum(cpu_used)
        print(
            f"both daemons: {total_cpu:.2f} CPU-s for the pass; on 2 cores at best "
            f"{total_cpu / 2:.2f}s, i.e. a ceiling of {cp_seconds / (total_cpu / 2):.2f}x "
            f"of cp -r + sync's {cp_seconds:.2f}s (validation alone: {v_cpu:.2f} CPU-s)"
        )
        print(
            f"RSS of pulling daemon: {rss_before:.0f} MB idle, peak {peak:.0f} MB while "
            f"copying  (target < 200 MB)"
        )
        p99, worst, ticks = p99_between(lag_before, await lag_buckets(b.base_url))
        print(
            f"event-loop lag of the puller while copying: p99 <= {p99 * 1000:.0f} ms, worst "
            f"<= {worst * 1000:.0f} ms over {ticks} ticks"
        )
        again, _ = await sync(b.base_url, "warm", "digest")
        print(f"a digest pass afterwards moved {again['bytes']} bytes")
    finally:
        for proc in procs:
            stop_process(proc)


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=450, help="0 skips the copy benchmark")
    parser.add_argument(
        "--history",
        default="10000,100000",
        help="comma-separated history sizes (add 1000000 for a year); empty skips them",
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="replication.max_concurrency of the daemons"
    )
    parser.add_argument(
        "--validations", type=int, default=2, help="replication.max_validations (copy part)"
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="work directory (default: the system temp dir)"
    )
    parser.add_argument(
        "--scrub-max",
        type=int,
        default=100_000,
        help="history sizes up to this also run the full listing baseline and a full scrub",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="directory for py-spy profiles of both daemons during the timed copy",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-repl-", dir=args.dir))
    print(f"work dir {work}; replication.max_concurrency = {args.concurrency}")
    try:
        template_dir = work / "template"
        template_key = _key(0, 0, 0)
        write_trade_partition(template_dir, template_key, rows=20, origin=A)
        template = next(template_key.directory(template_dir).glob("*.parquet"))
        for count in (int(c) for c in args.history.split(",") if c.strip()):
            await bench_history(work, count, args.concurrency, template, args.scrub_max)
        if args.size_mb > 0:
            await bench_copy(work, args.size_mb, args.concurrency, args.validations, args.profile)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
