"""The replica commit under fail points: a pull killed at any step converges when rerun.

Each case runs the real replica commit path (``WarmColdExecutor`` pulling from a
real ``PartitionServer`` over loopback HTTP) in its own process
(``tests/harness/replicate_once.py``) with ``CRYPTORUN_FAILPOINTS=<name>=exit``,
checks that the process died at that fail point, runs it again without the fail
point and compares the replica's warm tree byte for byte with the source's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cryptorun_daemon.runtime.failpoints import ENV_VAR, EXIT_CODE
from tests.harness.daemons import REPO_ROOT
from tests.harness.testdata import seed_partitions

pytestmark = pytest.mark.slow

REPLICA = (
    "replica.after_fetch",
    "replica.before_commit",
    "replica.after_manifest",
    "replica.after_commit",
)


def replicate(src: Path, dst: Path, failpoint: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    if failpoint is not None:
        env[ENV_VAR] = f"{failpoint}=exit"
    return subprocess.run(
        [sys.executable, "-m", "tests.harness.replicate_once", str(src), str(dst)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root/warm`` (hidden temporaries included) and its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted((root / "warm").rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("failpoint", REPLICA)
def test_replica_killed_at_a_commit_step_converges_on_rerun(tmp_path: Path, failpoint: str) -> None:
    """Killed at the fail point, a rerun of the pull leaves the replica byte-identical to
    the source: every partition committed (manifest and _SUCCESS), no leftover file."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    seed_partitions(src, start=datetime(2025, 9, 1, tzinfo=UTC), count=2, rows=500, files=2)
    crashed = replicate(src, dst, failpoint)
    assert crashed.returncode == EXIT_CODE, crashed.stderr
    assert f"failpoint {failpoint}: exit" in crashed.stderr
    again = replicate(src, dst, None)
    assert again.returncode == 0, again.stderr
    assert tree(dst) == tree(src)
