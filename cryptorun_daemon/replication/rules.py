"""The replication vocabulary: tiers, regions, time ranges, steps and plans.

Everything here is frozen and converts to and from JSON (the simulate API and
CLI exchange plans), so a plan can be logged, diffed and replayed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NewType

from cryptorun_daemon.config import REGION_NAME_PATTERN, TIERS, Mode, Rule, Tier, is_region_name
from cryptorun_daemon.errors import UsageError
from cryptorun_daemon.timefmt import format_rfc3339, parse_rfc3339

__all__ = [
    "Mode",
    "Plan",
    "PlannedPartition",
    "Region",
    "Rule",
    "SkippedPartition",
    "Step",
    "Tier",
    "TimeRange",
    "parse_region",
    "parse_tier",
    "rule_to_json",
]

Region = NewType("Region", str)


def parse_region(text: str) -> Region:
    if not is_region_name(text):
        raise UsageError(f"region {text!r} must match {REGION_NAME_PATTERN}")
    return Region(text)


def parse_tier(text: str) -> Tier:
    if text not in TIERS:
        raise UsageError(f"tier {text!r} is not one of {', '.join(TIERS)}")
    return text


def rule_to_json(rule: Rule) -> dict[str, Any]:
    return {
        "tier": rule.tier,
        "mode": rule.mode,
        "from": rule.from_region,
        "to": list(rule.to_regions),
        "lag_slo_seconds": rule.lag_slo,
    }


def _parse_instant(text: str, what: str) -> datetime:
    try:
        return parse_rfc3339(text.strip())
    except ValueError:
        raise UsageError(
            f"{what} {text!r} is not RFC 3339 with a zone (e.g. 2025-09-01T00:00:00Z)"
        ) from None


@dataclass(frozen=True, order=True)
class TimeRange:
    """A half-open UTC interval ``[start, end)``.

    Error handling: construction raises :class:`UsageError` for naive
    datetimes and for ``end <= start``.
    """

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        for name, value in (("start", self.start), ("end", self.end)):
            if value.tzinfo is None or value.utcoffset() is None:
                raise UsageError(f"window {name} {value.isoformat()} is naive; use UTC")
        object.__setattr__(self, "start", self.start.astimezone(UTC))
        object.__setattr__(self, "end", self.end.astimezone(UTC))
        if self.end <= self.start:
            end, start = format_rfc3339(self.end), format_rfc3339(self.start)
            raise UsageError(f"window end {end} must be after start {start}")

    @classmethod
    def parse(cls, text: str) -> TimeRange:
        """Parse ``START/END`` (RFC 3339 each)."""
        start_text, sep, end_text = text.partition("/")
        if not sep or not start_text or not end_text or "/" in end_text:
            raise UsageError(f"window {text!r} must be START/END in RFC 3339")
        return cls(_parse_instant(start_text, "window start"), _parse_instant(end_text, "end"))

    def contains_span(self, start: datetime, end: datetime) -> bool:
        """True when ``[start, end)`` lies wholly inside this range (the PIT rule)."""
        return self.start <= start and end <= self.end

    def overlaps(self, start: datetime, end: datetime) -> bool:
        return start < self.end and self.start < end

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    def __str__(self) -> str:
        return f"{format_rfc3339(self.start)}/{format_rfc3339(self.end)}"

    def to_json(self) -> str:
        return str(self)


@dataclass(frozen=True)
class PlannedPartition:
    """One partition a step copies. ``action`` is ``copy`` or ``replace``."""

    path: str
    content_hash: str
    files: int
    bytes: int
    sealed_at: str
    epoch: int
    action: str = "copy"

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "content_hash": self.content_hash,
            "files": self.files,
            "bytes": self.bytes,
            "sealed_at": self.sealed_at,
            "epoch": self.epoch,
            "action": self.action,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PlannedPartition:
        return cls(
            path=str(data["path"]),
            content_hash=str(data["content_hash"]),
            files=int(data["files"]),
            bytes=int(data["bytes"]),
            sealed_at=str(data["sealed_at"]),
            epoch=int(data["epoch"]),
            action=str(data.get("action", "copy")),
        )


@dataclass(frozen=True)
class Step:
    """Copy ``partitions`` of ``tier`` from one region to another, for one window."""

    tier: Tier
    from_region: str
    to_region: str
    window: TimeRange
    validators: tuple[str, ...] = ()
    partitions: tuple[PlannedPartition, ...] = ()

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.partitions)

    @property
    def files(self) -> int:
        return sum(p.files for p in self.partitions)

    def to_json(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "from": self.from_region,
            "to": self.to_region,
            "window": self.window.to_json(),
            "validators": list(self.validators),
            "partitions": [p.to_json() for p in self.partitions],
            "files": self.files,
            "bytes": self.bytes,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Step:
        return cls(
            tier=parse_tier(str(data["tier"])),
            from_region=str(data["from"]),
            to_region=str(data["to"]),
            window=TimeRange.parse(str(data["window"])),
            validators=tuple(str(v) for v in data.get("validators", ())),
            partitions=tuple(PlannedPartition.from_json(p) for p in data.get("partitions", ())),
        )


@dataclass(frozen=True)
class SkippedPartition:
    """A source partition the plan leaves out, and why (bounded ``why`` values)."""

    path: str
    why: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "why": self.why}


# Why a partition in or near the window is not copied. ``unsealed``, ``future``,
# ``crosses_window``, ``no_manifest`` and ``stale_epoch`` are problems under
# ``strict``; ``in_sync`` is the normal case and only counted.
SKIP_REASONS: Final = (
    "unsealed",
    "no_manifest",
    "future",
    "crosses_window",
    "stale_epoch",
)


@dataclass(frozen=True)
class Plan:
    """The minimal, deterministic list of steps that brings ``to`` in line with ``from``.

    ``reason`` is set when the plan is empty on purpose (peer unhealthy, this
    region is not a destination…). ``in_sync`` counts partitions in the window
    that the destination already holds with the same content hash.
    """

    tier: Tier
    from_region: str
    to_region: str
    window: TimeRange
    steps: tuple[Step, ...] = ()
    reason: str | None = None
    in_sync: int = 0
    skipped: tuple[SkippedPartition, ...] = field(default=())

    @property
    def partitions(self) -> int:
        return sum(len(s.partitions) for s in self.steps)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.steps)

    @property
    def files(self) -> int:
        return sum(s.files for s in self.steps)

    def problems(self) -> list[str]:
        """What makes this plan unacceptable under ``strict``."""
        out = [self.reason] if self.reason else []
        counts: dict[str, int] = {}
        for skip in self.skipped:
            counts[skip.why] = counts.get(skip.why, 0) + 1
        out += [f"{n} partition(s) {why}" for why, n in sorted(counts.items())]
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "from": self.from_region,
            "to": self.to_region,
            "window": self.window.to_json(),
            "reason": self.reason,
            "steps": [s.to_json() for s in self.steps],
            "summary": {
                "steps": len(self.steps),
                "partitions": self.partitions,
                "files": self.files,
                "bytes": self.bytes,
                "in_sync": self.in_sync,
                "skipped": len(self.skipped),
            },
            "skipped": [s.to_json() for s in self.skipped],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        summary = data.get("summary", {})
        return cls(
            tier=parse_tier(str(data["tier"])),
            from_region=str(data["from"]),
            to_region=str(data["to"]),
            window=TimeRange.parse(str(data["window"])),
            steps=tuple(Step.from_json(s) for s in data.get("steps", ())),
            reason=data.get("reason"),
            in_sync=int(summary.get("in_sync", 0)),
            skipped=tuple(
                SkippedPartition(str(s["path"]), str(s["why"])) for s in data.get("skipped", ())
            ),
        )
