"""Kraken's v2 order-book checksum: CRC32 over the ten best levels of each side.

Kraken documents the algorithm in its "Spot Websockets (v2) Book Checksum"
guide: take the top 10 asks (price ascending) then the top 10 bids (price
descending); for each level write the price then the quantity, each formatted
with the pair's ``price_precision`` / ``qty_precision`` decimals, with the
decimal point removed and leading zeros stripped; concatenate; CRC32 the ASCII
string as an unsigned 32-bit integer.

Why ``Decimal`` and not ``float``: the v2 wire carries prices as JSON numbers
with trailing zeros dropped (``45281.0`` arrives as ``45281``, ``0.10000000`` as
``0.1``), so the only way to rebuild Kraken's string is to re-pad to the
instrument's precision. ``str(float)`` gives ``'1e-05'`` or ``'45281.0'`` and
therefore wrong checksums.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from decimal import Decimal
from typing import Final

CHECKSUM_LEVELS: Final = 10
"""Kraken checksums this many levels per side whatever the subscribed depth."""

Level = tuple[Decimal, Decimal]
"""One price level: ``(price, qty)``."""


def format_for_checksum(value: Decimal, precision: int) -> str:
    """``value`` with ``precision`` decimals, the point removed, leading zeros stripped.

    ``Decimal('0.001'), 8`` → ``'100000'``; ``Decimal('45285.2'), 1`` → ``'452852'``.
    A value carrying more decimals than ``precision`` is rounded half-even,
    which can only happen when the instrument's precision is wrong (the
    checksum then mismatches and the book is resubscribed).
    """
    text = f"{value:.{precision}f}".replace(".", "").lstrip("0")
    # A zero quantity never sits in a book, but an all-zero string must still
    # hash as something deterministic rather than as the empty string.
    return text or "0"


def checksum_string(
    asks: Iterable[Level],
    bids: Iterable[Level],
    *,
    price_precision: int,
    qty_precision: int,
) -> str:
    """The exact string Kraken hashes.

    ``asks`` must be best first (ascending) and ``bids`` best first
    (descending); only the first :data:`CHECKSUM_LEVELS` of each are used.
    """
    parts: list[str] = []
    for side in (asks, bids):
        for index, (price, qty) in enumerate(side):
            if index >= CHECKSUM_LEVELS:
                break
            parts.append(format_for_checksum(price, price_precision))
            parts.append(format_for_checksum(qty, qty_precision))
    return "".join(parts)


def book_checksum(
    asks: Iterable[Level],
    bids: Iterable[Level],
    *,
    price_precision: int,
    qty_precision: int,
) -> int:
    """CRC32 (unsigned) of :func:`checksum_string`."""
    text = checksum_string(asks, bids, price_precision=price_precision, qty_precision=qty_precision)
    return zlib.crc32(text.encode("ascii")) & 0xFFFFFFFF
