"""The failover HTTP API: ``POST /v1/failover`` and the peer endpoint ``POST /v1/failover/notify``.

Request parsing, the per-region views (epoch, lag) gathered before a
promotion, and the before/after topology and action list of the answer. The
component (:mod:`cryptorun_daemon.failover.component`) owns the store and the
cache; this module only drives them, through the :class:`FailoverHost`
protocol, so it never imports the component (the component imports it). Peer
notification lives in :mod:`~cryptorun_daemon.failover.peers`, reading a
peer's status document in :mod:`~cryptorun_daemon.failover.roles`. Store
failures are :class:`~cryptorun_daemon.errors.StateStoreError`, which the
admin error middleware answers with 503 ``state_store``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import structlog
from aiohttp import web

from cryptorun_daemon.admin.bodies import json_object
from cryptorun_daemon.admin.errors import json_error
from cryptorun_daemon.errors import StateStoreError, UsageError
from cryptorun_daemon.failover.peers import PeerMonitor, describe
from cryptorun_daemon.failover.roles import Snapshot, TierState, require_active_passive
from cryptorun_daemon.failover.store import StateStore
from cryptorun_daemon.runtime.component import DaemonContext
from cryptorun_daemon.security.tls import peer_identity
from cryptorun_daemon.timefmt import format_rfc3339

log = structlog.get_logger("cryptorun.failover")


class FailoverHost(Protocol):
    """What the handlers need from the failover component (which implements it)."""

    ctx: DaemonContext
    region: str
    peers: PeerMonitor

    def not_ready_reasons(self) -> list[str]: ...

    def require_store(self) -> StateStore: ...

    def current(self, tier: str) -> TierState | None: ...

    def apply(self, state: TierState) -> None: ...

    def apply_snapshot(self, snapshot: Snapshot) -> None: ...

    async def adopt(self, remote: TierState, *, source: str) -> bool: ...

    def status(self, *, tier: str | None, region: str | None) -> dict[str, Any]: ...


@dataclass(frozen=True)
class FailoverRequest:
    """A validated ``POST /v1/failover`` body."""

    tier: str
    promote: str
    demote: str
    dry_run: bool
    expected_epoch: int | None

    @classmethod
    def parse(cls, body: dict[str, Any], known: Sequence[str]) -> FailoverRequest:
        """Error handling: :class:`UsageError` (400) naming the first bad field."""
        unknown = sorted(set(body) - {"tier", "promote", "demote", "dry_run", "expected_epoch"})
        if unknown:
            raise UsageError(f"unknown field(s) {', '.join(unknown)} in failover request")
        tier = require_active_passive(_string(body, "tier"))
        names: dict[str, str] = {}
        for key in ("promote", "demote"):
            names[key] = _string(body, key)
            if names[key] not in known:
                raise UsageError(
                    f"{key}: region {names[key]!r} is unknown (known: {', '.join(known)})"
                )
        if names["promote"] == names["demote"]:
            raise UsageError(f"promote and demote are both {names['promote']!r}")
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise UsageError("dry_run must be true or false")
        expected = body.get("expected_epoch")
        if expected is not None and (
            isinstance(expected, bool) or not isinstance(expected, int) or expected < 1
        ):
            raise UsageError("expected_epoch must be an integer >= 1")
        return cls(tier, names["promote"], names["demote"], dry_run, expected)


class FailoverApi:
    """Request handlers bound to one failover component."""

    def __init__(self, component: FailoverHost) -> None:
        self.component = component
        self.ctx = component.ctx
        self.region = component.region

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/failover", self.handle_failover),
            web.post("/v1/failover/notify", self.handle_notify),
        ]

    async def handle_failover(self, request: web.Request) -> web.Response:
        """``POST /v1/failover``: validate, persist the new epoch, tell peers, report.

        Order: parse (400) → read the tier from the store → gather each
        region's view (epoch, lag) → promote in the store (409 on conflict; the
        new epoch is durable here) → update the cache, the fence and metrics →
        notify peers (failures become warnings) → answer. A dry run stops
        before the store write and sends nothing.
        """
        req = FailoverRequest.parse(await json_object(request), self.ctx.config.regions)
        reasons = self.component.not_ready_reasons()
        if reasons:
            return json_error(503, "not_ready", "; ".join(reasons))
        store = self.component.require_store()
        before = await store.get(req.tier)
        views = await self.region_views(req.tier)
        if req.dry_run:
            after = before.promoted(
                req.promote, req.demote, expected_epoch=req.expected_epoch, at=self.ctx.clock.now()
            )
        else:
            after = await store.promote(req.tier, req.promote, req.demote, req.expected_epoch)
        previous = after.history[-1].demoted if after.history else before.primary
        warnings = self._preflight_warnings(req, views)
        acked: dict[str, int | None] = {}
        if not req.dry_run:
            self.component.apply(after)
            log.warning(
                "failover",
                tier=req.tier,
                promoted=after.primary,
                demoted=previous,
                epoch=after.epoch,
            )
            acked = await self.component.peers.notify(after, warnings)
        after_views = {r: dict(v, epoch=acked.get(r, v.get("epoch"))) for r, v in views.items()}
        if not req.dry_run:
            after_views[self.region]["epoch"] = after.epoch
        candidate = views.get(req.promote, {})
        return web.json_response(
            {
                "tier": req.tier,
                "epoch": after.epoch,
                "primary": after.primary,
                "previous_primary": previous,
                "dry_run": req.dry_run,
                "state_backend": store.backend,
                "candidate_lag_seconds": candidate.get("lag_seconds"),
                "actions": self._actions(req, before, after, acked),
                "warnings": warnings,
                "before": _topology(before, views),
                "after": _topology(after, after_views),
            }
        )

    async def handle_notify(self, request: web.Request) -> web.Response:
        """``POST /v1/failover/notify`` ``{"from", "state"}``: a peer changed a tier.

        etcd: re-read the shared store now. File: adopt the carried state if
        its epoch is higher (replaying its transitions); 409 when it diverges.
        Under mutual TLS, 403 when ``from`` is not the caller's certificate region.
        """
        body = await json_object(request)
        sender = body.get("from")
        transport = request.transport
        identity = peer_identity(transport.get_extra_info("peercert")) if transport else None
        if identity in self.ctx.config.peers and sender != identity:
            # Under mutual TLS the certificate says who is calling; a peer must
            # not pass its notification off as another region's.
            return json_error(
                403,
                "forbidden",
                f"notification claims to be from {sender!r}, certificate says {identity!r}",
            )
        try:
            remote = TierState.from_json(body.get("state"))
        except StateStoreError as exc:
            raise UsageError(f"state: {exc}") from None
        store = self.component.require_store()
        if store.backend == "file":
            applied = await self.component.adopt(remote, source=str(sender))
        else:
            self.component.apply_snapshot(await store.snapshot())
            applied = False
        local = self.component.current(remote.tier)
        return web.json_response(
            {
                "region": self.region,
                "tier": remote.tier,
                "applied": applied,
                "epoch": local.epoch if local else None,
                "primary": local.primary if local else None,
            }
        )

    # --- helpers --------------------------------------------------------------------

    async def region_views(self, tier: str) -> dict[str, dict[str, Any]]:
        """Each region's own view of ``tier``: epoch, lag to its source, last success, up."""
        views = {self.region: _view_from_status(self._own_status(tier), tier, reachable=True)}
        peers = self.component.peers

        async def fetch(peer: str, url: str) -> None:
            try:
                doc = await peers.get_json(f"{url}/v1/status?tier={tier}")
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                peers.report(peer, False, describe(exc))
                views[peer] = {
                    "epoch": None,
                    "lag_seconds": None,
                    "last_success": None,
                    "reachable": False,
                    "error": describe(exc),
                }
                return
            peers.report(peer, True)
            views[peer] = _view_from_status(doc, tier, reachable=True)

        await asyncio.gather(*(fetch(p, u) for p, u in self.ctx.config.peers.items()))
        return views

    def _own_status(self, tier: str) -> dict[str, Any]:
        """This daemon's status for ``tier`` as peers see it (own part + replication's)."""
        doc: dict[str, Any] = {"tiers": {}}
        for component in (self.component, self.ctx.components.get("warm_cold")):
            if component is not None:
                _merge(doc, component.status(tier=tier, region=None))
        return doc

    def _preflight_warnings(
        self, req: FailoverRequest, views: dict[str, dict[str, Any]]
    ) -> list[str]:
        warnings = []
        if not views.get(req.demote, {}).get("reachable", True):
            warnings.append(
                f"demoted region {req.demote} is unreachable: it is fenced by the new "
                "epoch and learns it when it rejoins"
            )
        candidate = views.get(req.promote, {})
        if not candidate.get("reachable", True):
            warnings.append(
                f"promoted region {req.promote} is unreachable now: it takes over "
                "when it learns the new epoch"
            )
        lag, slo = candidate.get("lag_seconds"), candidate.get("lag_slo_seconds")
        if lag is None:
            warnings.append(
                f"lag of {req.promote} unknown: partitions it has not replicated are "
                "pulled from the old primary on rejoin"
            )
        elif slo is not None and lag > slo:
            warnings.append(f"{req.promote} lags {lag:.1f}s behind {req.demote} (SLO {slo:g}s)")
        return warnings

    def _actions(
        self,
        req: FailoverRequest,
        before: TierState,
        after: TierState,
        acked: dict[str, int | None],
    ) -> list[dict[str, Any]]:
        """The steps of this failover, in order; a dry run lists them as ``planned``."""
        done = "planned" if req.dry_run else "done"
        backend = self.component.require_store().backend
        actions = [
            {
                "action": "check",
                "status": "done",
                "detail": f"{req.demote} is primary of {req.tier} at epoch {before.epoch}; "
                f"{req.promote} is a replica",
            },
            {
                "action": "persist_epoch",
                "status": done,
                "detail": f"{backend} store: {req.tier} epoch {before.epoch} -> {after.epoch}, "
                f"primary {req.demote} -> {req.promote}",
            },
            {
                "action": "fence",
                "status": done,
                "detail": f"epoch {after.epoch} fences {req.demote}: {req.tier} writes and "
                f"sources stamped with epoch <= {before.epoch} are refused",
            },
        ]
        for peer, url in sorted(self.ctx.config.peers.items()):
            status = done if req.dry_run or peer in acked else "failed"
            actions.append(
                {
                    "action": "notify",
                    "status": status,
                    "target": peer,
                    "detail": f"POST {url}/v1/failover/notify",
                }
            )
        actions.append(
            {
                "action": "rejoin",
                "status": "planned",
                "target": req.demote,
                "detail": f"{req.demote} becomes a replica of {req.promote} when it "
                "learns the epoch; its unreplicated partitions are pulled by "
                f"{req.promote}, its later writes moved to _divergent/",
            }
        )
        return actions


# --- module helpers -------------------------------------------------------------------


def _view_from_status(doc: Any, tier: str, *, reachable: bool) -> dict[str, Any]:
    info = doc.get("tiers", {}).get(tier, {}) if isinstance(doc, dict) else {}
    primary = info.get("primary")
    source = info.get("sources", {}).get(primary, {}) if primary else {}
    return {
        "epoch": info.get("epoch"),
        "lag_seconds": source.get("lag_seconds"),
        "lag_slo_seconds": source.get("lag_slo_seconds"),
        "last_success": source.get("last_success"),
        "reachable": reachable,
    }


def _topology(state: TierState, views: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per-region rows for a before/after table (role from ``state``, rest from views)."""
    regions = sorted({*views, state.primary})
    return {
        "primary": state.primary,
        "epoch": state.epoch,
        "updated_at": format_rfc3339(state.updated_at),
        "regions": {
            r: {"role": state.role_of(r), **views.get(r, {"reachable": None})} for r in regions
        },
    }


def _string(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise UsageError(f"{key} is required and must be a string")
    return value


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
