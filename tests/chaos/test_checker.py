"""The checker judges histories and storage it is given: it catches each kind of violation.

Small hand-made runs (a history, samples, run facts and three storage roots)
with one planted violation each; a checker that passes everything would pass
every chaos run too, so these prove it can fail.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.chaos.checker import check_run
from tests.chaos.cluster import REGIONS

EU, US, AP = REGIONS


def record(origin: str, seq: int, price: str = "1") -> str:
    fields = {"venue": "kraken", "symbol": "BTC/USD", "ts": 1_796_000_000_000_000_000, "p": price}
    return json.dumps({"o": origin, "s": seq, "i": seq, "d": "trade", "f": fields})


def write_run(out: Path, journals: dict[str, list[str]], **run: Any) -> Path:
    """A finished run directory with the given journal lines and run facts."""
    out.mkdir()
    (out / "history.jsonl").write_text(
        json.dumps({"kind": "event", "event": "start", "mono": 0, "seed": 1}) + "\n"
    )
    samples = [
        {
            "region": r,
            "ok": True,
            "ready": True,
            "epoch": 1,
            "primary": EU,
            "role": 1.0 if r == EU else 0.0,
            "mono": 1.0,
        }
        for r in REGIONS
    ]
    (out / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    facts: dict[str, Any] = {
        "heal": 10.0,
        "ready": 11.0,
        "hot": 12.0,
        "warm": 12.0,
        "converged": 20.0,
        "ready_at_end_of_settle": True,
        "unexpected_exits": [],
        "etcd_final": {"epoch": 1, "primary": EU, "history": []},
        "final_status": {r: samples[i] for i, r in enumerate(REGIONS)},
        "filesystem": {r: [] for r in REGIONS},
    }
    facts.update(run)
    (out / "run.json").write_text(json.dumps(facts))
    for region in REGIONS:
        journal = out / "storage" / region / "_state" / "hot" / "journal"
        journal.mkdir(parents=True)
        lines = journals.get(region, [])
        (journal / "0000000001.jsonl").write_text("".join(line + "\n" for line in lines))
    return out


def verdicts(out: Path) -> dict[str, bool]:
    return {v.name: v.passed for v in check_run(out)}


def everywhere(*lines: str) -> dict[str, list[str]]:
    return {r: list(lines) for r in REGIONS}


def test_a_clean_run_passes_every_invariant(tmp_path: Path) -> None:
    """Every region holds every origin's records once: all invariants pass."""
    lines = [record(EU, 1), record(EU, 2), record(US, 1), record(AP, 1)]
    result = verdicts(write_run(tmp_path / "run", everywhere(*lines)))
    assert all(result.values()), result


def test_same_origin_and_seq_with_other_bytes_is_a_conflict(tmp_path: Path) -> None:
    """Two different records under one (origin, seq) — the crash-reissue bug of seed 1 —
    fail hot.no_conflict and hot.complete (the peer holds both)."""
    journals = everywhere(record(EU, 1))
    journals[US] = [record(EU, 1), record(EU, 1, price="2")]
    result = verdicts(write_run(tmp_path / "run", journals))
    assert not result["hot.no_conflict"]
    assert not result["hot.complete"]


def test_a_missing_record_fails_unless_a_gap_covers_it(tmp_path: Path) -> None:
    """A record durable at its origin but absent at a peer fails hot.complete; the same
    absence inside a gap the peer recorded passes it (and the gap must be sealed)."""
    journals = everywhere(record(EU, 1), record(EU, 2))
    journals[US] = [record(EU, 1)]
    assert not verdicts(write_run(tmp_path / "a", journals))["hot.complete"]
    gap = {"ctl": "gap", "origin": EU, "missing_from": 2, "missing_to": 2, "reason": "evicted"}
    journals[US] = [record(EU, 1), json.dumps(gap)]
    result = verdicts(write_run(tmp_path / "b", journals))
    assert result["hot.complete"]
    assert not result["hot.gaps_sealed"]  # no sealed warm partition holds record 2 at us-east


