"""Shared fixtures. Harness code lives in ``tests/harness`` so test modules can import it."""

from __future__ import annotations

import pytest

from cryptorun_daemon.logsetup import reset_logging


@pytest.fixture(autouse=True)
def _fresh_logging() -> None:
    """Every test starts from structlog's defaults (the daemon reconfigures globally)."""
    reset_logging()
