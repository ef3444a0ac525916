"""Peer health: heartbeats by probing each peer's ``/healthz``, plus every other peer call.

Also the one outgoing failover call, :meth:`PeerMonitor.notify` (``POST
/v1/failover/notify`` to every peer after a promotion).

A peer is *up* until ``replication.peer_down_after`` passed without any
success (probe, replication pull, status read or notify); for a peer never
reached that counts from the start of probing. ``cryptorun_peer_up{peer}`` is
the last attempt's answer. With the file state store each probe round also
reads the peer's ``/v1/status`` and hands it to the failover component, which
adopts newer epochs from it (that is how a rejoining region learns them) —
but only over an authenticated channel (:func:`authenticated_channel`: an
``https://`` peer, verified against ``[peers] ca_file``, or one on loopback).
Over plaintext across a network (``admin.allow_plaintext``) the handler is
told the answer is untrusted: it may compare epochs, never adopt one, since
the answer could come from anyone in the middle.

:meth:`PeerMonitor.unconfirmed` names the peers this region has neither
compared epochs with nor seen down for ``peer_down_after``: with the file
store (no quorum) a region does not act as a primary while any is left, so a
restarted old primary does not seal at its stale epoch during a blip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import structlog

from cryptorun_daemon.config.loader_security import is_loopback
from cryptorun_daemon.failover.roles import TierState
from cryptorun_daemon.runtime.component import DaemonContext
from cryptorun_daemon.timefmt import format_rfc3339

log = structlog.get_logger("cryptorun.failover.peers")

# Peer calls made while an operator waits (status views, notify) or by the prober:
# short, so a black-holed peer costs seconds, not the 30 s replication timeout.
PEER_CALL_TIMEOUT: Final = 2.0
PROBE_INTERVAL_MAX: Final = 2.0

#: Called with ``(peer, its /v1/status document, trusted)`` after a successful
#: probe (``trusted``: read over an authenticated channel); answers whether the
#: epochs were compared (false: not yet possible, retry).
StatusHandler = Callable[[str, Any, bool], Awaitable[bool]]


@dataclass(frozen=True)
class PeerHealth:
    """What this region knows about one peer.

    ``reachable`` is the last probe's answer (``None`` before the first);
    ``up`` is false once ``peer_down_after`` passed without a success (counted
    from the start of probing for a peer never reached). ``down_since`` is the
    first failure of the current failure streak, set while down.
    ``alive_in_store`` is the peer's etcd lease (``None`` with the file store).
    """

    peer: str
    url: str
    up: bool = True
    reachable: bool | None = None
    last_ok: datetime | None = None
    last_probe: datetime | None = None
    failing_since: datetime | None = None
    down_since: datetime | None = None
    last_error: str | None = None
    alive_in_store: bool | None = None

    def to_json(self) -> dict[str, Any]:
        def fmt(moment: datetime | None) -> str | None:
            return format_rfc3339(moment) if moment is not None else None

        return {
            "url": self.url,
            "up": self.up,
            "reachable": self.reachable,
            "last_ok": fmt(self.last_ok),
            "last_probe": fmt(self.last_probe),
            "down_since": fmt(self.down_since),
            "last_error": self.last_error,
            "alive_in_store": self.alive_in_store,
        }


class PeerMonitor:
    """Health of every configured peer, and the short-timeout GET used for peer calls.

    Error handling: probes never raise; failures are recorded. Resource
    handling: uses the daemon's shared HTTP session, holds nothing else.
    """

    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx
        self._health = {p: PeerHealth(p, url) for p, url in sorted(ctx.config.peers.items())}
        self._last_ok_mono: dict[str, float] = {}
        self._probe_started = ctx.clock.monotonic()
        down_after = ctx.config.replication.peer_down_after
        self.probe_interval = max(0.2, min(PROBE_INTERVAL_MAX, down_after / 3))
        self.first_round_done = False  # one full probe round, whatever its answers
        self._status_compared: set[str] = set()
        self._all_confirmed = not self._health  # sticky once every peer was confirmed

    def health(self) -> dict[str, PeerHealth]:
        """Per peer: up/down, last success, current failure streak (a copy)."""
        return dict(self._health)

    def unconfirmed(self) -> list[str]:
        """Peers whose status was never compared and that are not down (see module doc).

        Once the list has been empty it stays empty: the check guards start-up
        against a stale local state, not every later network blip.
        """
        if self._all_confirmed:
            return []
        waiting = [p for p, h in self._health.items() if p not in self._status_compared and h.up]
        self._all_confirmed = not waiting
        return waiting

    def set_alive_in_store(self, alive: frozenset[str]) -> None:
        for peer, health in self._health.items():
            self._health[peer] = replace(health, alive_in_store=peer in alive)

    def status(self, region: str | None) -> dict[str, Any]:
        me = self.ctx.config.region
        errors = self.ctx.peer_errors
        return {
            p: {**h.to_json(), "errors": errors.counts(p) if errors is not None else {}}
            for p, h in self._health.items()
            if region is None or region in (p, me)
        }

    def report(self, peer: str, ok: bool, error: str | None = None) -> None:
        """Record a success or failure talking to ``peer`` (probes, pulls, notifies)."""
        old = self._health.get(peer)
        if old is None:
            return
        now, mono = self.ctx.clock.now(), self.ctx.clock.monotonic()
        if ok:
            self._last_ok_mono[peer] = mono
            new = replace(
                old,
                up=True,
                reachable=True,
                last_ok=now,
                last_probe=now,
                failing_since=None,
                down_since=None,
                last_error=None,
            )
        else:
            since = self._last_ok_mono.get(peer, self._probe_started)
            up = mono - since < self.ctx.config.replication.peer_down_after
            failing = old.failing_since or now
            new = replace(
                old,
                up=up,
                reachable=False,
                last_probe=now,
                failing_since=failing,
                down_since=None if up else (old.down_since or failing),
                last_error=error,
            )
            if old.up and not up:
                log.warning("peer_down", peer=peer, last_ok=old.last_ok, error=error)
        if new.up and not old.up:
            log.info("peer_up_again", peer=peer)
        self._health[peer] = new
        self.ctx.metrics.peer_up.labels(peer=peer).set(1 if new.reachable else 0)

    async def get_json(self, url: str) -> Any:
        """GET a peer URL with the bearer token and :data:`PEER_CALL_TIMEOUT`.

        Error handling: ``aiohttp.ClientError`` for non-200 answers and network
        failures, ``TimeoutError``, ``ValueError`` for a body that is not JSON.
        """
        http = self.ctx.http
        if http is None:
            raise aiohttp.ClientError("daemon HTTP session not open")
        timeout = aiohttp.ClientTimeout(total=PEER_CALL_TIMEOUT)
        async with http.get(url, timeout=timeout, headers=self.ctx.peer_headers()) as resp:
            if resp.status != 200:
                raise aiohttp.ClientError(f"{url} answered {resp.status}")
            return await resp.json(content_type=None)

    async def notify(self, state: TierState, warnings: list[str]) -> dict[str, int | None]:
        """POST ``state`` to every peer's ``/v1/failover/notify``; the epoch each acknowledged.

        Error handling: never raises for a peer; a refusal or an unreachable
        peer appends a line to ``warnings`` (and counts as a failed call in its
        health), because the new epoch is already persisted and each peer
        learns it later anyway (etcd watch, or this region's ``/v1/status``).
        """
        acked: dict[str, int | None] = {}
        http = self.ctx.http
        timeout = aiohttp.ClientTimeout(total=PEER_CALL_TIMEOUT)
        region = self.ctx.config.region
        body = {"from": region, "state": state.to_json()}

        async def notify(peer: str, url: str) -> None:
            try:
                if http is None:
                    raise aiohttp.ClientError("daemon HTTP session not open")
                async with http.post(
                    f"{url}/v1/failover/notify",
                    json=body,
                    timeout=timeout,
                    headers=self.ctx.peer_headers(),
                ) as resp:
                    reply = await resp.json(content_type=None)
                    if resp.status != 200:
                        detail = reply.get("detail") if isinstance(reply, dict) else reply
                        warnings.append(
                            f"peer {peer} refused the new state ({resp.status}): {detail}"
                        )
                        return
                acked[peer] = reply.get("epoch") if isinstance(reply, dict) else None
                self.report(peer, True)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                self.report(peer, False, describe(exc))
                learns = (
                    "through the etcd watch"
                    if self.ctx.config.state.backend == "etcd"
                    else f"from {region}'s /v1/status when it is back"
                )
                warnings.append(
                    f"could not notify {peer} ({describe(exc)}); it learns epoch "
                    f"{state.epoch} {learns}"
                )

        await asyncio.gather(*(notify(p, u) for p, u in sorted(self.ctx.config.peers.items())))
        return acked

    async def run(self, on_status: StatusHandler | None) -> None:
        """Probe every peer forever, every :attr:`probe_interval` seconds.

        Error handling: a failed probe is recorded, never raised.
        """
        while True:
            await self.probe_round(on_status)
            await asyncio.sleep(self.probe_interval)

    async def probe_round(self, on_status: StatusHandler | None) -> None:
        await asyncio.gather(*(self._probe(p, on_status) for p in self._health))
        self.first_round_done = True

    async def _probe(self, peer: str, on_status: StatusHandler | None) -> None:
        url = self.ctx.config.peers[peer]
        try:
            await self.get_json(f"{url}/healthz")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.report(peer, False, describe(exc))
            return
        self.report(peer, True)
        if on_status is None:
            return
        try:
            doc = await self.get_json(f"{url}/v1/status")
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return  # healthz answered; status may be briefly unavailable
        if await on_status(peer, doc, authenticated_channel(url)):
            self._status_compared.add(peer)


def authenticated_channel(url: str) -> bool:
    """Whether what ``url`` answers can be trusted to come from the peer.

    ``https://``: the daemon's session verified the peer's certificate. Plain
    ``http://`` only to a loopback host (tests, one-machine demos); across a
    network (``admin.allow_plaintext``) a peer's epoch is learnt only from its
    notification, which needs the peer credential.
    """
    parts = urlsplit(url)
    return parts.scheme == "https" or is_loopback(parts.hostname or "")


def describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
