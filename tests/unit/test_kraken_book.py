"""Order book maintenance: snapshot, in-order updates, deletes, truncation, then the checksum."""

from __future__ import annotations

import random
import zlib
from decimal import Decimal

import pytest

from cryptorun_daemon.ingest.kraken.book import OrderBook, Precision
from cryptorun_daemon.ingest.kraken.checksum import book_checksum

D = Decimal
PRECISION = Precision(price=2, qty=3)


def make_book(depth: int = 10) -> OrderBook:
    return OrderBook(depth=depth, precision=PRECISION)


def ladder(start: str, step: str, count: int, qty: str = "1") -> list[tuple[Decimal, Decimal]]:
    return [(D(start) + D(step) * i, D(qty)) for i in range(count)]


def crc(text: str) -> int:
    return zlib.crc32(text.encode())


def test_snapshot_sorts_best_first_and_checksums_by_hand() -> None:
    """A snapshot is read best first, and its checksum matches a hand-built string."""
    book = make_book()
    book.apply_snapshot(
        bids=[(D("1.2"), D("0.005")), (D("1.25"), D("2"))],
        asks=[(D("1.5"), D("0.1")), (D("1.75"), D("10"))],
    )
    assert book.bids() == [(D("1.25"), D("2")), (D("1.2"), D("0.005"))]
    assert book.asks() == [(D("1.5"), D("0.1")), (D("1.75"), D("10"))]
    assert book.checksum() == crc("1501001751000012520001205")


def test_qty_zero_deletes_a_level() -> None:
    """An update with qty 0 removes the level; deleting an absent level is harmless."""
    book = make_book()
    book.apply_snapshot(bids=ladder("1.00", "-0.01", 3), asks=ladder("1.10", "0.01", 3))
    book.apply_update(bids=[(D("0.99"), D(0)), (D("0.50"), D(0))], asks=[])
    assert [price for price, _ in book.bids()] == [D("1.00"), D("0.98")]


def test_several_updates_to_one_level_in_one_message_apply_in_order() -> None:
    """The last update to a price in a message wins, including delete then re-add."""
    book = make_book()
    book.apply_snapshot(bids=[(D("1.00"), D("1"))], asks=[(D("1.10"), D("1"))])
    book.apply_update(
        bids=[(D("1.00"), D("2")), (D("1.00"), D("0")), (D("1.00"), D("3.5"))],
        asks=[(D("1.10"), D("4")), (D("1.10"), D("0.25"))],
    )
    assert book.bids() == [(D("1.00"), D("3.5"))]
    assert book.asks() == [(D("1.10"), D("0.25"))]
    assert book.checksum() == crc("1102501003500")


def test_level_pushed_out_of_depth_is_truncated_and_leaves_the_checksum() -> None:
    """An insert at the top of a full depth-10 side drops the worst level with no delete."""
    book = make_book(depth=10)
    asks = ladder("2.00", "0.01", 10)
    book.apply_snapshot(bids=ladder("1.00", "-0.01", 10), asks=asks)
    book.apply_update(bids=[], asks=[(D("1.99"), D("7"))])
    assert len(book.asks()) == 10
    assert book.asks()[0] == (D("1.99"), D("7"))
    assert (D("2.09"), D("1")) not in book.asks()
    expected = book_checksum(
        [(D("1.99"), D("7")), *asks[:9]], book.bids(), price_precision=2, qty_precision=3
    )
    assert book.checksum() == expected


def test_delete_at_the_top_then_revealed_level_restores_depth() -> None:
    """After a top delete, the level Kraken reveals behind it slots in at the bottom."""
    book = make_book(depth=10)
    book.apply_snapshot(bids=ladder("1.00", "-0.01", 10), asks=ladder("2.00", "0.01", 10))
    book.apply_update(bids=[(D("1.00"), D(0)), (D("0.90"), D("0.5"))], asks=[])
    prices = [price for price, _ in book.bids()]
    assert prices[0] == D("0.99")
    assert prices[-1] == D("0.90")
    assert len(prices) == 10


