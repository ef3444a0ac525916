"""The mirrored-line checks: what a subscriber accepts from a peer, and why it refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptorun_daemon.errors import ProtocolError
from cryptorun_daemon.hot.line_check import LINE_REASONS, check_batch, check_frame, check_line
from cryptorun_daemon.hot.record import encode_control, encode_record

PEER = "eu-central"
NS = 1_767_225_600_000_000_000

TRADE = {
    "ts": NS,
    "venue": "kraken",
    "symbol": "BTC/USD",
    "side": "buy",
    "price": 100.5,
    "qty": 0.25,
    "trade_id": 7,
    "ingest_ts": NS,
}
BOOK = {
    "ts": NS,
    "venue": "kraken",
    "symbol": "ETH/USD",
    "bids_px": [10.0, 9],
    "bids_qty": [1.0, 2.0],
    "asks_px": [11.0],
    "asks_qty": [1],
    "checksum": None,
    "suspect": False,
    "ingest_ts": NS,
}


def line(seq: int = 1, *, origin: str = PEER, dataset: str = "trade", **fields: Any) -> bytes:
    base = TRADE if dataset != "book" else BOOK
    return encode_record(origin, seq, NS + seq, dataset, {**base, **fields}).line


def reason_of(raw: bytes, seq: int = 1) -> str:
    with pytest.raises(ProtocolError) as info:
        check_line(raw, origin=PEER, seq=seq)
    return info.value.reason


def test_records_the_origin_encoder_writes_pass_with_their_market() -> None:
    """Trades and books as the origin stamps them pass; the checked line is the same bytes."""
    for dataset in ("trade", "book"):
        raw = line(3, dataset=dataset)
        checked = check_line(raw, origin=PEER, seq=3)
        assert checked.line == raw
        assert (checked.seq, checked.ingest_ns) == (3, NS + 3)
    assert check_line(line(), origin=PEER, seq=1).symbol == "BTC/USD"


def test_missing_optional_fields_and_nulls_pass_like_local_records() -> None:
    """Only types are checked: absent or null optional fields are what local ingest also
    allows (data quality is validation's job), so they never break the mirror."""
    fields = {"venue": "kraken", "symbol": "BTC/USD", "price": None}
    raw = encode_record(PEER, 1, NS, "trade", fields).line
    assert check_line(raw, origin=PEER, seq=1).venue == "kraken"
    assert check_line(line(price=0), origin=PEER, seq=1).seq == 1  # out of domain, right type


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "line_not_json"),
        (b"not json", "line_not_json"),
        (b"[1, 2]", "line_not_json"),
        (line().replace(b"100.5", b"NaN"), "line_not_json"),
        (line().replace(b"100.5", b"Infinity"), "line_not_json"),
        (b"[" * 100_000, "line_not_json"),
        (b'{"x":1}', "line_malformed"),
        (encode_control({"ctl": "replid", "o": PEER, "r": "x", "s": 1}), "line_control"),
        (line(origin="us-east"), "line_origin"),
        (line(origin="ap-south"), "line_origin"),
        (line(2), "line_seq"),
        (line().replace(b'"s":1,', b'"s":true,'), "line_seq"),
        (line()[:-1] + b',"o":"us-east"}', "line_origin"),
        (line(origin="us-east")[:-1] + b',"o":"eu-central"}', "line_malformed"),
        (b'{"s":1,"o":"eu-central","i":1,"d":"trade","f":{}}', "line_malformed"),
        (line().replace(b'"i":', b'"i":"x","j":'), "line_malformed"),
        (line(dataset="candles"), "line_dataset"),
        (line(price="cheap"), "line_field_type"),
        (line().replace(b'"price":100.5', b'"price":1e400'), "line_field_type"),
        (line(trade_id=2**70), "line_field_type"),
        (line(trade_id=True), "line_field_type"),
        (line(ts=1.5), "line_field_type"),
        (line(venue=None), "line_field_type"),
        (line(venue=7), "line_field_type"),
        (line(dataset="book", suspect="no"), "line_field_type"),
        (line(dataset="book", bids_px=[1.0, "x"]), "line_field_type"),
        (line(venue="../../../../escaped"), "line_path_segment"),
        (line(venue="Kraken"), "line_path_segment"),
        (line(symbol="../x"), "line_path_segment"),
        (line(symbol="BTC/USD\n"), "line_path_segment"),
        (line(dataset="bad/../trade"), "line_dataset"),
    ],
)
def test_each_kind_of_bad_line_is_refused_with_its_reason(raw: bytes, reason: str) -> None:
    """Every defect maps to one bounded reason (the protocol-error metric label)."""
    assert reason in LINE_REASONS
    assert reason_of(raw) == reason


