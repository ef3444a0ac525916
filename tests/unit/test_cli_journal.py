"""``cryptorun journal check|salvage``: exit codes and output on journals made on disk."""

from __future__ import annotations

import io
import json
from pathlib import Path

from cryptorun_daemon.cli.main import main
from cryptorun_daemon.hot.buffer import ReplayBuffer
from cryptorun_daemon.hot.feed import MarketRecord
from cryptorun_daemon.hot.journal import Journal
from cryptorun_daemon.hot.log import HotLog
from cryptorun_daemon.metrics import Metrics


def write_config(tmp_path: Path) -> Path:
    (tmp_path / "t").write_text("token\n")
    path = tmp_path / "r.toml"
    path.write_text('region = "eu"\n[admin]\ntoken_file = "t"\n[storage]\nroot = "d"\n')
    return path


def journal_dir(tmp_path: Path) -> Path:
    return tmp_path / "d" / "_state" / "hot" / "journal"


def fill_journal(tmp_path: Path, records: int = 20) -> None:
    journal = Journal(
        journal_dir(tmp_path), segment_bytes=1 << 20, fsync_interval=1, fsync_records=10
    )
    log = HotLog("eu", journal, ReplayBuffer(100, 1 << 20), Metrics())
    log.open()
    for i in range(1, records + 1):
        log.append_local(
            MarketRecord("trade", {"ts": i, "venue": "v", "symbol": "A/B", "ingest_ts": i})
        )
    log.close()


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def test_check_and_salvage_on_a_region_without_a_journal_change_nothing(tmp_path: Path) -> None:
    """A region that never ran: check exits 0 and salvage reports nothing to do (no crash)."""
    config = str(write_config(tmp_path))
    assert run("journal", "check", "--config", config)[0] == 0
    code, text = run("journal", "salvage", "--config", config)
    assert code == 0
    assert "nothing damaged" in text
    assert not journal_dir(tmp_path).exists()


def test_check_reports_a_clean_journal_and_its_last_seq(tmp_path: Path) -> None:
    """A journal closed cleanly: check exits 0 and names the last seq of each origin."""
    config = str(write_config(tmp_path))
    fill_journal(tmp_path)
    code, text = run("journal", "check", "--config", config)
    assert code == 0
    assert "ok (last seq: eu 20)" in text


def test_check_json_names_segment_offset_and_fix(tmp_path: Path) -> None:
    """A damaged journal: check --json exits 1 with the segment, the byte and the fix command."""
    config = str(write_config(tmp_path))
    fill_journal(tmp_path)
    segment = sorted(journal_dir(tmp_path).glob("*.jsonl"))[0]
    data = segment.read_bytes()
    offset = data.index(b"\n") + 1
    segment.write_bytes(data[:offset] + b"][\n" + data[offset:])
    code, text = run("journal", "check", "--config", config, "--json")
    assert code == 1
    doc = json.loads(text)
    assert doc["damage"] == {
        "segment": str(segment),
        "offset": offset,
        "reason": doc["damage"]["reason"],
    }
    assert doc["fix"] == f"cryptorun journal salvage --config {config}"
