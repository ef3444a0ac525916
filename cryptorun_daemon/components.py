"""The daemon's subsystems, in start order (stopped in reverse)."""

from __future__ import annotations

from cryptorun_daemon.runtime.component import Component, DaemonContext


def build_components(ctx: DaemonContext) -> list[Component]:
    """Construct every subsystem for this region's daemon.

    Order matters: later components may look up earlier ones in
    ``ctx.components`` (e.g. replication asks failover for the current epoch).
    """
    del ctx  # subsystems are added here as they land
    return []
