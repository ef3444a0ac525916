"""How a subsystem (replication, hot tier, failover…) plugs into the daemon.

The daemon builds a :class:`DaemonContext`, constructs each component with it,
mounts the component's routes on the admin app, starts components in order and
stops them in reverse order. Components spawn their long-running work through
``ctx.supervisor`` so no task is ever unowned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from cryptorun_daemon.config import Config
from cryptorun_daemon.metrics import Metrics
from cryptorun_daemon.runtime.clock import Clock
from cryptorun_daemon.runtime.supervisor import Supervisor


@dataclass
class DaemonContext:
    """Everything a component may use; owned by the daemon, shared read-only.

    ``http`` is the daemon's single client session (connection reuse for every
    peer call); it exists from startup until shutdown. ``token`` is the bearer
    token from ``admin.token_file`` (``None`` when unset), used both to check
    incoming peer calls and to authenticate outgoing ones.
    """

    config: Config
    metrics: Metrics
    clock: Clock
    supervisor: Supervisor
    token: str | None
    http: aiohttp.ClientSession | None = None
    components: dict[str, Component] = field(default_factory=dict)

    def peer_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


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
