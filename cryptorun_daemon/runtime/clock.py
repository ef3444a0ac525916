"""Time as the daemon sees it, injectable so tests control it without sleeping."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Current UTC wall time (timezone-aware)."""
        ...

    def time(self) -> float:
        """Current UTC wall time as Unix seconds."""
        ...

    def monotonic(self) -> float:
        """A monotonic reading for measuring intervals."""
        ...


class SystemClock:
    """The real clock. Wall time assumes NTP-disciplined hosts (docs/DATA_MULTI_REGION.md)."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock tests move by hand: ``advance`` changes wall and monotonic time together."""

    def __init__(self, start: float = 1_756_684_800.0) -> None:  # 2025-09-01T00:00:00Z
        self._wall = start
        self._mono = 0.0

    def now(self) -> datetime:
        return datetime.fromtimestamp(self._wall, UTC)

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds
