"""New directories are made durable: the parent of every directory created is fsynced.

Which descriptors get fsynced is read from ``/proc/self/fd`` while the real
``os.fsync`` still runs, so the test sees exactly what reached the kernel.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cryptorun_daemon.storage.atomic import make_durable_dirs


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Paths of every descriptor fsynced while the test runs."""
    seen: list[Path] = []
    real: Callable[[int], None] = os.fsync

    def recording(fd: int) -> None:
        seen.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    return seen


def test_every_created_level_has_its_parent_fsynced(tmp_path: Path, fsynced: list[Path]) -> None:
    """``mkdir -p`` of three new levels fsyncs the three parents, in creation order."""
    (tmp_path / "warm").mkdir()
    target = tmp_path / "warm" / "trade" / "venue=kraken" / "symbol=BTC-USD"
    make_durable_dirs(target)
    assert target.is_dir()
    assert fsynced == [
        tmp_path / "warm",
        tmp_path / "warm" / "trade",
        tmp_path / "warm" / "trade" / "venue=kraken",
    ]


def test_an_existing_directory_costs_no_fsync(tmp_path: Path, fsynced: list[Path]) -> None:
    """Nothing created, nothing synced."""
    make_durable_dirs(tmp_path)
    assert fsynced == []
