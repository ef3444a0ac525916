"""External tools the tests need (etcd, Prometheus, promtool, systemd-analyze).

One rule for all of them: a missing tool skips the test on a developer's
machine but fails it in CI (``CI=true``), where a skip would hide a broken
install step.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing_tool(message: str) -> NoReturn:
    """Fail (CI) or skip (elsewhere) the calling test because a tool is missing."""
    if IN_CI:
        pytest.fail(f"{message} — CI must run this test", pytrace=False)
    pytest.skip(message)


def require_binary(name: str, package: str) -> str:
    """Path of ``name`` (PATH or /usr/sbin), else :func:`missing_tool`."""
    sbin = f"/usr/sbin/{name}"
    path = shutil.which(name) or (sbin if os.path.exists(sbin) else None)
    if path is None:
        missing_tool(
            f"{name} not found (Debian package {package}); the README test command installs it"
        )
    return path