def test_two_primaries_in_one_epoch_and_a_falling_epoch_fail(tmp_path: Path) -> None:
    """Two regions each claiming the primary at epoch 1 fail failover.one_primary; a region
    whose epoch goes from 2 back to 1 fails failover.epochs_grow."""
    out = write_run(tmp_path / "run", everywhere())
    extra = [
        {"region": US, "ok": True, "epoch": 1, "primary": US, "role": 1.0, "mono": 2.0},
        {"region": AP, "ok": True, "epoch": 2, "primary": EU, "role": 0.0, "mono": 3.0},
        {"region": AP, "ok": True, "epoch": 1, "primary": EU, "role": 0.0, "mono": 4.0},
    ]
    with (out / "samples.jsonl").open("a") as handle:
        handle.write("".join(json.dumps(s) + "\n" for s in extra))
    result = verdicts(out)
    assert not result["failover.one_primary"]
    assert not result["failover.epochs_grow"]


def test_sealed_partitions_that_differ_between_regions_fail(tmp_path: Path) -> None:
    """A sealed partition whose data differs at one region fails warm.identical; its
    manifest naming a writer that was not primary at its epoch fails warm.writer_was_primary."""
    out = write_run(tmp_path / "run", everywhere())
    for region in REGIONS:
        part = out / "storage" / region / "warm" / "trade" / "venue=kraken" / "hour=00"
        part.mkdir(parents=True)
        (part / "part-1.parquet").write_bytes(b"odd" if region == AP else b"data")
        manifest = {"writer_region": US, "epoch": 1}
        (part / "_manifest.json").write_text(json.dumps(manifest))
        (part / "_SUCCESS").write_text("")
    result = verdicts(out)
    assert not result["warm.identical"]
    assert not result["warm.writer_was_primary"]


def test_liveness_and_filesystem_failures_are_reported(tmp_path: Path) -> None:
    """Hot lag back under SLO later than 2 × SLO after healing, an exit after healing, and
    a file outside the storage roots each fail their invariant."""
    out = write_run(
        tmp_path / "run",
        everywhere(),
        hot=40.0,
        unexpected_exits=[{"mono": 30.0, "target": EU, "code": 1}],
        filesystem={EU: ["/run/regions/eu-central/cwd/stray.txt"], US: [], AP: []},
    )
    result = verdicts(out)
    assert not result["liveness.lag_recovered"]
    assert not result["liveness.no_restart_loop"]
    assert not result["fs.confined"]


def test_refusing_to_start_on_a_full_disk_is_not_a_crash_loop(tmp_path: Path) -> None:
    """Exits of a daemon that refused to start while an ENOSPC fault filled its disk are the
    fault's effect; three other exits of one region within 60 s are a restart loop."""
    refusal = "storage.root /x is not writable: [Errno 28] No space left on device"
    full = [{"mono": m, "target": US, "code": 1, "log_tail": refusal} for m in (3.0, 6.0, 9.0)]
    out = write_run(tmp_path / "a", everywhere(), unexpected_exits=full)
    faults = [
        {"kind": "fault", "fault": "enospc", "phase": "start", "id": 1, "target": US, "mono": 1},
        {"kind": "fault", "fault": "enospc", "phase": "end", "id": 1, "target": US, "mono": 9},
    ]
    with (out / "history.jsonl").open("a") as handle:
        handle.write("".join(json.dumps(f) + "\n" for f in faults))
    assert verdicts(out)["liveness.no_restart_loop"]
    crashes = [{"mono": m, "target": US, "code": 1, "log_tail": "boom"} for m in (3.0, 6.0, 9.0)]
    out = write_run(tmp_path / "b", everywhere(), unexpected_exits=crashes)
    assert not verdicts(out)["liveness.no_restart_loop"]


def test_quarantine_sidecars_must_agree_on_findings_not_on_their_stamps(tmp_path: Path) -> None:
    """Each region writes its own _quarantine.json: sidecars differing only in the region
    and time of validation pass warm.identical; different flagged rows fail it."""

    def run_with(rows: dict[str, int], name: str) -> Path:
        out = write_run(tmp_path / name, everywhere())
        for region in REGIONS:
            part = out / "storage" / region / "warm" / "trade" / "venue=kraken" / "hour=00"
            part.mkdir(parents=True)
            (part / "part-1.parquet").write_bytes(b"data")
            (part / "_manifest.json").write_text(json.dumps({"writer_region": EU, "epoch": 1}))
            finding = {"row": rows[region], "region": region, "validated_at": region}
            (part / "_quarantine.json").write_text(json.dumps({"files": [finding]}))
            (part / "_SUCCESS").write_text("")
        return out

    assert verdicts(run_with({EU: 3, US: 3, AP: 3}, "same"))["warm.identical"]
    assert not verdicts(run_with({EU: 3, US: 3, AP: 4}, "other"))["warm.identical"]