def test_a_batch_is_all_or_nothing_and_names_the_bad_seq() -> None:
    """check_batch returns every line or raises for the first bad one, naming its seq."""
    good = [line(5), line(6), line(7)]
    assert [c.seq for c in check_batch(good, origin=PEER, first_seq=5)] == [5, 6, 7]
    with pytest.raises(ProtocolError, match="seq 6") as info:
        check_batch([line(5), b"{}", line(7)], origin=PEER, first_seq=5)
    assert info.value.reason == "line_malformed"
    with pytest.raises(ProtocolError) as info:
        check_batch([line(5), line(7)], origin=PEER, first_seq=5)
    assert info.value.reason == "line_seq"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_pass_and_always_give_a_bounded_reason(raw: bytes) -> None:
    """Random bytes are refused with a reason from the bounded set, never another exception."""
    with pytest.raises(ProtocolError) as info:
        check_line(raw, origin=PEER, seq=1)
    assert info.value.reason in LINE_REASONS


@settings(max_examples=300, deadline=None)
@given(
    venue=st.text(max_size=12),
    symbol=st.text(max_size=12),
)
def test_a_line_passes_only_when_its_market_makes_safe_path_segments(
    venue: str, symbol: str
) -> None:
    """Whatever venue and symbol a peer sends, an accepted line's values form path segments
    with no separator, dot-dot or control character in them."""
    raw = line(venue=venue, symbol=symbol)
    reason = None
    try:
        checked = check_line(raw, origin=PEER, seq=1)
    except ProtocolError as exc:
        reason = exc.reason
    if reason is not None:
        assert reason == "line_path_segment"
        return
    for value in (checked.venue, checked.symbol.replace("/", "-")):
        assert ".." not in value
        assert "\\" not in value
        assert all(ch.isalnum() or ch in "-_" for ch in value)
    assert json.loads(raw)["f"]["venue"] == checked.venue


@st.composite
def _mutated_lines(draw: st.DrawFn) -> bytes:
    dataset = draw(st.sampled_from(["trade", "book"]))
    raw = bytearray(line(1, dataset=dataset))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        kind = draw(st.sampled_from(["insert", "delete", "replace"]))
        chunk = draw(
            st.sampled_from(
                [
                    b'"',
                    b",",
                    b"{",
                    b"}",
                    b"[",
                    b"]",
                    b"0",
                    b"1e400",
                    b"-",
                    b".",
                    b"e",
                    b"null",
                    b"true",
                    b'"o":"x",',
                    b'"ctl":1,',
                    b"\\u0000",
                    b"\\ud800",
                    b"\x01",
                    b"\xff",
                    b" ",
                    b"01",
                    b"9223372036854775808",
                    b'"venue":".."',
                    b"NaN",
                ]
            )
        )
        if kind == "insert":
            raw[at:at] = chunk
        elif kind == "delete":
            del raw[at : at + len(chunk)]
        else:
            raw[at : at + len(chunk)] = chunk
    return bytes(raw)


@settings(max_examples=600, deadline=None)
@given(_mutated_lines())
def test_the_fast_path_accepts_only_what_the_reference_checks_accept(raw: bytes) -> None:
    """The msgspec fast path never accepts a line the reference (dict) checks refuse, and
    accepts it with the same market, seq and ingest time: the verdict and its reason never
    depend on which decoder looked first."""
    from cryptorun_daemon.hot import line_check

    fast = line_check._check_line_fast(raw, PEER, 1)
    try:
        reference = line_check._check_line_reference(raw, PEER, 1)
    except ProtocolError:
        assert fast is None
        return
    if fast is not None:
        assert fast == reference


def test_the_fast_path_takes_the_lines_the_origin_encoder_writes() -> None:
    """Well-formed trades and books are accepted without the reference path (the speed-up
    is real, not a silent fallback on every line)."""
    from cryptorun_daemon.hot import line_check

    for dataset in ("trade", "book"):
        assert line_check._check_line_fast(line(4, dataset=dataset), PEER, 4) is not None


# ----------------------------------------------------------- whole frames (check_frame)
def _frame_verdict(lines: list[bytes], first_seq: int) -> tuple[str, Any]:
    try:
        checked = check_frame(lines, origin=PEER, first_seq=first_seq)
    except ProtocolError as exc:
        return ("refused", (exc.reason, str(exc)))
    return ("accepted", (checked.lines, checked.ingest_ns))


