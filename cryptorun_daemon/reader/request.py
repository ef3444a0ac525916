"""What a research read asks for, checked once at the edge (library, CLI, HTTP).

Every value that later names a directory (dataset, venue, symbol, tier) goes
through the layout's segment rules here, so a hostile CLI argument or query
string is refused before any path is built from it. Symbols are accepted in
either spelling (``BTC/USD`` or ``BTC-USD``) and kept in the one canonical
path form ``BTC-USD`` (see :mod:`cryptorun_daemon.reader.symbols`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal, get_args

from cryptorun_daemon.config import TIERS, Tier
from cryptorun_daemon.errors import UsageError
from cryptorun_daemon.reader.symbols import canonical_symbol
from cryptorun_daemon.storage.layout import check_segment, parse_tier
from cryptorun_daemon.timefmt import parse_rfc3339

QuarantineMode = Literal["drop", "keep", "only"]
DriftPolicy = Literal["unify", "refuse"]

QUARANTINE_MODES: Final[tuple[QuarantineMode, ...]] = get_args(QuarantineMode)
DRIFT_POLICIES: Final[tuple[DriftPolicy, ...]] = get_args(DriftPolicy)
DEFAULT_TIERS: Final[tuple[Tier, ...]] = ("cold", "warm")
# A column name as the writers produce them; anything else cannot be in a file.
_COLUMN: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# More filter values than any real request needs: keeps one request's work bounded.
MAX_FILTER_VALUES: Final = 1000


@dataclass(frozen=True)
class ReadRequest:
    """A checked read: ``[start, end)`` of one dataset, filters, knowledge time, modes.

    ``tiers`` is the cascade in order of preference: a span served by an
    earlier tier is never read again from a later one. ``as_of`` (knowledge
    time) and ``include_unsealed`` exclude each other: unsealed data has no
    seal time. Build it with :meth:`build` (typed values) or :meth:`from_strings`
    (CLI arguments, query strings). Error handling: :class:`UsageError` (400)
    or :class:`PathRejectedError` (400) naming the offending value.
    """

    dataset: str
    start: datetime
    end: datetime
    venues: frozenset[str] | None = None
    symbols: frozenset[str] | None = None
    columns: tuple[str, ...] | None = None
    as_of: datetime | None = None
    quarantine: QuarantineMode = "drop"
    tiers: tuple[Tier, ...] = DEFAULT_TIERS
    include_unsealed: bool = False
    on_drift: DriftPolicy = "unify"

    @classmethod
    def build(
        cls,
        dataset: str,
        start: datetime,
        end: datetime,
        *,
        venues: Iterable[str] | None = None,
        symbols: Iterable[str] | None = None,
        columns: Sequence[str] | None = None,
        as_of: datetime | None = None,
        quarantine: str = "drop",
        tiers: Sequence[str] = DEFAULT_TIERS,
        include_unsealed: bool = False,
        on_drift: str = "unify",
    ) -> ReadRequest:
        """Check every value and return the request (see the class docstring)."""
        check_segment("dataset", dataset)
        start, end = _aware("start", start), _aware("end", end)
        if not start < end:
            raise UsageError(f"the window is empty or reversed: start {start} is not before {end}")
        checked_as_of = _aware("as_of", as_of) if as_of is not None else None
        if checked_as_of is not None and include_unsealed:
            raise UsageError(
                "as_of and include_unsealed exclude each other (unsealed data has no seal time)"
            )
        if quarantine not in QUARANTINE_MODES:
            raise UsageError(
                f"quarantine {quarantine!r} is not one of {', '.join(QUARANTINE_MODES)}"
            )
        if on_drift not in DRIFT_POLICIES:
            raise UsageError(f"on_drift {on_drift!r} is not one of {', '.join(DRIFT_POLICIES)}")
        tier_list = tuple(dict.fromkeys(parse_tier(t) for t in tiers))
        if not tier_list:
            raise UsageError(f"at least one tier is needed (one of {', '.join(TIERS)})")
        return cls(
            dataset=dataset,
            start=start,
            end=end,
            venues=_filter("venue", venues, lambda v: check_segment("venue", v)),
            symbols=_filter("symbol", symbols, canonical_symbol),
            columns=_columns(columns),
            as_of=checked_as_of,
            quarantine=quarantine,  # checked against the Literal above
            tiers=tier_list,
            include_unsealed=include_unsealed,
            on_drift=on_drift,  # checked against the Literal above
        )

    @classmethod
    def from_strings(cls, dataset: str, values: Mapping[str, Sequence[str]]) -> ReadRequest:
        """Build from text: ``start``, ``end``, ``as_of`` RFC 3339; lists may be comma-separated.

        Keys: ``start``, ``end`` (one each, required), ``venue``, ``symbol``,
        ``column``/``columns``, ``tier`` (repeatable or comma-separated),
        ``as_of``, ``quarantine``, ``on_drift``, ``include_unsealed``
        (``true``/``false``). Unknown keys are refused, so a typo never
        silently widens a read.
        """
        known = {
            "start", "end", "venue", "symbol", "column", "columns", "tier",
            "as_of", "quarantine", "on_drift", "include_unsealed",
        }  # fmt: skip
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"unknown read parameter(s): {', '.join(unknown)}")

        def one(name: str, *, required: bool = False) -> str | None:
            given = values.get(name) or []
            if len(given) > 1:
                raise UsageError(f"{name} given {len(given)} times; give it once")
            if not given or not given[0]:
                if required:
                    raise UsageError(f"{name} is required (RFC 3339, e.g. 2025-09-01T00:00:00Z)")
                return None
            return given[0]

        def many(*names: str) -> list[str] | None:
            items = [
                part for name in names for raw in values.get(name, []) for part in raw.split(",")
            ]
            items = [item.strip() for item in items if item.strip()]
            return items or None

        unsealed = (one("include_unsealed") or "false").lower()
        if unsealed not in ("true", "false"):
            raise UsageError(f"include_unsealed {unsealed!r} is not true or false")
        as_of_text = one("as_of")
        return cls.build(
            dataset,
            _time("start", one("start", required=True) or ""),
            _time("end", one("end", required=True) or ""),
            venues=many("venue"),
            symbols=many("symbol"),
            columns=many("column", "columns"),
            as_of=_time("as_of", as_of_text) if as_of_text is not None else None,
            quarantine=one("quarantine") or "drop",
            tiers=many("tier") or DEFAULT_TIERS,
            include_unsealed=unsealed == "true",
            on_drift=one("on_drift") or "unify",
        )

    def describe(self) -> dict[str, object]:
        """The request as JSON-ready values (recorded in the result's provenance)."""
        return {
            "dataset": self.dataset,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "venues": sorted(self.venues) if self.venues is not None else None,
            "symbols": sorted(self.symbols) if self.symbols is not None else None,
            "columns": list(self.columns) if self.columns is not None else None,
            "as_of": self.as_of.isoformat() if self.as_of is not None else None,
            "quarantine": self.quarantine,
            "tiers": list(self.tiers),
            "include_unsealed": self.include_unsealed,
            "on_drift": self.on_drift,
        }


def _aware(name: str, moment: datetime) -> datetime:
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise UsageError(f"{name} must be a timezone-aware datetime (UTC), got {moment!r}")
    return moment.astimezone(UTC)


def _time(name: str, text: str) -> datetime:
    try:
        return parse_rfc3339(text)
    except ValueError:
        raise UsageError(
            f"{name} {text[:64]!r} is not an RFC 3339 time with a zone (2025-09-01T00:00:00Z)"
        ) from None


def _filter(
    kind: str, values: Iterable[str] | None, check: Callable[[str], str]
) -> frozenset[str] | None:
    if values is None:
        return None
    if isinstance(values, str):
        values = [values]
    items = list(values)
    if len(items) > MAX_FILTER_VALUES:
        raise UsageError(f"at most {MAX_FILTER_VALUES} {kind} values per read")
    try:
        return frozenset(check(v) for v in items)
    except (TypeError, AttributeError):
        raise UsageError(f"{kind} filter values must be strings") from None


def _columns(columns: Sequence[str] | None) -> tuple[str, ...] | None:
    if columns is None:
        return None
    if isinstance(columns, str):
        columns = [columns]
    chosen = tuple(dict.fromkeys(columns))
    for name in chosen:
        if not isinstance(name, str) or _COLUMN.fullmatch(name) is None:
            raise UsageError(f"column {name!r} is not a column name ([A-Za-z_][A-Za-z0-9_]*)")
    return chosen
