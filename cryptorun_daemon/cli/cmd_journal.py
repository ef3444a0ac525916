"""``cryptorun journal check|salvage --config PATH``: the hot journal on local disk.

``check`` reads every segment the way start-up recovery does and changes
nothing. ``salvage`` moves the damaged tail aside (the first damaged segment
from the damaged byte on, and every later segment) into
``{storage.root}/_quarantine/journal/<UTC stamp>/``, never deleting a byte,
and records the lost range of this region's own stream as a ``gap`` line, so
the next start succeeds. Both run with the daemon stopped (salvage refuses
while the daemon holds the journal).
"""

from __future__ import annotations

import json
from typing import TextIO

from cryptorun_daemon.config import Config
from cryptorun_daemon.hot.journal_repair import (
    check_journal,
    journal_directory,
    quarantine_directory,
    salvage_journal,
)


def fix_hint(config_path: str) -> str:
    """The command that repairs a damaged journal, spelled out for messages."""
    return f"cryptorun journal salvage --config {config_path}"


def run_check(config: Config, *, config_path: str, as_json: bool, out: TextIO) -> int:
    """Report what recovery would find: 0 readable (a torn tail is fine), 1 damaged."""
    report = check_journal(journal_directory(config.storage.root))
    damage = report.damage
    if as_json:
        doc = {
            "journal": str(report.directory),
            "segments": report.segments,
            "bytes": report.bytes,
            "torn_bytes": report.torn_bytes,
            "last_seq": report.last_seq,
            "damaged": damage is not None,
            "damage": None
            if damage is None
            else {"segment": str(damage.path), "offset": damage.offset, "reason": damage.reason},
            "fix": fix_hint(config_path) if damage is not None else None,
        }
        out.write(json.dumps(doc, indent=2) + "\n")
        return 1 if damage is not None else 0
    out.write(f"journal {report.directory}: {report.segments} segment(s), {report.bytes} bytes\n")
    if damage is not None:
        out.write(
            f"DAMAGED: segment {damage.path}, byte {damage.offset}: {damage.reason}\n"
            f"the daemon refuses to start on it; fix: {fix_hint(config_path)}\n"
            f"  (moves byte {damage.offset} on, and every later segment, to "
            f"{quarantine_directory(config.storage.root)}/; nothing is deleted)\n"
        )
        return 1
    if report.torn_bytes:
        out.write(
            f"torn tail: {report.torn_bytes} bytes at the end of the newest segment"
            " (a crash mid-write; the daemon cuts it off at start)\n"
        )
    seqs = ", ".join(f"{origin} {seq}" for origin, seq in sorted(report.last_seq.items()))
    out.write(f"ok (last seq: {seqs or 'none'})\n")
    return 0


def run_salvage(config: Config, *, as_json: bool, out: TextIO) -> int:
    """Move a damaged tail aside; 0 when the journal is readable afterwards (or already was)."""
    root = config.storage.root
    result = salvage_journal(
        journal_directory(root), quarantine_directory(root), local_origin=config.region
    )
    damage = result.damage
    if as_json:
        doc = {
            "salvaged": damage is not None,
            "damage": None
            if damage is None
            else {"segment": str(damage.path), "offset": damage.offset, "reason": damage.reason},
            "quarantine": str(result.quarantine) if result.quarantine else None,
            "moved": [str(p) for p in result.moved],
            "moved_bytes": result.moved_bytes,
            "gaps": result.gaps,
        }
        out.write(json.dumps(doc, indent=2) + "\n")
        return 0
    if damage is None:
        out.write(f"journal {journal_directory(root)}: nothing damaged, nothing moved\n")
        return 0
    out.write(f"damage: segment {damage.path}, byte {damage.offset}: {damage.reason}\n")
    out.write(f"moved {result.moved_bytes} bytes aside (kept) to {result.quarantine}:\n")
    for path in result.moved:
        out.write(f"  {path}\n")
    for gap in result.gaps:
        to = gap["missing_to"] if gap["missing_to"] is not None else "?"
        out.write(
            f"recorded gap: origin {gap['origin']} seq {gap['missing_from']}..{to}"
            " (peers hold these records if they mirrored them; warm backfill fills sealed ones)\n"
        )
    out.write("the daemon starts again (under a new replid)\n")
    return 0
