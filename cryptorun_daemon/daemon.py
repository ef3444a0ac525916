"""The daemon skeleton: startup → run → shutdown, one asyncio event loop.

Signal handlers only set flags (SIGTERM/SIGINT request a graceful stop, a
second SIGINT forces exit, SIGHUP requests a reload); the ordered, time-boxed
shutdown runs in :meth:`Daemon.shutdown`.

(About 500 lines: the skeleton, the shutdown phases under one deadline and the
reload dispatch are one lifecycle, read top to bottom; subsystem logic lives in
the components.)
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import aiohttp
import structlog
from prometheus_client import CollectorRegistry

from cryptorun_daemon import __version__
from cryptorun_daemon.admin.app import build_app
from cryptorun_daemon.admin.server import AdminServer
from cryptorun_daemon.components import build_components
from cryptorun_daemon.config import TIERS, Config, Rule, load_config
from cryptorun_daemon.errors import ConfigError, StorageError
from cryptorun_daemon.failover.component import FailoverComponent
from cryptorun_daemon.logsetup import configure_logging
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.replication.rules import rule_to_json
from cryptorun_daemon.runtime import event_loop
from cryptorun_daemon.runtime.clock import Clock, SystemClock
from cryptorun_daemon.runtime.component import (
    Component,
    DaemonContext,
    ReloadResult,
    changed_sections,
    config_sections,
)
from cryptorun_daemon.runtime.supervisor import Supervisor
from cryptorun_daemon.runtime.systemd import SystemdNotifier
from cryptorun_daemon.security.credentials import load_credentials
from cryptorun_daemon.security.peer_errors import PeerErrors
from cryptorun_daemon.security.transport import TransportSecurity
from cryptorun_daemon.timefmt import format_rfc3339

log = structlog.get_logger("cryptorun.daemon")
ComponentFactory = Callable[[DaemonContext], Component]

HEARTBEAT_INTERVAL = 1.0
# Marks within admin.shutdown_timeout by which each shutdown phase must be done
# (see Daemon._release): components by half of it, workers by 70 %, the admin
# server's in-flight requests by 90 %, its connections closed by the deadline.
# Half for components: they flush journals and park transfers, the work that
# loses data when cut short; in-flight admin requests are retried by clients.
_COMPONENTS_DONE_BY = 0.5
_WORKERS_DONE_BY = 0.7
_IN_FLIGHT_DONE_BY = 0.9
# How long a cancelled shutdown step may take to unwind (never past the deadline).
_CANCEL_GRACE = 0.5
# /healthz fails when the heartbeat has not ticked for this long: the loop is wedged.
ALIVE_WITHIN = 10.0


class Daemon:
    """One region's daemon.

    Error handling: a failure during :meth:`startup` (port in use, storage not
    writable) raises after releasing what was acquired; once running, worker
    crashes are the supervisor's business and never stop the daemon.
    Resource handling: :meth:`shutdown` releases everything :meth:`startup`
    acquired, in reverse order, all of it within one ``admin.shutdown_timeout``.
    """

    def __init__(
        self,
        config: Config,
        *,
        registry: CollectorRegistry | None = None,
        clock: Clock | None = None,
        notifier: SystemdNotifier | None = None,
        extra_components: Sequence[ComponentFactory] = (),
    ) -> None:
        self.metrics = Metrics(registry)
        self.metrics.preinitialise(
            region=config.region,
            regions=config.regions,
            replication_pairs=config.replication_pairs(),
        )
        self.clock = clock or SystemClock()
        self.notifier = notifier or SystemdNotifier()
        self.supervisor = Supervisor(self.metrics)
        # Secrets and certificates are checked before anything starts: a loose
        # mode or a broken key is a ConfigError (exit 2) naming file and mode.
        self.security = TransportSecurity(config, self.metrics)
        self.ctx = DaemonContext(
            config=config,
            metrics=self.metrics,
            clock=self.clock,
            supervisor=self.supervisor,
            credentials=load_credentials(config),
            peer_errors=PeerErrors(self.metrics, config.peers),
        )
        self._extra_components = list(extra_components)
        self.components: list[Component] = []
        self.admin: AdminServer | None = None
        self.started_at: datetime | None = None
        self._stop = asyncio.Event()
        self._reload_requested = False
        self._state = "created"
        self._last_tick = self.clock.monotonic()
        self._sigint_count = 0
        # Shutdown steps that ignored their cancellation: strong references until
        # they end, so they are never garbage-collected mid-flight.
        self._abandoned: set[asyncio.Future[None]] = set()
        self.shutdown_overruns: list[str] = []
        self._apply_slo_metrics(config)

    @property
    def config(self) -> Config:
        return self.ctx.config

    # --- lifecycle -----------------------------------------------------------------

    async def startup(self) -> None:
        """Wire everything and start serving; ``READY=1`` is sent only at the end."""
        structlog.contextvars.bind_contextvars(region=self.config.region)
        self._state = "starting"
        self.notifier.status("starting")
        self.started_at = self.clock.now()
        self._check_storage_writable()
        self.ctx.http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.replication.request_timeout),
            # Every peer call verifies the peer against [peers] ca_file; the
            # scheme of its URL alone decides TLS, nothing falls back to plaintext.
            connector=aiohttp.TCPConnector(limit=64, ssl=self.security.client),
            trace_configs=[self.ctx.peer_errors.trace_config()] if self.ctx.peer_errors else None,
        )
        try:
            self.components = [
                *build_components(self.ctx),
                *(factory(self.ctx) for factory in self._extra_components),
            ]
            for component in self.components:
                self.ctx.components[component.name] = component
            routes = [route for c in self.components for route in c.routes()]
            app = build_app(
                self,
                credentials=self.ctx.credentials,
                open_reads=self.config.admin.open_reads,
                max_request_bytes=self.config.admin.max_request_bytes,
                extra_routes=routes,
            )
            self.admin = AdminServer(
                app,
                self.config.admin.host,
                self.config.admin.port,
                shutdown_timeout=self.config.admin.shutdown_timeout,
                ssl_context=self.security.server_context,
            )
            await self.admin.start()
            for component in self.components:
                await component.start()
            self.supervisor.spawn("heartbeat", self._heartbeat)
        except BaseException:
            await self._release()
            raise
        if self.ctx.credentials.open:
            log.warning("no admin token configured: every endpoint is open on loopback")
        self._state = "running"
        self.metrics.ready.set(1 if not self.not_ready_reasons() else 0)
        self.notifier.ready()
        self.notifier.status(f"serving on {self.config.admin.host}:{self.admin_port}")
        log.info(
            "daemon started",
            version=__version__,
            admin=f"{self.config.admin.scheme}://{self.config.admin.host}:{self.admin_port}",
            components=[c.name for c in self.components],
        )

    async def run(self) -> None:
        """Wait until a stop is requested, handling reload requests meanwhile."""
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=HEARTBEAT_INTERVAL)
            if self._reload_requested:
                self._reload_requested = False
                self.reload()

    async def shutdown(self) -> None:
        """Ordered shutdown under one deadline, ``admin.shutdown_timeout`` from now.

        Mark not ready and tell systemd ``STOPPING=1``, then run the phases of
        :meth:`_release`. The whole stop fits the one budget (the systemd unit's
        ``TimeoutStopSec`` is set well above it), whatever a component does.
        """
        if self._state in ("stopping", "stopped"):
            return
        self._state = "stopping"
        self.metrics.ready.set(0)
        self.notifier.stopping()
        self.notifier.status("shutting down")
        log.info("daemon stopping", shutdown_timeout_seconds=self.config.admin.shutdown_timeout)
        overran = await self._release()
        self._state = "stopped"
        log.info("daemon stopped", overran=overran)

    async def _release(self) -> list[str]:
        """Release everything :meth:`startup` acquired, in phases, under one deadline.

        The deadline is computed once, on the loop's monotonic clock. Each
        phase must be done by its mark (a share of the budget); time a phase
        does not use passes to the next ones, and a phase that reaches its mark
        is cut off (cancelled) and logged, so the phases after it still run.

        Returns the phases that overran (empty for a clean stop); also kept in
        :attr:`shutdown_overruns`.
        """
        loop = asyncio.get_running_loop()
        budget = self.config.admin.shutdown_timeout
        started = loop.time()
        deadline = started + budget

        def left_until(share: float) -> float:
            return max(0.0, started + budget * share - loop.time())

        overran: list[str] = []

        # Phase 1, stop accepting: close the listening socket so no new request
        # or WebSocket arrives; connections already open live on until phase 4.
        if self.admin is not None:
            await self.admin.stop_accepting()

        # Phase 2, components in reverse start order (the hot tier closes its
        # WebSockets with 1001 and flushes its journal; copies in flight stay
        # resumable as partials; failover, which the others ask, stops last).
        # Each gets an equal part of what is left of the phase, so one that
        # hangs in stop() cannot take the time of the ones after it.
        remaining = list(reversed(self.components))
        while remaining:
            component = remaining.pop(0)
            share = left_until(_COMPONENTS_DONE_BY) / (len(remaining) + 1)
            if not await self._bounded(f"stop {component.name}", component.stop(), share, deadline):
                overran.append(f"stop {component.name}")

        # Phase 3, supervisor: cancel every worker still running (components
        # should have stopped theirs) and wait for them until the phase's mark;
        # the ones still running then are abandoned with a log line.
        stuck = await self.supervisor.stop(timeout=left_until(_WORKERS_DONE_BY))
        if stuck:
            log.error("shutdown phase overran", phase="workers", workers=stuck, action="abandon")
            overran.append("workers")

        # Phase 4, admin server: run the on_shutdown hooks and let in-flight
        # requests finish until the phase's mark, then close every connection
        # (cut off at the deadline itself).
        if self.admin is not None:
            in_flight = left_until(_IN_FLIGHT_DONE_BY)
            closing = self.admin.close(in_flight)
            if not await self._bounded("admin", closing, left_until(1.0), deadline):
                overran.append("admin")

        # Phase 5, outgoing connections: close the shared client session. Not
        # time-boxed: closing an aiohttp session only closes sockets, and it
        # must run even when the phases before it used the whole budget.
        if self.ctx.http is not None:
            await self.ctx.http.close()
        self.notifier.close()
        self.shutdown_overruns = overran
        return overran

    async def _bounded(
        self, phase: str, step: Awaitable[None], timeout: float, deadline: float
    ) -> bool:
        """Run one shutdown step for at most ``timeout`` seconds; False if it overran.

        Error handling: an exception from the step is logged and counts as
        done (shutdown goes on). On timeout the step is cancelled and given
        until ``deadline`` (at most :data:`_CANCEL_GRACE`) to unwind; a step
        that ignores the cancellation is abandoned with a log line, its task
        kept referenced in :attr:`_abandoned` until it ends.
        """
        task = asyncio.ensure_future(step)
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error(
                    "shutdown step failed",
                    phase=phase,
                    exc_info=task.exception(),
                )
            return True
        log.error(
            "shutdown phase overran",
            phase=phase,
            timeout_seconds=round(timeout, 3),
            action="cancel",
        )
        task.cancel(f"shutdown phase {phase} overran")
        loop = asyncio.get_running_loop()
        grace = min(_CANCEL_GRACE, max(0.0, deadline - loop.time()))
        done, _ = await asyncio.wait({task}, timeout=grace)
        if task in done:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()
        else:
            log.error("shutdown step ignored its cancellation; abandoned", phase=phase)
            self._abandoned.add(task)
            task.add_done_callback(self._abandoned.discard)
        return False

    async def serve(self) -> None:
        """Run the whole lifecycle with signal handlers installed (the CLI entry)."""
        # Bind before installing handlers: callbacks run in the context captured here.
        structlog.contextvars.bind_contextvars(region=self.config.region)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop, "SIGTERM")
        loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            await self.startup()
            await self.run()
        finally:
            await self.shutdown()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    def request_stop(self, reason: str = "requested") -> None:
        log.info("stop requested", reason=reason)
        self._stop.set()

    def request_reload(self) -> None:
        self._reload_requested = True

    def _on_sigint(self) -> None:
        self._sigint_count += 1
        if self._sigint_count > 1:
            # The operator asked twice: do not wait for a graceful shutdown.
            log.warning("second SIGINT: forcing exit")
            os._exit(130)
        self.request_stop("SIGINT")

    async def _heartbeat(self) -> None:
        """Tick the liveness counter and ping the systemd watchdog from the event loop.

        Because this runs on the loop itself, a blocked loop stops the pings and
        systemd's watchdog restarts the daemon.
        """
        interval = HEARTBEAT_INTERVAL
        if self.notifier.watchdog_interval is not None:
            interval = min(interval, self.notifier.watchdog_interval)
        while True:
            self._last_tick = self.clock.monotonic()
            self.supervisor.tick()
            self.notifier.watchdog()
            self.metrics.ready.set(0 if self.not_ready_reasons() else 1)
            await asyncio.sleep(interval)

    # --- reload ----------------------------------------------------------------------

    def reload(self) -> ReloadResult:
        """Re-read the config file (SIGHUP) and apply what is safe to change live.

        An invalid new config is rejected whole and the running config stays
        (an empty result). Otherwise see :meth:`apply_config`.
        """
        try:
            new = load_config(self.config.source)
        except ConfigError as exc:
            log.error("reload rejected: config invalid", problems=[str(p) for p in exc.problems])
            return ReloadResult()
        return self.apply_config(new)

    def apply_config(self, new: Config) -> ReloadResult:
        """Apply ``new`` as far as the daemon and each component can, Patroni style.

        The daemon applies log level/format and rule SLOs itself and claims the
        sections only a restart changes for everyone (``region``, ``admin``,
        ``storage``, the shape of ``rules``); every component then answers for
        the sections it reads (:meth:`Component.reload`). A changed top-level
        section nobody claimed is reported as needing a restart with a
        warning, so a section added to :class:`Config` is never silently
        ignored. Only what the daemon applied replaces the running config.
        """
        old = self.config
        result = self._reload_own(old, new)
        for component in self.components:
            try:
                result = result.merged(component.reload(new))
            except Exception:
                # One component's bug must not stop the others from seeing the config.
                log.error("component failed to reload", component=component.name, exc_info=True)
        unclaimed = tuple(
            section
            for section in changed_sections(old, new, *config_sections(new))
            if not result.claims(section)
        )
        if unclaimed:
            log.warning(
                "changed config sections that no component reloads; restart to apply them",
                sections=list(unclaimed),
            )
            result = result.merged(ReloadResult(needs_restart=unclaimed))
        rules = new.rules if "rules.lag_slo" in result.applied else old.rules
        self.ctx.config = replace(old, log=new.log, rules=rules)
        self._apply_slo_metrics(self.ctx.config)
        log.info(
            "config reloaded",
            applied=list(result.applied),
            needs_restart=list(result.needs_restart),
        )
        if result.needs_restart:
            log.warning(
                "some changes need a restart to take effect", sections=list(result.needs_restart)
            )
        return result

    def _reload_own(self, old: Config, new: Config) -> ReloadResult:
        """The daemon's own sections: log and rule SLOs live; the rest at restart."""
        applied: list[str] = []
        needs_restart: list[str] = []
        if new.log != old.log:
            configure_logging(new.log.level, new.log.format)
            applied.append("log")
        if _rule_shape(new.rules) != _rule_shape(old.rules):
            # Links, fences and bootstrap primaries follow the rules' shape.
            needs_restart.append("rules")
        elif new.rules != old.rules:
            applied.append("rules.lag_slo")
        # The admin listener, region identity and storage root are bound at start-up;
        # certificates are re-read in place (same paths or new ones).
        needs_restart += changed_sections(
            _without_tls_files(old), _without_tls_files(new), "region", "admin", "storage"
        )
        own = ReloadResult(applied=tuple(applied), needs_restart=tuple(needs_restart))
        return own.merged(self.security.reload(new))

    def _apply_slo_metrics(self, config: Config) -> None:
        for rule in config.rules:
            for dst in rule.to_regions:
                self.metrics.replication_slo_seconds.labels(tier=rule.tier, region=dst).set(
                    rule.lag_slo
                )

    # --- views for the admin API ----------------------------------------------------------

    @property
    def admin_port(self) -> int:
        return self.admin.port if self.admin is not None else self.config.admin.port

    def is_alive(self) -> bool:
        return self._state == "running" and (
            self.clock.monotonic() - self._last_tick < ALIVE_WITHIN
        )

    def known_regions(self) -> Sequence[str]:
        return self.config.regions

    def not_ready_reasons(self) -> list[str]:
        if self._state != "running":
            return [f"daemon is {self._state}"]
        reasons: list[str] = []
        for component in self.components:
            reasons.extend(component.not_ready_reasons())
        return reasons

    def write_refusals(self) -> dict[str, str]:
        """Tier → why this region holds it as primary but does not write it now (reads go on)."""
        failover = self.ctx.components.get("failover")
        return failover.write_refusals() if isinstance(failover, FailoverComponent) else {}

    def status(self, *, tier: str | None, region: str | None) -> dict[str, Any]:
        """The ``/v1/status`` document: daemon facts merged with every component's part."""
        cfg = self.config
        tiers: dict[str, Any] = {}
        for t in TIERS:
            if tier is not None and t != tier:
                continue
            rules = [rule_to_json(r) for r in cfg.rules_for(t)]
            if region is not None:
                rules = [r for r in rules if region in (r["from"], *r["to"])]
            tiers[t] = {"rules": rules}
        doc: dict[str, Any] = {
            "region": cfg.region,
            "version": __version__,
            "event_loop": event_loop.running_loop_name(),
            "started_at": format_rfc3339(self.started_at) if self.started_at else None,
            "ready": not self.not_ready_reasons(),
            "not_ready_reasons": self.not_ready_reasons(),
            "peers": dict(cfg.peers),
            "tiers": tiers,
            "workers": self.supervisor.workers(),
        }
        for component in self.components:
            _deep_merge(doc, component.status(tier=tier, region=region))
        return doc

    def _check_storage_writable(self) -> None:
        root = self.config.storage.root
        probe = root / f".write-probe-{os.getpid()}"
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                # Writable but full: start anyway (not ready, hot records dropped and
                # counted) so the region resumes by itself once space returns instead
                # of crash-looping under systemd.
                with contextlib.suppress(OSError):
                    probe.unlink()
                log.warning("storage.root is full", root=str(root), error=str(exc))
                return
            raise StorageError(f"storage.root {root} is not writable: {exc}") from exc


def _without_tls_files(config: Config) -> Config:
    """``config`` with the admin certificate paths blanked (they reload live)."""
    return replace(config, admin=replace(config.admin, tls_cert=None, tls_key=None))


def _rule_shape(rules: Sequence[Rule]) -> list[tuple[str, str, str, tuple[str, ...]]]:
    return [(r.tier, r.mode, r.from_region, r.to_regions) for r in rules]


def _deep_merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = value


def run_daemon_from_config(config: Config) -> None:
    """Run a daemon to completion on a fresh event loop (used by ``cryptorun daemon``).

    The loop is uvloop unless it is missing or ``CRYPTORUN_EVENT_LOOP=asyncio``
    (``runtime/event_loop.py``); the choice is logged here and shown in status.
    Error handling: :class:`ConfigError` for an unusable ``CRYPTORUN_EVENT_LOOP``.
    """
    configure_logging(config.log.level, config.log.format)
    choice = event_loop.choose_loop()
    log.info("event loop", loop=choice.name, reason=choice.reason)
    event_loop.run(Daemon(config).serve(), choice)
