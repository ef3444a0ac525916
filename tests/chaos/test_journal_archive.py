"""The journal archive keeps every rolled segment as last seen, so trimming hides nothing."""

from __future__ import annotations

import os
from pathlib import Path

from tests.chaos.journal_archive import ARCHIVE_DIR, JournalArchiver, journal_directory


def test_rolled_segments_are_copied_again_when_changed_and_kept_after_trimming(
    tmp_path: Path,
) -> None:
    """Every segment but the newest is copied; a segment whose bytes change is copied
    again; a segment the sealer deletes stays in the archive; the active one is not copied."""
    root = tmp_path / "root"
    journal = journal_directory(root)
    journal.mkdir(parents=True)
    (journal / "0000000001.jsonl").write_text('{"o":"eu-central","s":1}\n')
    (journal / "0000000002.jsonl").write_text('{"o":"eu-central","s":2}\n')
    archiver = JournalArchiver({"eu-central": root}, tmp_path / "out")
    archive = tmp_path / "out" / ARCHIVE_DIR / "eu-central"
    archiver.poll_once()
    assert sorted(p.name for p in archive.iterdir()) == ["0000000001.jsonl"]
    # Recovery cut a torn tail (other size, later mtime): the copy follows.
    (journal / "0000000001.jsonl").write_text('{"o":"eu-central","s":1}\n{"o":"eu-central"}\n')
    os.utime(journal / "0000000001.jsonl", ns=(1, 2))
    (journal / "0000000003.jsonl").write_text("")
    archiver.poll_once()
    assert (archive / "0000000001.jsonl").read_bytes() == (
        journal / "0000000001.jsonl"
    ).read_bytes()
    assert (archive / "0000000002.jsonl").is_file()
    (journal / "0000000001.jsonl").unlink()  # trimmed by the sealer
    archiver.poll_once()
    assert (archive / "0000000001.jsonl").read_text().startswith('{"o":"eu-central","s":1}')
    assert not (archive / "0000000003.jsonl").exists()
    assert not any(p.name.endswith(".partial") for p in archive.iterdir())
