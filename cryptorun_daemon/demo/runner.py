"""``cryptorun demo``: the whole pipeline on one machine, as real processes.

Starts a local Kraken-protocol server (unless ``--kraken-url`` names another
endpoint) and two region daemons on loopback — eu-central (warm/cold primary)
and us-east (replica) — each ingesting BTC/USD, ETH/USD and SOL/USD itself and
mirroring its hot stream to the other. Every few seconds it prints one line
per region read from the admin API; on Ctrl-C or after ``--duration`` it runs
a last replication pass, saves each daemon's metrics and status, stops the
daemons with SIGTERM and reports what is left on disk.

The Kraken test server runs as a subprocess, like the daemons, rather than in
this process's event loop: the demo stays a plain synchronous supervisor (no
loop to keep responsive while it polls and prints), the market's ticks get
their own interpreter on a 2-core laptop, a crash is detected and reported the
same way as a daemon's (exit code + log tail), and ``kraken.log`` sits beside
the daemons' logs in ``--dir``.

Exit codes: 0 when every process stopped cleanly and every sealed partition
reached the replica intact; 1 when a process died, never became ready, did not
stop cleanly, or replication was incomplete (the message says which).
"""

from __future__ import annotations

import functools
import signal
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from cryptorun_daemon.demo.bucket_steps import BucketSteps
from cryptorun_daemon.demo.configs import (
    HOT_LAG_SLO,
    PARTITION_LENGTH,
    PRIMARY,
    REGIONS,
    REPLICA,
    SEAL_GRACE,
    SYMBOLS,
    WARM_LAG_SLO,
    DemoLayout,
    write_demo_configs,
)
from cryptorun_daemon.demo.object_store import (
    STORE,
    create_buckets,
    require_moto,
    server_args,
    use_demo_credentials,
)
from cryptorun_daemon.demo.processes import (
    ChildProcess,
    DemoError,
    free_port,
    http_ok,
    start_child,
    tcp_accepts,
    wait_ready,
)
from cryptorun_daemon.demo.summary import (
    AdminReader,
    compare_storage,
    format_line,
    hot_records_from_metrics,
    read_region,
)
from cryptorun_daemon.errors import UsageError

KRAKEN = "kraken"
SUMMARY_INTERVAL = 5.0
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0  # > the daemons' own admin.shutdown_timeout (10 s)
SYNC_TIMEOUT = 60.0
FINAL_SYNC_ATTEMPTS = 3
# A sealing round starts within a second of each seal moment and takes well under
# this long; the final comparison avoids that stretch so it cannot race a re-seal.
SEAL_ROUND_SECONDS = 4.0


def run_demo(
    *,
    directory: str | None,
    duration: float | None,
    kraken_url: str | None,
    out: TextIO,
    object_store: bool = False,
) -> int:
    """Run the demo until Ctrl-C (SIGINT/SIGTERM) or ``duration`` seconds; return the exit code.

    A second Ctrl-C skips the final replication pass and kills whatever has not
    stopped yet. Resource handling: every child is stopped before this returns;
    configs, logs and storage stay in ``directory`` (a new temp dir by default).

    Error handling: :class:`UsageError` (exit 2) for a ``kraken_url`` that is not
    ``ws://`` or ``wss://``, :class:`DemoError` (exit 1) when ``directory`` is not
    writable, or ``object_store`` without moto installed; all before anything starts.
    """
    if kraken_url is not None and not kraken_url.startswith(("ws://", "wss://")):
        raise UsageError(f"--kraken-url {kraken_url!r} must start with ws:// or wss://")
    if directory:
        base = Path(directory).resolve()
    else:
        base = Path(tempfile.mkdtemp(prefix="cryptorun-demo-"))
    reused = base.is_dir() and any(base.glob("data/*"))
    local_port = None if kraken_url else free_port()
    store_port = None
    if object_store:
        require_moto()
        use_demo_credentials()
        store_port = free_port()
    layout = DemoLayout(
        directory=base,
        ports={region: free_port() for region in REGIONS},
        kraken_url=kraken_url or f"ws://127.0.0.1:{local_port}/v2",
        object_store=f"http://127.0.0.1:{store_port}" if store_port is not None else None,
    )
    try:
        write_demo_configs(layout)
        # The operator token: the demo also asks for a replication pass at the end.
        reader = AdminReader(layout.token("operator"), layout.ssl_context())
    except OSError as exc:
        raise DemoError(f"cannot write the demo's configs in {base}: {exc}") from exc
    signals = _StopSignals()
    signals.install()
    try:
        demo = _Demo(layout, reader, out, signals, local_port, reused=reused)
        demo.store_port = store_port
        return demo.run(duration)
    finally:
        signals.restore()


