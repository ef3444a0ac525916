"""Shared fixtures. Harness code lives in ``tests/harness`` so test modules can import it."""

from __future__ import annotations

import os
import shutil

import pytest

from cryptorun_daemon.logsetup import reset_logging

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_binary(name: str, package: str) -> str:
    """Path of ``name``; skip locally when missing, but fail in CI (CI=true).

    A skip in CI would hide a broken install step, so there it is a failure.
    """
    sbin = f"/usr/sbin/{name}"
    path = shutil.which(name) or (sbin if os.path.exists(sbin) else None)
    if path is None:
        message = (
            f"{name} not found (Debian package {package}); "
            "the README test command installs it"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(autouse=True)
def _fresh_logging() -> None:
    """Every test starts from structlog's defaults (the daemon reconfigures globally)."""
    reset_logging()