def set_segments(out: Path, region: str, segments: dict[int, list[str]], where: str = "") -> None:
    """Replace a region's journal with the given segments (in ``where``: the archive)."""
    journal = out / "storage" / region / "_state" / "hot" / "journal"
    directory = out / "journal-archive" / region if where == "archive" else journal
    if not where:
        for old in journal.glob("*.jsonl"):
            old.unlink()
    directory.mkdir(parents=True, exist_ok=True)
    for index, lines in segments.items():
        (directory / f"{index:010d}.jsonl").write_text("".join(line + "\n" for line in lines))


def seal_window(out: Path, window_file: str) -> None:
    """The hour partition of :func:`record`'s timestamp, sealed with one window's file."""
    for region in REGIONS:
        part = (
            out / "storage" / region / "warm" / "trade" / "venue=kraken" / "symbol=BTC-USD"
            / "date=2026-11-30" / "hour=00"
        )  # fmt: skip
        part.mkdir(parents=True)
        (part / window_file).write_bytes(b"data")
        (part / "_manifest.json").write_text(json.dumps({"writer_region": EU, "epoch": 1}))
        (part / "_SUCCESS").write_text("")


# record()'s ts, 2026-11-30T00:53:20Z, starts a 20-second window.
WINDOW_FILE = "part-20261130T005320Z.parquet"


def trimmed_run(out: Path, us_segments: dict[int, list[str]], window_file: str | None) -> Path:
    """eu-central's records 1–6 in two segments everywhere but at us-east."""
    eu = {1: [record(EU, s) for s in (1, 2, 3)], 2: [record(EU, s) for s in (4, 5, 6)]}
    write_run(out, {})
    for region in (EU, AP):
        set_segments(out, region, eu)
    set_segments(out, US, us_segments)
    if window_file is not None:
        seal_window(out, window_file)
    return out


def test_records_trimmed_with_their_window_sealed_pass_and_lost_records_still_fail(
    tmp_path: Path,
) -> None:
    """us-east's first segment is gone (the sealer trimmed it before the harness copied
    it): eu-central's records 1–3, which sat before its segment 2, pass hot.complete only
    when their window's file is sealed at us-east. A record missing between records the
    checker can read (seq 5) is lost, sealed window or not; so are the trimmed records
    when their window is not sealed there or only another window's file is."""
    after_trim = {2: [record(EU, s) for s in (4, 5, 6)], 3: []}
    result = verdicts(trimmed_run(tmp_path / "sealed", after_trim, WINDOW_FILE))
    assert result["hot.complete"], result
    assert result["warm.identical"]
    assert not verdicts(trimmed_run(tmp_path / "unsealed", after_trim, None))["hot.complete"]
    other_window = "part-20261130T005300Z.parquet"
    assert not verdicts(trimmed_run(tmp_path / "other", after_trim, other_window))["hot.complete"]
    lost = {2: [record(EU, s) for s in (4, 6)], 3: []}
    assert not verdicts(trimmed_run(tmp_path / "lost", lost, WINDOW_FILE))["hot.complete"]


def test_archived_copies_of_trimmed_segments_are_read(tmp_path: Path) -> None:
    """A segment trimmed from the storage root but copied by the harness's journal archive
    is read back: its records count as present (no sealed window needed), and a copy
    missing a record fails hot.complete."""
    out = trimmed_run(tmp_path / "full", {2: [record(EU, s) for s in (4, 5, 6)], 3: []}, None)
    set_segments(out, US, {1: [record(EU, s) for s in (1, 2, 3)]}, where="archive")
    assert verdicts(out)["hot.complete"]
    out = trimmed_run(tmp_path / "short", {2: [record(EU, s) for s in (4, 5, 6)], 3: []}, None)
    set_segments(out, US, {1: [record(EU, s) for s in (1, 3)]}, where="archive")
    assert not verdicts(out)["hot.complete"]
