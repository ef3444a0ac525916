"""Large freed blocks go back to the kernel in a process run the way the daemon runs.

Each case runs in a fresh interpreter (the allocator setting is per process and
cannot be undone): a worker thread frees one 2 MiB block (which, left alone,
raises glibc's dynamic mmap threshold to 2 MiB), then allocates forty 2 MiB
buffers with a small long-lived object after each, then frees the buffers. The
child prints how much of that its RSS still holds.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="the setting is glibc's (mallopt)"
)

CHILD = """
import sys, threading
from pathlib import Path
sys.path.insert(0, {repo!r})

def rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmRSS")

if {through_daemon_runner}:
    import asyncio
    from cryptorun_daemon.runtime import event_loop

    async def nothing():
        await asyncio.sleep(0)

    event_loop.run(nothing())
kept = []
held = {{}}

def work():
    block = bytearray(2 << 20)
    del block
    parts = [None] * 40
    for n in range(40):
        parts[n] = bytearray(2 << 20)
        kept.append(bytearray(64 << 10))
    held["peak"] = rss_mb()
    parts.clear()
    held["after"] = rss_mb()

thread = threading.Thread(target=work)
thread.start()
thread.join()
print(held["peak"] - held["after"])
"""


def _freed_mb(*, through_daemon_runner: bool) -> float:
    code = CHILD.format(repo=str(REPO), through_daemon_runner=through_daemon_runner)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return float(done.stdout.strip())


def test_the_daemons_runner_hands_freed_part_sized_buffers_back() -> None:
    """After runtime/event_loop.run (what `cryptorun daemon` runs), 80 MB of freed 2 MiB
    buffers leave the process's RSS, although small live objects sit between them; without
    it glibc keeps them all (the control case, which shows the test can tell the two apart).
    """
    assert _freed_mb(through_daemon_runner=True) > 60
    assert _freed_mb(through_daemon_runner=False) < 20
