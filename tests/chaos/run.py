"""``scripts/chaos.sh``: one seeded chaos run, from an empty cluster to a verdict.

Phases (each logged to the history as an ``event``):

1. **build** — namespaces, links, tmpfs roots, etcd, Kraken servers, proxies, daemons;
2. **faults** — the seeded schedule for ``--duration`` seconds, with the
   observer scraping every region each second and a supervisor restarting
   daemons (unexpected exits are recorded);
3. **heal** — every fault undone; then **settle**: wait until every region is
   ready and each tier's lag is under its SLO (the times go into the checker);
4. **quiesce** — the Kraken servers stop (no new data), and the run waits
   until sealed partitions and hot streams have converged, then stops the
   daemons (SIGTERM) and copies each storage root to ``OUT/storage/REGION``;
5. **check** — :mod:`tests.chaos.checker` judges the run; :mod:`tests.chaos.report`
   writes ``report.json`` and ``timeline.png`` and prints the table.

Exit status: 0 every invariant holds, 1 a violation, 3 a missing capability
(not root, no etcd, no libfaketime; with ``CI=true`` the caller must treat
this as a failure), 4 another chaos run on this host holds the cluster's
namespaces (runs take :data:`RUN_LOCK`; a second run used to tear the first
one's cluster down on its way out). ``--cleanup`` removes namespaces and
mounts left by a killed run and exits (4 while a live run holds the lock).
``--check-only OUT`` re-runs the checker on a finished run.

Resource handling: namespaces, mounts and processes are removed in a
``finally`` block and again by ``atexit``, so neither a violation nor an
exception nor Ctrl-C leaves them behind.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import fcntl
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.chaos import netns
from tests.chaos.checker import check_run
from tests.chaos.cluster import (
    HOT_SLO,
    PARTITION_LENGTH,
    REGIONS,
    SEAL_GRACE,
    WARM_SLO,
    Cluster,
    ClusterError,
    admin_url,
    dump_json,
    etcd_url_from,
    faketime_available,
)
from tests.chaos.history import History
from tests.chaos.journal_archive import JournalArchiver
from tests.chaos.nemesis import Nemesis, make_schedule
from tests.chaos.observer import Observer
from tests.chaos.report import print_table, write_report

EXIT_VIOLATION = 1
EXIT_MISSING = 3
EXIT_BUSY = 4
#: Held (flock) by a live run or ``--cleanup``: the namespaces, veth addresses and
#: mount points are fixed names, so two runs on one host would share them.
RUN_LOCK = Path(tempfile.gettempdir()) / "cryptorun-chaos.lock"


def hold_run_lock() -> int | None:
    """Take :data:`RUN_LOCK` without waiting: the open descriptor, or None if held.

    The lock lives as long as the process (the descriptor is never closed), so a
    killed run frees it at once and ``--cleanup`` can then remove what it left.
    """
    fd = os.open(RUN_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def busy(what: str) -> int:
    """Say that another run holds the cluster (with its pid) and return :data:`EXIT_BUSY`."""
    try:
        holder = RUN_LOCK.read_text(encoding="utf-8").strip() or "?"
    except OSError:
        holder = "?"
    print(
        f"chaos: {what}: another chaos run (pid {holder}) holds {RUN_LOCK}; "
        "its namespaces and mounts are in use — wait for it or stop it first",
        flush=True,
    )
    return EXIT_BUSY


SETTLE_TIMEOUT = 4 * WARM_SLO + 30
FRESH_SAMPLE = 5.0
CONVERGE_TIMEOUT = 3 * WARM_SLO + 30


def missing_capabilities() -> list[str]:
    """What this host lacks for a run: root/netns, etcd, libfaketime."""
    missing = netns.capabilities()
    if shutil.which("etcd") is None:
        missing.append("etcd (Debian package etcd-server)")
    if not faketime_available():
        missing.append("libfaketime (Debian package faketime)")
    return missing


def etcd_tier(tier: str = "warm") -> dict[str, Any] | None:
    """The TierState document in etcd (from the root namespace), None if unreadable."""
    key = base64.b64encode(f"/cryptorun/tiers/{tier}".encode()).decode()
    request = urllib.request.Request(
        f"{etcd_url_from(netns.ROOT_NODE)}/v3/kv/range",
        data=json.dumps({"key": key}).encode(),
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:
            doc = json.load(resp)
    except (OSError, ValueError):
        return None
    kvs = doc.get("kvs") or []
    if not kvs:
        return None
    state = json.loads(base64.b64decode(kvs[0]["value"]))
    state["mod_revision"] = int(kvs[0].get("mod_revision", 0))
    return dict(state)


async def watch_etcd(history: History, stop: asyncio.Event) -> None:
    """Record every warm TierState change seen in etcd (epoch, primary) in the history."""
    last: tuple[Any, Any] | None = None
    while not stop.is_set():
        state = await asyncio.to_thread(etcd_tier)
        if state is not None and (state.get("epoch"), state.get("primary")) != last:
            last = (state.get("epoch"), state.get("primary"))
            history.append("event", event="etcd_tier", epoch=last[0], primary=last[1])
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass


async def supervise(cluster: Cluster, stop: asyncio.Event) -> None:
    """Play systemd: restart daemons that exited (see Cluster.supervise_once)."""
    while not stop.is_set():
        await asyncio.to_thread(cluster.supervise_once)
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except TimeoutError:
            pass


def settled(observer: Observer, now: float) -> dict[str, bool]:
    """Per condition, whether every region meets it in its latest answered scrape (≤ 5 s old)."""
    samples = [observer.latest_ok.get(r, {}) for r in REGIONS]
    fresh = all(now - float(s.get("mono", -1e9)) <= FRESH_SAMPLE for s in samples)
    return {
        "ready": fresh and all(s.get("ready") for s in samples),
        "hot": fresh and all((s.get("hot_lag") or 0) <= HOT_SLO for s in samples),
        "warm": fresh and all((s.get("warm_lag") or 0) <= WARM_SLO for s in samples),
    }


async def run_phases(
    cluster: Cluster, history: History, out: Path, seed: int, duration: float
) -> dict[str, Any]:
    """Faults, heal, settle, quiesce; returns the timings the checker needs."""
    observer = Observer(out / "samples.jsonl", history, cluster.token)
    stop = asyncio.Event()
    schedule = make_schedule(seed, duration)
    dump_json(out / "schedule.json", [f.__dict__ for f in schedule])
    nemesis = Nemesis(cluster, history, observer.primary)
    archiver = JournalArchiver({r: cluster.storage_root(r) for r in REGIONS}, out)
    timings: dict[str, Any] = {}
    async with asyncio.TaskGroup() as group:
        group.create_task(observer.run(stop))
        group.create_task(archiver.run(stop))
        group.create_task(supervise(cluster, stop))
        group.create_task(watch_etcd(history, stop))
        try:
            await asyncio.sleep(2)  # a first sample of every region before the first fault
            history.append(
                "event", event="faults_start", faults=len(schedule), load=os.getloadavg()
            )
            await nemesis.run(schedule, time.monotonic())
        finally:
            await asyncio.to_thread(nemesis.heal_all)
        timings["heal"] = history.now()
        print(f"[{timings['heal']:8.1f}s] healed; settling (lag under SLO, all ready)", flush=True)
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while time.monotonic() < deadline:
            state = settled(observer, history.now())
            for key, ok in state.items():
                # Lag counts from the moment every region is back up (ready): the
                # heal of a killed daemon is its restart.
                if ok and key not in timings and (key == "ready" or "ready" in timings):
                    timings[key] = history.now()
            if all(state.values()):
                break
            await asyncio.sleep(0.5)
        for key, ok in settled(observer, history.now()).items():
            timings[f"{key}_at_end_of_settle"] = ok
        history.append("event", event="settled", load=os.getloadavg(), **timings)
        timings["final_status"] = {r: observer.latest_ok.get(r) for r in REGIONS}
        # etcd as it was when those scrapes were taken: what "after healing" compares with.
        timings["etcd_at_settle"] = await asyncio.to_thread(etcd_tier)
        print(
            f"[{history.now():8.1f}s] quiescing: feeds stopped, waiting for convergence", flush=True
        )
        for kraken in cluster.krakens.values():
            await asyncio.to_thread(kraken.stop)
        history.append("event", event="feeds_stopped")
        timings["converged"] = await converge(cluster, history)
        stop.set()
    timings["nemesis"] = {"counts": dict(nemesis.counts), "errors": nemesis.errors}
    timings["schedule"] = len(schedule)
    timings["journal_archive"] = {"copies": archiver.copied, "errors": archiver.errors}
    timings["etcd_final"] = etcd_tier()
    return timings


async def converge(cluster: Cluster, history: History) -> float | None:
    """Wait until sealed partitions and hot stream positions agree everywhere (None: never).

    The feeds have just stopped, but the primary still seals the window holding
    their last records (up to one partition length plus the seal grace later),
    so nothing is compared before that; then the views must agree on two polls
    in a row, so a re-seal between them is noticed.
    """
    from tests.chaos.checker import hot_positions_agree, sealed_partitions

    await asyncio.sleep(PARTITION_LENGTH + SEAL_GRACE + 2)
    deadline = time.monotonic() + CONVERGE_TIMEOUT
    previous: list[dict[str, dict[str, str]]] | None = None
    while time.monotonic() < deadline:
        views = [
            await asyncio.to_thread(sealed_partitions, cluster.storage_root(r)) for r in REGIONS
        ]
        urls = [admin_url(r) for r in REGIONS]
        hot = await asyncio.to_thread(hot_positions_agree, urls, cluster.token)
        agree = hot and all(v == views[0] for v in views[1:])
        if agree and views == previous:
            history.append("event", event="converged")
            return history.now()
        previous = views if agree else None
        await asyncio.sleep(3)
    history.append("event", event="not_converged")
    return None


def run(seed: int, duration: float, out: Path) -> int:
    """One whole run; returns the exit status."""
    missing = missing_capabilities()
    if missing:
        print("chaos: missing capabilities: " + "; ".join(missing), flush=True)
        return EXIT_MISSING
    out.mkdir(parents=True, exist_ok=True)
    history = History(out / "history.jsonl")
    history.append("event", event="start", seed=seed, duration=duration, load=os.getloadavg())
    cluster = Cluster(out, history, seed=seed)

    def teardown() -> None:
        cluster.stop()
        netns.cleanup()

    atexit.register(teardown)
    # SIGTERM (a CI time-out, `kill`) unwinds like Ctrl-C, so the finally below cleans up.
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    print(f"chaos: seed {seed}, {duration:g} s of faults, output in {out}", flush=True)
    try:
        cluster.build()
        history.append("event", event="cluster_ready")
        timings = asyncio.run(run_phases(cluster, history, out, seed, duration))
        cluster.stop()
        history.append("event", event="stopped")
        for region in REGIONS:
            shutil.copytree(cluster.storage_root(region), out / "storage" / region, symlinks=True)
        timings["filesystem"] = filesystem_listing(cluster)
        timings["describe"] = cluster.describe()
        timings["unexpected_exits"] = cluster.unexpected_exits
        timings["seconds"] = round(time.monotonic() - started, 1)
        dump_json(out / "run.json", timings)
    except ClusterError as exc:
        print(f"chaos: cluster failed: {exc}", file=sys.stderr)
        return EXIT_VIOLATION
    finally:
        teardown()
        history.close()
    return judge(out)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def filesystem_listing(cluster: Cluster) -> dict[str, list[str]]:
    """Per region, every entry outside its storage root in the places a daemon could write."""
    found: dict[str, list[str]] = {}
    for region in REGIONS:
        stray = [str(p) for p in (cluster.region_dir(region) / "cwd").rglob("*")]
        stray += [
            str(p) for p in cluster.mount_dir(region).iterdir() if p != cluster.storage_root(region)
        ]
        found[region] = stray
    written = {"admin.token", *(f"{r}.toml" for r in REGIONS)}
    found["config"] = [
        str(p) for p in (cluster.run_dir / "config").iterdir() if p.name not in written
    ]
    return found


def judge(out: Path) -> int:
    """Check a finished run, write the report, print the table; the exit status."""
    verdicts = check_run(out)
    write_report(out, verdicts)
    print_table(verdicts)
    failed = [v for v in verdicts if not v.passed]
    print(f"chaos: {'FAIL' if failed else 'PASS'}; report: {out / 'report.json'}", flush=True)
    return EXIT_VIOLATION if failed else 0


def main(argv: Sequence[str] | None = None) -> None:
    """``scripts/chaos.sh --seed N --duration S [--out DIR] | --cleanup | --check-only DIR``."""
    parser = argparse.ArgumentParser(prog="scripts/chaos.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--duration", type=float, default=180.0, help="seconds of faults")
    parser.add_argument("--out", type=Path, help="run directory (default: a new temp folder)")
    parser.add_argument("--cleanup", action="store_true", help="remove leftover namespaces/mounts")
    parser.add_argument("--check-only", type=Path, metavar="OUT", help="re-check a finished run")
    args = parser.parse_args(argv)
    if args.check_only:
        sys.exit(judge(args.check_only))
    if hold_run_lock() is None:
        sys.exit(busy("--cleanup refused" if args.cleanup else "cannot start"))
    if args.cleanup:
        print(json.dumps(netns.cleanup()))
        sys.exit(0)
    out = args.out or Path(tempfile.mkdtemp(prefix=f"cryptorun-chaos-seed{args.seed}-"))
    sys.exit(run(args.seed, args.duration, out.resolve()))


if __name__ == "__main__":
    main()
