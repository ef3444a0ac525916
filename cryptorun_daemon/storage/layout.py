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
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptorun_daemon.config import TIERS, Tier
from cryptorun_daemon.errors import PathRejectedError

SUCCESS_MARKER: Final = "_SUCCESS"
MANIFEST_NAME: Final = "_manifest.json"
QUARANTINE_DIR: Final = "_quarantine"
SUPERSEDED_DIR: Final = "_superseded"
# Under a tier folder: partitions a fenced writer sealed, moved aside on rejoin.
DIVERGENT_DIR: Final = "_divergent"
PARTIAL_SUFFIX: Final = ".partial"

HOURLY_TIERS: Final[frozenset[Tier]] = frozenset({"hot", "warm"})

_DATASET = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_VENUE = re.compile(r"^venue=([a-z0-9][a-z0-9_-]{0,63})$")
_SYMBOL = re.compile(r"^symbol=([A-Z0-9]{1,20}-[A-Z0-9]{1,20})$")
_DATE = re.compile(r"^date=(\d{4})-(\d{2})-(\d{2})$")
_HOUR = re.compile(r"^hour=(\d{2})$")
# Data file names a writer may produce: no leading dot or underscore (those are
# our markers and temp files), no separators, nothing exotic.
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]{0,199}$")


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

    ``hour`` is ``None`` exactly for daily (cold) partitions.
    """

    day: date
    hour: int | None
    tier: Tier
    dataset: str
    venue: str
    symbol: str

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
    if not _DATASET.match(dataset):
        raise PathRejectedError(f"dataset {dataset!r} must match [a-z][a-z0-9_]*")
    venue = _VENUE.match(venue_part)
    if venue is None:
        raise PathRejectedError(f"{venue_part!r} is not venue=<lowercase name>")
    symbol = _SYMBOL.match(symbol_part)
    if symbol is None:
        raise PathRejectedError(f"{symbol_part!r} is not symbol=BASE-QUOTE")
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
    return PartitionKey(
        day=day, hour=hour, tier=tier, dataset=dataset, venue=venue[1], symbol=symbol[1]
    )


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
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
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


def resolve_partition_file(root: Path, tier: Tier, path: str) -> tuple[PartitionKey, str, Path]:
    """Map a wire path ``{partition}/{file}`` to a real file strictly inside ``root``.

    Returns ``(key, file name, absolute path)``. Error handling: syntactic
    problems raise :class:`PathRejectedError` (HTTP 400); a path that resolves
    through a symlink, or to something that is not a regular file, raises
    ``FileNotFoundError`` (HTTP 404) so probing cannot tell the two apart.
    """
    parts = split_wire_path(path)
    if len(parts) < 2:
        raise PathRejectedError(f"{path!r} names no file inside a partition")
    *partition_parts, name = parts
    key = parse_partition_parts(tier, partition_parts)
    if name != MANIFEST_NAME and not is_data_file_name(name):
        raise PathRejectedError(f"{name!r} is not a partition file name")
    real_root = Path(os.path.realpath(root))
    expected = real_root / tier / key.relpath / name
    # realpath follows every symlink on the way; any difference means a link
    # somewhere in the chain, which could point outside the root.
    if Path(os.path.realpath(expected)) != expected or not expected.is_file():
        raise FileNotFoundError(path)
    return key, name, expected
