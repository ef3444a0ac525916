"""The contract's partition layout: typed keys, parsing, formatting, safe paths.

```
{root}/{tier}/{dataset}/venue={venue}/symbol={BASE-QUOTE}/date=YYYY-MM-DD/hour=HH/
```

Hot and warm partitions are hourly, cold partitions daily (no ``hour=``).
Everything that reaches the filesystem from outside (HTTP paths, CLI
arguments) goes through :func:`parse_partition_path` or
:func:`resolve_partition_file`, which accept only names the layout can produce:
no ``..``, no absolute paths, no separators or ``%`` inside a segment, no hidden
names, and no symlink anywhere between ``root`` and the file.

Writers build paths the other way round, from record fields (a mirrored
trade's ``venue``, a manifest's partition, a region name): every such path is
built from a :class:`PartitionKey` (or :func:`quarantine_dir`), and both check
each value with :func:`check_segment` — the one rule for what a dataset,
venue, symbol or region may look like — so a value such as
``../../escaped`` is refused with :class:`PathRejectedError` by whichever
writer meets it first, wherever it came from.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Final, Literal

import structlog

from cryptorun_daemon.config import TIERS, Tier
from cryptorun_daemon.errors import PathRejectedError
from cryptorun_daemon.storage.quarantine_sidecar import SIDECAR_NAME

_log = structlog.get_logger("cryptorun.storage")

SUCCESS_MARKER: Final = "_SUCCESS"
MANIFEST_NAME: Final = "_manifest.json"
QUARANTINE_DIR: Final = "_quarantine"
SUPERSEDED_DIR: Final = "_superseded"
# Under a tier folder: partitions a fenced writer sealed, moved aside on rejoin.
DIVERGENT_DIR: Final = "_divergent"
PARTIAL_SUFFIX: Final = ".partial"

HOURLY_TIERS: Final[frozenset[Tier]] = frozenset({"hot", "warm"})

SegmentKind = Literal["dataset", "venue", "symbol", "region"]
# The one rule per path segment; fullmatch, so a trailing newline never slips through.
_SEGMENT_RULES: Final[dict[SegmentKind, tuple[re.Pattern[str], str]]] = {
    "dataset": (re.compile(r"[a-z][a-z0-9_]{0,63}"), "[a-z][a-z0-9_]*, at most 64 characters"),
    "venue": (re.compile(r"[a-z0-9][a-z0-9_-]{0,63}"), "[a-z0-9][a-z0-9_-]*, at most 64"),
    "symbol": (re.compile(r"[A-Z0-9]{1,20}-[A-Z0-9]{1,20}"), "BASE-QUOTE in [A-Z0-9]"),
    # The config loader's region rule (config/loader.py REGION_NAME).
    "region": (re.compile(r"[a-z][a-z0-9-]*"), "[a-z][a-z0-9-]*"),
}
_DATE = re.compile(r"^date=(\d{4})-(\d{2})-(\d{2})$")
_HOUR = re.compile(r"^hour=(\d{2})$")
# C0 controls and DEL: one regex search instead of a Python loop per character
# (every manifest of a listing passes through split_wire_path).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Data file names a writer may produce: no leading dot or underscore (those are
# our markers and temp files), no separators, nothing exotic.
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,199}$")


def check_segment(kind: SegmentKind, value: object) -> str:
    """Return ``value`` when it is a valid ``kind`` path segment, else refuse it.

    This is the only definition of what a dataset, venue, symbol (in its path
    form ``BASE-QUOTE``) or region may look like in a path; parsing, building
    and the hot mirror's line checks all call it. Error handling:
    :class:`PathRejectedError` naming the kind, the value and the rule.
    """
    pattern, rule = _SEGMENT_RULES[kind]
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise PathRejectedError(f"{kind} {value!r} is not a valid path segment ({rule})")
    return value


def symbol_segment(symbol: object) -> str:
    """The path form of an exchange symbol (``BTC/USD`` → ``BTC-USD``), checked.

    Error handling: :class:`PathRejectedError` when the result breaks the symbol rule.
    """
    if not isinstance(symbol, str):
        raise PathRejectedError(f"symbol {symbol!r} is not a string")
    return check_segment("symbol", symbol.replace("/", "-"))


def is_tier(text: str) -> bool:
    return text in TIERS


def parse_tier(text: str) -> Tier:
    if text not in TIERS:
        raise PathRejectedError(f"tier {text!r} is not one of {', '.join(TIERS)}")
    return text


def is_data_file_name(name: str) -> bool:
    """True for a name that can be a partition's data file (``part-0.parquet``)."""
    return bool(_FILE.match(name)) and not name.endswith(PARTIAL_SUFFIX)