def _batch_verdict(lines: list[bytes], first_seq: int) -> tuple[str, Any]:
    try:
        checked = check_batch(lines, origin=PEER, first_seq=first_seq)
    except ProtocolError as exc:
        return ("refused", (exc.reason, str(exc)))
    return ("accepted", ([c.line for c in checked], [c.ingest_ns for c in checked]))


@pytest.mark.parametrize("position", [0, 1, 2])
@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"not json",
        encode_control({"ctl": "replid", "o": PEER, "r": "x", "s": 1}),
        b"SEQ_OTHER_ORIGIN",
        b"SEQ_WRONG",
        b"SEQ_NAN",
        b"SEQ_PATH",
        b"SEQ_DUPLICATE_S",
        b"SEQ_TWO_OBJECTS",
        b"SEQ_NON_UTF8",
    ],
)
def test_a_frame_decoded_in_one_call_refuses_what_line_by_line_checks_refuse(
    bad: bytes, position: int
) -> None:
    """One hostile line anywhere in a frame makes check_frame refuse the whole frame with
    the reason and seq check_batch gives (the same hostile lines the per-line checks
    refuse: control lines, other origins, wrong seqs, NaN, unsafe paths, a duplicate
    "s" key, two objects on one line, bytes that are not UTF-8)."""
    seq = 5 + position
    substitutes = {
        b"SEQ_OTHER_ORIGIN": line(seq, origin="us-east"),
        b"SEQ_WRONG": line(seq + 1),
        b"SEQ_NAN": line(seq).replace(b"100.5", b"NaN"),
        b"SEQ_PATH": line(seq, venue="../x"),
        b"SEQ_DUPLICATE_S": line(seq)[:-1] + b',"s":%d}' % (seq + 1),
        b"SEQ_TWO_OBJECTS": line(seq) + b"," + line(seq + 1),
        b"SEQ_NON_UTF8": line(seq, venue="krak\u00e9n").replace(b"\xc3\xa9", b"\xe9"),
    }
    bad = substitutes.get(bad, bad)
    lines = [line(5), line(6), line(7)]
    lines[position] = bad
    frame, batch = _frame_verdict(lines, 5), _batch_verdict(lines, 5)
    assert frame == batch
    assert frame[0] == "refused"


def test_lines_cannot_merge_into_one_element_across_the_frame_join() -> None:
    """A line left open (an unterminated price list) and a next line that would close it,
    with a line holding two records to keep the count equal, is refused exactly as the
    per-line checks refuse it: one-call decoding never maps an element to the wrong line."""
    first = line(5, dataset="book")
    cut = first.index(b',"bids_qty"')
    opened = first[: cut - 1]  # '"bids_px":[10.0,9' with the list left open
    closing = b"1.0]" + first[cut:]  # the join's comma would continue that list
    doubled = line(6) + b"," + line(7)  # two records, seqs 6 and 7: the counts agree
    lines = [opened, closing, doubled]
    from cryptorun_daemon.hot import line_check

    body = b"[" + line_check._FRAME_JOIN.join(lines) + b"]"
    assert len(line_check._FRAME_DECODER.decode(body)) == 3  # the decode alone is fooled
    assert _frame_verdict(lines, 5) == _batch_verdict(lines, 5)
    assert _frame_verdict(lines, 5)[0] == "refused"


def test_good_frames_take_the_one_call_path_with_per_market_latest() -> None:
    """Trades and books as the origin writes them are accepted by the one-call decode
    (not a silent fallback), with every line's ingest time and each market's last index."""
    from cryptorun_daemon.hot import line_check

    lines = [line(5), line(6, dataset="book"), line(7)]
    checked = line_check._check_frame_fast(lines, PEER, 5)
    assert checked is not None
    assert checked.lines == lines
    assert checked.ingest_ns == [NS + 5, NS + 6, NS + 7]
    assert checked.latest == {
        ("kraken", "BTC/USD"): (2, NS + 7),
        ("kraken", "ETH/USD"): (1, NS + 6),
    }


@settings(max_examples=400, deadline=None)
@given(st.lists(_mutated_lines(), min_size=1, max_size=3), st.integers(0, 3))
def test_one_call_frame_checks_agree_with_line_by_line_checks(
    mutated: list[bytes], clean_before: int
) -> None:
    """Over frames of mutated lines (each renumbered to its seq) with clean lines before
    them, check_frame's verdict, refusal reason, seq named and accepted lines equal
    check_batch's."""
    lines = [line(1 + i) for i in range(clean_before)]
    for offset, raw in enumerate(mutated):
        seq = 1 + clean_before + offset
        lines.append(raw.replace(b'"s":1,', b'"s":%d,' % seq, 1))
    assert _frame_verdict(lines, 1) == _batch_verdict(lines, 1)
