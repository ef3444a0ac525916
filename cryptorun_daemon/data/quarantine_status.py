"""Quarantine counts for ``/v1/status``, refreshed in the background.

Counting walks the storage tree (quarantined files and every row-level
sidecar), which is too slow to do per status request on a large store; a
supervised worker recounts off the event loop every few seconds instead, and
never spends more than :data:`MAX_WALK_SHARE` of its time walking: on a
year-sized store one walk takes tens of seconds of CPU, and a fixed 5 s
pause would keep a core busy for good (and hold the GIL against the
daemon's other threads).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from cryptorun_daemon.config import Config
from cryptorun_daemon.data.validate.quarantine import quarantine_counts
from cryptorun_daemon.runtime.component import DaemonContext, ReloadResult

REFRESH_SECONDS = 5.0
#: The largest share of wall time the recount may spend walking the tree.
MAX_WALK_SHARE = 0.1


def refresh_delay(walk_seconds: float) -> float:
    """Seconds to wait after a walk that took ``walk_seconds`` before the next one.

    :data:`REFRESH_SECONDS` while walks are cheap; otherwise long enough that
    walking takes at most :data:`MAX_WALK_SHARE` of the time, so the cost of
    fresh counts stays a bounded share of one core whatever the history holds.
    """
    return max(REFRESH_SECONDS, walk_seconds * (1 / MAX_WALK_SHARE - 1))


class QuarantineStatus:
    """Component reporting ``quarantine: {tier: {files, rows}}`` for this region.

    Error handling: a failed count (a folder vanishing mid-walk) keeps the
    previous answer and is retried at the next refresh. Resource handling:
    holds nothing but the last counts; walks at most :data:`MAX_WALK_SHARE`
    of the time (:func:`refresh_delay`).
    """

    name = "quarantine"

    def __init__(self, ctx: DaemonContext) -> None:
        self.ctx = ctx
        self.counts: dict[str, dict[str, int]] | None = None

    def routes(self) -> Sequence[web.RouteDef]:
        return []

    async def start(self) -> None:
        self.ctx.supervisor.spawn("quarantine-status", self._refresh_forever)

    async def stop(self) -> None:
        return None

    async def refresh(self) -> None:
        cfg = self.ctx.config
        self.counts = await asyncio.to_thread(
            quarantine_counts, cfg.storage.root, region=cfg.region
        )

    async def _refresh_forever(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.refresh()
            except OSError:
                pass  # keep the last counts; the next pass will see a settled tree
            await asyncio.sleep(refresh_delay(time.monotonic() - started))

    def status(self, *, tier: str | None, region: str | None) -> dict[str, Any]:
        if self.counts is None:
            return {}
        counts = {t: c for t, c in self.counts.items() if tier is None or t == tier}
        return {"quarantine": counts}

    def reload(self, new_config: Config) -> ReloadResult:
        """Claims nothing: it reads ``storage.root`` afresh on every count (the daemon owns it)."""
        return ReloadResult()

    def not_ready_reasons(self) -> list[str]:
        return []