class _StopSignals:
    """SIGINT/SIGTERM only count here (uvicorn style): 1 = stop gracefully, 2 = force."""

    def __init__(self) -> None:
        self.count = 0
        self._previous: dict[int, Any] = {}

    @property
    def stop(self) -> bool:
        return self.count >= 1

    @property
    def force(self) -> bool:
        return self.count >= 2

    def _handle(self, _signum: int, _frame: FrameType | None) -> None:
        self.count += 1

    def install(self) -> None:
        # Signal handlers can only be set from the main thread (tests may call us elsewhere).
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class _Demo:
    """One demo run: start → show → finish → stop → report."""

    def __init__(
        self,
        layout: DemoLayout,
        reader: AdminReader,
        out: TextIO,
        signals: _StopSignals,
        local_port: int | None,
        *,
        reused: bool,
    ) -> None:
        self.layout = layout
        self.reader = reader
        self.out = out
        self.signals = signals
        self.local_port = local_port
        self.reused = reused
        self.children: dict[str, ChildProcess] = {}
        #: ``--object-store``: the local S3 server's port (started before the daemons).
        self.store_port: int | None = None
        #: ``--object-store``: the cold archive and the bucket tally (demo/bucket_steps.py).
        self.buckets: BucketSteps | None = None
        self.started = time.monotonic()
        self.started_at = time.time()

    def say(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def run(self, duration: float | None) -> int:
        failure: DemoError | None = None
        try:
            if self.start():
                self.banner(duration)
                if self.layout.object_store is not None:
                    self.buckets = BucketSteps(
                        self.layout, self.reader, self.say, lambda: self.signals.stop
                    )
                    self.buckets.archive_cold(timeout=READY_TIMEOUT)
                self.live_header(duration)
                self.watch(duration)
                self.finish()
        except DemoError as exc:
            failure = exc
            self.say(f"\ndemo failed: {failure}")
        finally:
            codes = self.stop_children()
        if failure is not None:
            return 1
        unclean = [name for name, code in codes.items() if code != 0]
        for name in unclean:
            self.say(f"\ndemo failed: {self.children[name].died('did not stop cleanly')}")
        return self.report() if not unclean else 1

    # --- start ------------------------------------------------------------------------

    def start(self) -> bool:
        """Start the Kraken server and both daemons; False if Ctrl-C came first.

        Error handling: :class:`DemoError` when a child exits or is not ready in time.
        """
        layout = self.layout
        stop = lambda: self.signals.stop  # noqa: E731 - reads better inline than a def
        if self.local_port is not None:
            server = self._start(
                KRAKEN,
                ["cryptorun_daemon.ingest.kraken.testserver", "--port", str(self.local_port)],
            )
            port = self.local_port
            if not wait_ready(server, lambda: tcp_accepts(port), timeout=READY_TIMEOUT, stop=stop):
                return False
        if self.store_port is not None and layout.object_store is not None:
            store = self._start(STORE, server_args(self.store_port))
            store_port = self.store_port
            ready = lambda: tcp_accepts(store_port)  # noqa: E731
            if not wait_ready(store, ready, timeout=READY_TIMEOUT, stop=stop):
                return False
            create_buckets(layout.object_store, REGIONS)
        for region in REGIONS:
            self._start(
                region, ["cryptorun_daemon", "daemon", "--config", str(layout.config_path(region))]
            )
        for region in REGIONS:
            ready = functools.partial(
                http_ok, f"{layout.admin_url(region)}/readyz", context=layout.ssl_context()
            )
            if not wait_ready(self.children[region], ready, timeout=READY_TIMEOUT, stop=stop):
                return False
        return True

    def _start(self, name: str, args: list[str]) -> ChildProcess:
        child = start_child(
            name, args, cwd=self.layout.directory, log_path=self.layout.log_path(name)
        )
        self.children[name] = child
        return child

    def banner(self, duration: float | None) -> None:
        layout = self.layout
        base = layout.directory
        # The window holding the first records closes at the next boundary after the start.
        first_seal = (self.started_at // PARTITION_LENGTH + 1) * PARTITION_LENGTH + SEAL_GRACE
        self.say(
            f"cryptorun demo: two regions on loopback; configs, logs and data in {base}"
            + (" (continuing the data already there)" if self.reused else "")
        )
        where = "local Kraken-protocol server" if self.local_port else "external Kraken v2 endpoint"
        log = f"log {layout.log_path(KRAKEN).name}" if self.local_port else ""
        self.say(f"  {KRAKEN:<10}  {layout.kraken_url:<26}  {where} ({', '.join(SYMBOLS)})  {log}")
        for region in REGIONS:
            peer = next(r for r in REGIONS if r != region)
            role = "primary" if region == PRIMARY else "replica"
            self.say(
                f"  {region:<10}  {layout.admin_url(region):<26}  warm/cold {role}, "
                f"ingests kraken, mirrors hot to {peer}  log {layout.log_path(region).name}"
            )
        self.say(
            f"  warm partitions: {PARTITION_LENGTH:g} s windows sealed {SEAL_GRACE:g} s after "
            f"they end (first at {_clock(first_seal)} UTC); "
            f"SLOs: hot lag {HOT_LAG_SLO:g} s, warm lag {WARM_LAG_SLO:g} s"
        )
        primary, replica = layout.admin_url(PRIMARY), layout.admin_url(REPLICA)
        self.say("\ntry, in another shell:")
        self.say(f"  READ=$(cat {layout.token_path('read')})")
        self.say(f"  OPERATOR=$(cat {layout.token_path('operator')})")
        curl = f"curl -s --cacert {layout.ca_path}"
        read = '-H "Authorization: Bearer $READ"'
        self.say(f"  {curl} {read} {primary}/v1/status | python3 -m json.tool")
        wanted = "^cryptorun_(hot_records|replication_lag)"
        self.say(f"  {curl} {read} {replica}/metrics | grep -E '{wanted}'")
        self.say(f"  {curl} {read} '{replica}/v1/partitions?tier=warm' | python3 -m json.tool")
        operator = '-H "Authorization: Bearer $OPERATOR"'
        self.say(
            f"  {curl} {operator} -X POST {primary}/v1/failover \\\n"
            f'       -d \'{{"tier":"warm","promote":"{REPLICA}",'
            f'"demote":"{PRIMARY}","dry_run":true}}\''
        )
        self.say(f"  cryptorun replication status --config {layout.config_path(REPLICA)}")

    def live_header(self, duration: float | None) -> None:
        until = f"after {duration:g} s or on Ctrl-C" if duration else "on Ctrl-C"
        self.say(f"\nlive, every {SUMMARY_INTERVAL:g} s (stops {until}):")

    # --- run --------------------------------------------------------------------------

    def watch(self, duration: float | None) -> None:
        """Print the per-region lines until Ctrl-C or the duration is over.

        Error handling: :class:`DemoError` as soon as any child exits.
        """
        ends = None if duration is None else self.started + duration
        next_summary = time.monotonic() + SUMMARY_INTERVAL
        while not self.signals.stop and (ends is None or time.monotonic() < ends):
            self.check_alive()
            if time.monotonic() >= next_summary:
                self.print_summary()
                next_summary += SUMMARY_INTERVAL
            time.sleep(0.2)

    def check_alive(self) -> None:
        for child in self.children.values():
            if child.exit_code is not None:
                raise child.died("exited")

    def print_summary(self) -> None:
        views = {r: read_region(self.reader, r, self.layout.admin_url(r)) for r in REGIONS}
        primary = next((v for v in views.values() if v.role == "primary"), views[PRIMARY])
        now = datetime.now(UTC)
        for region in REGIONS:
            self.say(format_line(views[region], primary, now))

    # --- finish -----------------------------------------------------------------------

    def finish(self) -> None:
        """Last replication pass (unless forced), then metric and status snapshots."""
        self.say("\nstopping: last replication pass, metric snapshots, then SIGTERM to each daemon")
        if not self.signals.force:
            self.final_sync()
            if self.buckets is not None:
                self.buckets.final_cold_sync(timeout=SYNC_TIMEOUT)
        self.snapshot()
        if self.buckets is not None:
            self.buckets.report(wait=0.0 if self.signals.force else SYNC_TIMEOUT)

    def final_sync(self) -> None:
        """Ask the replica for a pass until it holds every partition the primary sealed.

        The primary re-seals an hour partition at each one-minute seal moment, so
        the comparison waits out that stretch, and is retried if a round slipped in.
        """
        wait = seconds_until_quiet(time.time())
        if wait > 0:
            self.say(f"  waiting {wait:.0f} s for {PRIMARY}'s sealing round to finish")
            until = time.monotonic() + wait
            while time.monotonic() < until and not self.signals.force:
                self.check_alive()
                time.sleep(0.1)
        primary_url, replica_url = self.layout.admin_url(PRIMARY), self.layout.admin_url(REPLICA)
        for _ in range(FINAL_SYNC_ATTEMPTS):
            try:
                self.reader.json(
                    f"{replica_url}/v1/replication/sync",
                    body={"tier": "warm", "from": PRIMARY},
                    timeout=SYNC_TIMEOUT,
                )
                primary = self.reader.sealed_partitions(primary_url)
                replica = self.reader.sealed_partitions(replica_url)
            except (OSError, ValueError, KeyError) as exc:
                self.say(f"  last replication pass failed: {exc}")
                return
            if not primary:
                self.say(f"  nothing sealed at {PRIMARY} yet")
                return
            if all(replica.get(path) == digest for path, digest in primary.items()):
                self.say(f"  {REPLICA} holds all {len(primary)} partitions sealed at {PRIMARY}")
                return
            time.sleep(1.0)

    def snapshot(self) -> None:
        """Save ``metrics-<region>.txt`` and ``status-<region>.json`` into the demo directory."""
        for region in REGIONS:
            url = self.layout.admin_url(region)
            for name, path in (
                (f"metrics-{region}.txt", "/metrics"),
                (f"status-{region}.json", "/v1/status"),
            ):
                try:
                    text = self.reader.text(url + path)
                except OSError as exc:
                    self.say(f"  could not save {name}: {exc}")
                    continue
                (self.layout.directory / name).write_text(text, encoding="utf-8")

    # --- stop and report ------------------------------------------------------------------

    def stop_children(self) -> dict[str, int]:
        """SIGTERM both daemons together, then the servers (Kraken, S3); SIGKILL after the deadline.

        The servers stop last so the daemons do not log a lost connection.
        """
        force = lambda: self.signals.force  # noqa: E731 - reads better inline than a def
        codes: dict[str, int] = {}
        servers = (KRAKEN, STORE)
        groups = [
            [c for n, c in self.children.items() if n not in servers],
            [c for n, c in self.children.items() if n in servers],
        ]
        for group in groups:
            for child in group:
                child.terminate()
            deadline = time.monotonic() + STOP_TIMEOUT
            for child in group:
                codes[child.name] = child.wait(deadline, force=force)
        if codes:
            self.say("stopped: " + ", ".join(f"{n} exit {c}" for n, c in codes.items()))
        return codes

    def report(self) -> int:
        """What the run left on disk; 1 when sealed partitions did not all reach the replica."""
        layout = self.layout
        storage = compare_storage(layout.storage_root(PRIMARY), layout.storage_root(REPLICA))
        base = layout.directory
        self.say(f"\nproduced (kept in {base}):")
        for region in REGIONS:
            snapshot = base / f"metrics-{region}.txt"
            if snapshot.is_file():
                counts = hot_records_from_metrics(snapshot.read_text(encoding="utf-8"), region)
                by_origin = ", ".join(f"{v:,.0f} from {o}" for o, v in counts.items())
                self.say(f"  {region:<10}  hot records: {by_origin}")
        complete = len(storage.identical) == len(storage.primary)
        if not storage.primary:
            self.say(
                f"  no warm partition sealed yet: the first {PARTITION_LENGTH:g} s window "
                f"closes up to {PARTITION_LENGTH + SEAL_GRACE:g} s after start: run longer"
            )
        else:
            self.say(
                f"  {PRIMARY:<10}  {len(storage.primary)} warm partitions sealed "
                f"({storage.rows:,} rows) in data/{PRIMARY}/warm"
            )
            superseded = (
                f"; {storage.superseded} earlier versions of re-sealed hours kept in "
                f"data/{REPLICA}/_superseded"
                if storage.superseded
                else ""
            )
            self.say(
                f"  {REPLICA:<10}  {len(storage.identical)} of {len(storage.primary)} "
                f"replicated to data/{REPLICA}/warm{superseded}"
            )
            self.say(
                "  manifests identical: "
                + (
                    "yes, byte for byte"
                    if complete
                    else "NO — differ or missing: " + ", ".join(storage.not_identical)
                )
            )
        if self.buckets is not None:
            self.buckets.disk_tally()
        self.say(
            f"  configs {PRIMARY}.toml {REPLICA}.toml; logs *.log; final metrics-*.txt "
            "and status-*.json"
        )
        self.say(f"  inspect: cryptorun validate {base / 'data' / REPLICA / 'warm'}")
        cold_complete = self.buckets is None or self.buckets.cold_complete
        return 0 if complete and cold_complete else 1


def seconds_until_quiet(now: float) -> float:
    """Seconds to wait so a check at ``now`` does not overlap the primary's sealing round.

    Rounds start within a second after each seal moment (a window's end plus
    ``SEAL_GRACE``); the quiet stretch excludes the second before and
    ``SEAL_ROUND_SECONDS`` after it.
    """
    since_seal = (now - SEAL_GRACE) % PARTITION_LENGTH
    if since_seal < SEAL_ROUND_SECONDS:
        return SEAL_ROUND_SECONDS - since_seal
    if PARTITION_LENGTH - since_seal < 1.0:
        return PARTITION_LENGTH - since_seal + SEAL_ROUND_SECONDS
    return 0.0


def _clock(epoch_seconds: float) -> str:
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%H:%M:%S")