@dataclass(frozen=True, order=True)
class PartitionKey:
    """Which partition: ordered oldest first, then by dataset, venue and symbol.

    ``hour`` is ``None`` exactly for daily (cold) partitions. Construction
    checks tier, dataset, venue and symbol with :func:`check_segment`, so a
    key — and every path built from it — never holds a value that could leave
    its tier directory. Error handling: :class:`PathRejectedError`.
    """

    day: date
    hour: int | None
    tier: Tier
    dataset: str
    venue: str
    symbol: str

    def __post_init__(self) -> None:
        parse_tier(self.tier)
        check_segment("dataset", self.dataset)
        check_segment("venue", self.venue)
        check_segment("symbol", self.symbol)
        if self.hour is not None and not 0 <= self.hour <= 23:
            raise PathRejectedError(f"hour {self.hour!r} is not 0..23")

    @property
    def start(self) -> datetime:
        return datetime(self.day.year, self.day.month, self.day.day, self.hour or 0, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.start + (timedelta(hours=1) if self.hour is not None else timedelta(days=1))

    @property
    def relpath(self) -> str:
        """Path below ``{root}/{tier}/`` with forward slashes (the wire form)."""
        parts = [
            self.dataset,
            f"venue={self.venue}",
            f"symbol={self.symbol}",
            f"date={self.day.isoformat()}",
        ]
        if self.hour is not None:
            parts.append(f"hour={self.hour:02d}")
        return "/".join(parts)

    def directory(self, root: Path) -> Path:
        return root / self.tier / self.relpath

    def __str__(self) -> str:
        return f"{self.tier}/{self.relpath}"


def parse_partition_parts(tier: Tier, parts: list[str]) -> PartitionKey:
    """Parse the segments below the tier directory into a key.

    Error handling: raises :class:`PathRejectedError` naming the first segment
    that does not fit the layout (wrong count, bad name, impossible date, an
    hourly tier without ``hour=`` or a daily tier with it).
    """
    hourly = tier in HOURLY_TIERS
    expected = 5 if hourly else 4
    if len(parts) != expected:
        shape = "dataset/venue=/symbol=/date=" + ("/hour=" if hourly else "")
        raise PathRejectedError(f"{'/'.join(parts)!r} is not a {tier} partition ({shape})")
    dataset, venue_part, symbol_part, date_part = parts[:4]
    check_segment("dataset", dataset)
    venue = check_segment("venue", _strip_label("venue", venue_part))
    symbol = check_segment("symbol", _strip_label("symbol", symbol_part))
    day_match = _DATE.match(date_part)
    if day_match is None:
        raise PathRejectedError(f"{date_part!r} is not date=YYYY-MM-DD")
    try:
        day = date(int(day_match[1]), int(day_match[2]), int(day_match[3]))
    except ValueError:
        raise PathRejectedError(f"{date_part!r} is not a calendar date") from None
    hour: int | None = None
    if hourly:
        hour_match = _HOUR.match(parts[4])
        if hour_match is None or int(hour_match[1]) > 23:
            raise PathRejectedError(f"{parts[4]!r} is not hour=00..23")
        hour = int(hour_match[1])
    return PartitionKey(day=day, hour=hour, tier=tier, dataset=dataset, venue=venue, symbol=symbol)


def _strip_label(label: str, part: str) -> str:
    if not part.startswith(f"{label}="):
        raise PathRejectedError(f"{part!r} is not {label}=<value>")
    return part[len(label) + 1 :]


def hourly_key(tier: Tier, dataset: str, venue: str, symbol: str, moment: datetime) -> PartitionKey:
    """The hourly partition of ``moment`` (UTC) for a record's dataset, venue and symbol.

    ``symbol`` may be in exchange form (``BTC/USD``). Error handling:
    :class:`PathRejectedError` when a value breaks its segment rule.
    """
    moment = moment.astimezone(UTC)
    return PartitionKey(
        day=moment.date(),
        hour=moment.hour,
        tier=tier,
        dataset=dataset,
        venue=venue,
        symbol=symbol_segment(symbol),
    )


def quarantine_dir(root: Path, tier: str, region: str, partition: PartitionKey | None) -> Path:
    """``{root}/_quarantine/{tier}/{region}[/{partition}]``, every segment checked.

    Error handling: :class:`PathRejectedError` for a tier or region that breaks
    the layout rules (the partition is checked by its key's construction).
    """
    folder = root / QUARANTINE_DIR / parse_tier(tier) / check_segment("region", region)
    return folder / partition.relpath if partition is not None else folder


def split_wire_path(path: str) -> list[str]:
    """Split a ``/``-separated wire path, rejecting anything a layout path never contains.

    Error handling: raises :class:`PathRejectedError` for empty paths, absolute
    paths, backslashes, NUL or control characters, ``%`` (encoded separators
    that slipped through decoding), empty segments, ``.``/``..`` and hidden
    segments.
    """
    if not path:
        raise PathRejectedError("empty path")
    if path.startswith("/") or "\\" in path or "%" in path:
        raise PathRejectedError(f"{path!r}: absolute paths, backslashes and '%' are refused")
    if _CONTROL.search(path) is not None:
        raise PathRejectedError("control characters in path")
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", "..") or part.startswith("."):
            raise PathRejectedError(f"{path!r}: empty, '.', '..' or hidden segments are refused")
    return parts


def parse_partition_path(tier: Tier, path: str) -> PartitionKey:
    """Parse a wire path such as ``trade/venue=kraken/symbol=BTC-USD/date=…/hour=03``."""
    return parse_partition_parts(tier, split_wire_path(path))


def parse_partition_dir(directory: Path) -> PartitionKey:
    """Find tier and key from the tail of a partition directory path (any root)."""
    parts = directory.resolve().parts
    for length, tiers in ((6, HOURLY_TIERS), (5, frozenset[Tier]({"cold"}))):
        if len(parts) < length:
            continue
        tier_name, *rest = parts[-length:]
        if tier_name in tiers:
            return parse_partition_parts(tier_name, list(rest))
    raise PathRejectedError(
        f"{directory} is not a partition directory "
        "({root}/{tier}/{dataset}/venue=/symbol=/date=[/hour=])"
    )


def parse_partition_file(tier: Tier, path: str) -> tuple[PartitionKey, str]:
    """Parse a wire path ``{partition}/{file}`` (a data file or the manifest), no I/O.

    Error handling: :class:`PathRejectedError` (HTTP 400) for anything the
    layout cannot produce.
    """
    parts = split_wire_path(path)
    if len(parts) < 2:
        raise PathRejectedError(f"{path!r} names no file inside a partition")
    *partition_parts, name = parts
    key = parse_partition_parts(tier, partition_parts)
    if name != MANIFEST_NAME and not is_data_file_name(name):
        raise PathRejectedError(f"{name!r} is not a partition file name")
    return key, name


def resolve_partition_file(root: Path, tier: Tier, path: str) -> tuple[PartitionKey, str, Path]:
    """Map a wire path ``{partition}/{file}`` to a real file strictly inside ``root``.

    Returns ``(key, file name, absolute path)``. Error handling: syntactic
    problems raise :class:`PathRejectedError` (HTTP 400); a path that resolves
    through a symlink, or to something that is not a regular file, raises
    ``FileNotFoundError`` (HTTP 404) so probing cannot tell the two apart.
    """
    key, name = parse_partition_file(tier, path)
    real_root = Path(os.path.realpath(root))
    expected = real_root / tier / key.relpath / name
    # realpath follows every symlink on the way; any difference means a link
    # somewhere in the chain, which could point outside the root.
    if Path(os.path.realpath(expected)) != expected or not expected.is_file():
        raise FileNotFoundError(path)
    return key, name, expected


# --- object keys (object-store tiers: the same layout below the tier's prefix) ---------

#: Under an object-store tier's prefix: the fence object holding the tier's epoch.
FENCE_OBJECT_DIR: Final = "_state/fence"
#: Under ``storage.root``: where a bucket → bucket step spools a partition's files for
#: the step validators (``{SPOOL_DIR}/{tier}/{partition path}``), emptied after the step.
SPOOL_DIR: Final = "_state/bucket_spool"


def object_key(key: PartitionKey, name: str) -> str:
    """The key of ``name`` (a data file or marker) of partition ``key`` below a tier prefix.

    The same path as on disk below ``storage.root`` (``{tier}/{dataset}/venue=…``),
    so ``pyarrow.dataset`` and DuckDB see one hive layout on both backends. Besides
    data files: the markers and the row-level quarantine sidecar (``_quarantine.json``).
    """
    if name not in (MANIFEST_NAME, SUCCESS_MARKER, SIDECAR_NAME) and not is_data_file_name(name):
        raise PathRejectedError(f"{name!r} is not a partition file name")
    return f"{key.tier}/{key.relpath}/{name}"


def fence_object_key(tier: Tier) -> str:
    """The key of ``tier``'s fence object below the tier prefix (``_state/fence/{tier}.json``)."""
    return f"{FENCE_OBJECT_DIR}/{parse_tier(tier)}.json"


def drop_partials(directory: Path) -> list[str]:
    """Remove the hidden partials (``.{name}.partial``) left in a partition being committed.

    A partial is our own unfinished write: a download that a crash or a lost
    connection cut (kept to resume it), or a window file whose writer was
    killed. At a commit point every file the manifest lists is in place under
    its final name, so any partial left is of a version that will not be
    completed; it would otherwise stay in the sealed directory forever, a torn
    file beside the data (chaos run, seed 7: a replica held such a 0-byte
    partial of an earlier version's file, so its sealed partition differed
    from the other regions'). Symlinks are never followed. Returns the names
    removed. Error handling: a partial that vanished meanwhile is skipped;
    other ``OSError`` propagate (the commit fails and is retried).
    """
    removed: list[str] = []
    with os.scandir(directory) as entries:
        names = [
            e.name
            for e in entries
            if e.name.startswith(".")
            and e.name.endswith(PARTIAL_SUFFIX)
            and e.is_file(follow_symlinks=False)
        ]
    for name in sorted(names):
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
            removed.append(name)
    if removed:
        _log.info(
            "unfinished writes removed at a commit point", folder=str(directory), names=removed
        )
    return removed
