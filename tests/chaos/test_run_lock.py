"""A chaos run never touches the cluster of another run on the same host."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.chaos.run import EXIT_BUSY, RUN_LOCK, hold_run_lock

REPO = Path(__file__).resolve().parents[2]


def _chaos(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.chaos.run", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_second_run_and_a_cleanup_are_refused_while_a_run_holds_the_lock(
    tmp_path: Path,
) -> None:
    """While a run holds the lock, a second run exits 4 before building anything and
    ``--cleanup`` exits 4 instead of killing that run's processes (an integration run's
    chaos test once tore down a 30-minute soak this way); once released, the lock is free."""
    fd = hold_run_lock()
    assert fd is not None, f"{RUN_LOCK} is held by a live chaos run; run this test alone"
    try:
        out = tmp_path / "run"
        second = _chaos("--seed", "3", "--duration", "1", "--out", str(out))
        assert second.returncode == EXIT_BUSY, second.stdout + second.stderr
        assert f"pid {os.getpid()}" in second.stdout
        assert not out.exists()
        cleanup = _chaos("--cleanup")
        assert cleanup.returncode == EXIT_BUSY, cleanup.stdout + cleanup.stderr
        assert "--cleanup refused" in cleanup.stdout
    finally:
        os.close(fd)
    again = hold_run_lock()
    assert again is not None
    os.close(again)
