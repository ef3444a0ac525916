"""Kraken v2 book checksum: the documented vector, the wire form, and formatting edge cases."""

from __future__ import annotations

import json
import zlib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from cryptorun_daemon.ingest.kraken.book import OrderBook, Precision
from cryptorun_daemon.ingest.kraken.checksum import (
    book_checksum,
    checksum_string,
    format_for_checksum,
)
from cryptorun_daemon.ingest.kraken.messages import BookMessage, decode_frame

REPO_ROOT = Path(__file__).resolve().parents[2]
# Kraken's documented BTC/USD book example, kept in the repository (tests/fixtures/).
VECTOR_PATH = REPO_ROOT / "tests" / "fixtures" / "kraken" / "book_checksum_v2_btcusd.json"


@pytest.fixture(scope="module")
def vector() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTOR_PATH.read_text())
    return data


def levels(side: list[dict[str, str]]) -> list[tuple[Decimal, Decimal]]:
    return [(Decimal(level["price"]), Decimal(level["qty"])) for level in side]


def test_documented_vector_string_and_checksum(vector: dict[str, Any]) -> None:
    """Kraken's documented BTC/USD example yields its string and checksum 3310070434."""
    asks, bids = levels(vector["book"]["asks"]), levels(vector["book"]["bids"])
    precisions = {
        "price_precision": vector["price_precision"],
        "qty_precision": vector["qty_precision"],
    }
    assert checksum_string(asks, bids, **precisions) == vector["checksum_string"]
    assert book_checksum(asks, bids, **precisions) == vector["checksum"] == 3310070434


def test_documented_vector_from_the_wire_form(vector: dict[str, Any]) -> None:
    """The same book sent as v2 JSON numbers (trailing zeros dropped) still checks out.

    This is how Kraken sends it: ``45281.0`` arrives as ``45281`` and
    ``0.10000000`` as ``0.1``; re-padding with the instrument's precisions
    restores Kraken's string.
    """

    def wire(side: list[dict[str, str]]) -> str:
        return ",".join(
            f'{{"price":{float(level["price"])!r},"qty":{float(level["qty"])!r}}}' for level in side
        )

    frame = (
        '{"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD",'
        f'"bids":[{wire(vector["book"]["bids"])}],"asks":[{wire(vector["book"]["asks"])}],'
        f'"checksum":{vector["checksum"]}}}]}}'
    )
    assert '"price":45281.0' in frame or '"price":45281,' in frame
    message = decode_frame(frame)
    assert isinstance(message, BookMessage)
    book = OrderBook(depth=10, precision=Precision(price=1, qty=8))
    book.apply_snapshot(message.bids, message.asks)
    assert book.checksum() == message.checksum == 3310070434


def test_str_of_float_would_give_a_wrong_checksum(vector: dict[str, Any]) -> None:
    """Formatting with ``str(float)`` loses trailing zeros and gives a different CRC."""

    def naive(side: list[dict[str, str]]) -> str:
        return "".join(
            str(float(level[key])).replace(".", "").lstrip("0")
            for level in side
            for key in ("price", "qty")
        )

    text = naive(vector["book"]["asks"]) + naive(vector["book"]["bids"])
    assert zlib.crc32(text.encode()) != vector["checksum"]


@pytest.mark.parametrize(
    ("value", "precision", "expected"),
    [
        (Decimal("45285.2"), 1, "452852"),
        (Decimal("45281"), 1, "452810"),  # trailing zero dropped on the wire
        (Decimal("0.001"), 8, "100000"),  # leading zeros stripped
        (Decimal("0.10000000"), 8, "10000000"),
        (Decimal("1E-5"), 8, "1000"),  # exponent form from float repr
        (Decimal("0.5666"), 4, "5666"),
        (Decimal("1500"), 0, "1500"),
        (Decimal("0"), 8, "0"),
    ],
)
def test_format_for_checksum(value: Decimal, precision: int, expected: str) -> None:
    """Each value is padded to the precision, de-pointed and stripped of leading zeros."""
    assert format_for_checksum(value, precision) == expected


def test_only_the_top_ten_levels_count() -> None:
    """Levels beyond the tenth on either side do not change the checksum."""
    asks = [(Decimal(100 + i), Decimal(1)) for i in range(15)]
    bids = [(Decimal(99 - i), Decimal(1)) for i in range(15)]
    full = book_checksum(asks, bids, price_precision=0, qty_precision=0)
    assert full == book_checksum(asks[:10], bids[:10], price_precision=0, qty_precision=0)


def test_fewer_than_ten_levels_hash_what_is_there() -> None:
    """A thin book hashes only its levels, asks before bids, as Kraken specifies."""
    asks = [(Decimal("1.50"), Decimal("0.1"))]
    bids = [(Decimal("1.25"), Decimal("2")), (Decimal("1.2"), Decimal("0.005"))]
    text = checksum_string(asks, bids, price_precision=2, qty_precision=3)
    assert text == "15010012520001205"
    assert book_checksum(asks, bids, price_precision=2, qty_precision=3) == zlib.crc32(
        text.encode()
    )


def test_empty_book_checksum_is_crc_of_empty_string() -> None:
    """An empty book hashes the empty string (CRC32 0) rather than failing."""
    assert book_checksum([], [], price_precision=1, qty_precision=8) == 0
