"""How a subsystem (replication, hot tier, failover…) plugs into the daemon.

The daemon builds a :class:`DaemonContext`, constructs each component with it,
mounts the component's routes on the admin app, starts components in order and
stops them in reverse order. Components spawn their long-running work through
``ctx.supervisor`` so no task is ever unowned. On SIGHUP the daemon hands the
new config to every component's ``reload`` and merges the answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from cryptorun_daemon.config import Config
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.runtime.clock import Clock
from cryptorun_daemon.runtime.supervisor import Supervisor
from cryptorun_daemon.security.credentials import Credentials
from cryptorun_daemon.security.peer_errors import PeerErrors


@dataclass
class DaemonContext:
    """Everything a component may use; owned by the daemon, shared read-only.

    ``http`` is the daemon's single client session (connection reuse for every
    peer call, TLS per ``[peers]``); it exists from startup until shutdown.
    ``credentials`` are the tokens incoming calls are checked against and the
    one outgoing peer calls present. ``peer_errors`` counts failed peer calls
    (the session's trace hook feeds it).
    """

    config: Config
    metrics: Metrics
    clock: Clock
    supervisor: Supervisor
    credentials: Credentials = field(default_factory=Credentials)
    http: aiohttp.ClientSession | None = None
    components: dict[str, Component] = field(default_factory=dict)
    peer_errors: PeerErrors | None = None

    def peer_headers(self) -> dict[str, str]:
        """The credential presented on every call to a peer (the peer-scope token)."""
        return self.credentials.peer_headers()


@dataclass(frozen=True)
class ReloadResult:
    """What the daemon or one component did with a new config on reload.

    Entries name a top-level config section (``"hot"``) or a key inside one
    (``"rules.lag_slo"``). ``applied``: in effect now. ``needs_restart``:
    changed, but only a restart puts it in effect. Listing a section in either
    *claims* it: the daemon reports a changed section nobody claims as needing
    a restart, with a warning, so a new section is never silently ignored.
    """

    applied: tuple[str, ...] = ()
    needs_restart: tuple[str, ...] = ()

    def merged(self, other: ReloadResult) -> ReloadResult:
        """Both results, first-seen order, no duplicates."""
        return ReloadResult(
            applied=tuple(dict.fromkeys((*self.applied, *other.applied))),
            needs_restart=tuple(dict.fromkeys((*self.needs_restart, *other.needs_restart))),
        )

    def claims(self, section: str) -> bool:
        """Whether ``section`` (top level) is named here, alone or as ``section.key``."""
        return any(
            entry.split(".", 1)[0] == section for entry in (*self.applied, *self.needs_restart)
        )


def config_sections(config: Config) -> tuple[str, ...]:
    """Every top-level section of ``config`` (its dataclass fields but ``source``)."""
    return tuple(f.name for f in fields(config) if f.name != "source")


def changed_sections(old: Config, new: Config, *sections: str) -> tuple[str, ...]:
    """Those of ``sections`` whose value differs between ``old`` and ``new``."""
    return tuple(s for s in sections if getattr(old, s) != getattr(new, s))


class Component(Protocol):
    """A subsystem of the daemon.

    ``start`` must return promptly (spawn workers, do not run them inline);
    ``stop`` releases what ``start`` acquired and must be safe to call after a
    failed ``start``.
    """

    name: str

    def routes(self) -> Sequence[web.RouteDef]:
        """Admin routes. Every route except the public ones requires the bearer token."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def status(self, *, tier: str | None, region: str | None) -> dict[str, Any]:
        """This component's part of ``GET /v1/status`` (JSON-serialisable)."""
        ...

    def not_ready_reasons(self) -> list[str]:
        """Why this component cannot serve yet (empty when ready)."""
        ...

    def reload(self, new_config: Config) -> ReloadResult:
        """Apply what it can of ``new_config`` (SIGHUP); ``ctx.config`` is still the old one.

        Name every changed section this component reads, as applied or as
        needing a restart (one that can apply nothing live lists them all as
        ``needs_restart``). The daemon replaces ``ctx.config`` only with what
        it applies itself (log, rule SLOs).
        """
        ...