def test_deeper_subscription_keeps_depth_but_checksums_top_ten() -> None:
    """A depth-25 book keeps 25 levels while the checksum still covers only the top 10."""
    book = make_book(depth=25)
    bids, asks = ladder("1.00", "-0.01", 30), ladder("2.00", "0.01", 30)
    book.apply_snapshot(bids=bids, asks=asks)
    assert len(book.bids()) == 25
    assert len(book.asks()) == 25
    assert book.checksum() == book_checksum(
        asks[:10], bids[:10], price_precision=2, qty_precision=3
    )


def test_thin_book_with_fewer_than_ten_levels() -> None:
    """A side with fewer than ten levels checksums only what it holds."""
    book = make_book()
    book.apply_snapshot(bids=[(D("0.5"), D("1.25"))], asks=[])
    assert book.checksum() == crc("501250")


def test_trailing_zero_prices_address_the_same_level() -> None:
    """``45281`` (wire form) and ``45281.0`` are the same level, and format identically."""
    book = OrderBook(depth=10, precision=Precision(price=1, qty=8))
    book.apply_snapshot(bids=[(D("45281.0"), D("0.1"))], asks=[(D("45290"), D("1"))])
    book.apply_update(bids=[(D("45281"), D("0.20000000"))], asks=[])
    assert len(book.bids()) == 1
    assert book.checksum() == crc("45290010000000045281020000000")


def test_snapshot_replaces_everything() -> None:
    """A second snapshot discards every level of the first."""
    book = make_book()
    book.apply_snapshot(bids=ladder("1.00", "-0.01", 5), asks=ladder("2.00", "0.01", 5))
    book.apply_snapshot(bids=[(D("0.10"), D("1"))], asks=[(D("0.20"), D("1"))])
    assert len(book) == 2


def test_depth_must_be_positive() -> None:
    """A book of depth 0 is a programming error, refused at construction."""
    with pytest.raises(ValueError, match="depth"):
        OrderBook(depth=0, precision=PRECISION)


@pytest.mark.parametrize("seed", range(20))
def test_random_update_sequences_match_a_naive_reference(seed: int) -> None:
    """Random inserts, modifies and deletes agree with a sort-everything reference model."""
    rng = random.Random(seed)
    depth = rng.choice((10, 25))
    book = OrderBook(depth=depth, precision=PRECISION)
    ref: dict[str, dict[Decimal, Decimal]] = {"bids": {}, "asks": {}}

    def ref_top(side: str) -> list[tuple[Decimal, Decimal]]:
        prices = sorted(ref[side], reverse=side == "bids")[:depth]
        return [(p, ref[side][p]) for p in prices]

    for _ in range(200):
        update: dict[str, list[tuple[Decimal, Decimal]]] = {"bids": [], "asks": []}
        for _ in range(rng.randint(1, 6)):
            side = rng.choice(("bids", "asks"))
            base = D("1.00") if side == "bids" else D("1.50")
            sign = -1 if side == "bids" else 1
            price = base + sign * D(rng.randint(0, 40)) / 100
            qty = D(0) if rng.random() < 0.3 else D(rng.randint(1, 9999)) / 1000
            update[side].append((price, qty))
        book.apply_update(update["bids"], update["asks"])
        for side in ("bids", "asks"):
            for price, qty in update[side]:
                if qty == 0:
                    ref[side].pop(price, None)
                else:
                    ref[side][price] = qty
            # The reference truncates too: Kraken's feed never re-sends dropped levels.
            ref[side] = dict(ref_top(side))
        assert book.bids() == ref_top("bids")
        assert book.asks() == ref_top("asks")
        assert book.checksum() == book_checksum(
            ref_top("asks")[:10], ref_top("bids")[:10], price_precision=2, qty_precision=3
        )
