"""Run the real ``cryptorun`` console entry point in a subprocess, as an operator would."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Mapping

from tests.harness.admin import TOKEN


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``python -m cryptorun_daemon ARGS`` (exit code, stdout, stderr); ``env`` adds variables."""
    return subprocess.run(
        [sys.executable, "-m", "cryptorun_daemon", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


async def cli(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """:func:`run_cli` from async code (in a thread, so the test's daemons keep running)."""
    return await asyncio.to_thread(run_cli, *args, env=env, timeout=timeout)


async def operator_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """:func:`cli` with the test operator's token in ``CRYPTORUN_ADMIN_TOKEN``."""
    return await cli(*args, env={"CRYPTORUN_ADMIN_TOKEN": TOKEN}, timeout=timeout)
