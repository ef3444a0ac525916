"""The daemon's one shutdown budget fits inside the systemd unit's stop timeout."""

from __future__ import annotations

import re
from pathlib import Path

from cryptorun_daemon.config.model import AdminConfig

UNIT = Path(__file__).resolve().parents[2] / "deploy/systemd/cryptorun-replication@.service"


def test_default_shutdown_timeout_leaves_a_margin_below_timeout_stop_sec() -> None:
    """The default admin.shutdown_timeout (the whole graceful stop) is at most half the unit's
    TimeoutStopSec, so interpreter exit and final fsyncs finish before systemd's SIGKILL."""
    match = re.search(r"^TimeoutStopSec=(\d+)s$", UNIT.read_text(), re.MULTILINE)
    assert match is not None, "TimeoutStopSec=<N>s not found in the unit"
    stop_sec = float(match.group(1))
    default = AdminConfig(host="127.0.0.1", port=0, token_file=None).shutdown_timeout
    assert default <= stop_sec / 2, (default, stop_sec)
