"""The README test command's chaos run: a seeded schedule using every fault kind, checked.

Runs ``python -m tests.chaos.run`` (what ``scripts/chaos.sh`` runs) as a child
process: it needs root (network namespaces, veth pairs, tmpfs), etcd and
libfaketime. A missing capability skips the test on a developer machine and
fails it with ``CI=true`` — a chaos suite that silently does not run proves
nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chaos.nemesis import KINDS
from tests.chaos.run import EXIT_MISSING, missing_capabilities
from tests.harness.tools import missing_tool

SEED = 7
DURATION = 180  # seconds of faults; build, settle and convergence add about two minutes
TIMEOUT = 420


@pytest.mark.slow
def test_seeded_chaos_run_passes_every_invariant(tmp_path: Path) -> None:
    """Seed 7, three minutes of overlapping faults of every kind (kill -9, fail-point kill,
    SIGSTOP, primary paused past its lease, region and etcd isolation, 2/1 split, one-way
    partition, slow, stalled and half-open links, ENOSPC, clock jump, operator failover):
    after healing, the checker finds every invariant of docs/RELIABILITY.md holding."""
    missing = missing_capabilities()
    if missing:
        missing_tool("chaos suite cannot run: " + "; ".join(missing))
    out = tmp_path / "run"
    command = [sys.executable, "-m", "tests.chaos.run"]
    args = [f"--seed={SEED}", f"--duration={DURATION}", f"--out={out}"]
    with subprocess.Popen(
        [*command, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        try:
            stdout, _ = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.terminate()  # the run cleans up namespaces and mounts on SIGTERM
            stdout, _ = proc.communicate(timeout=60)
            subprocess.run([*command, "--cleanup"], check=False)
            pytest.fail(f"chaos run exceeded {TIMEOUT} s:\n{stdout[-3000:]}")
    if proc.returncode == EXIT_MISSING:
        missing_tool(stdout.strip())
    if not (out / "report.json").is_file():
        pytest.fail(f"chaos run ended without a report:\n{stdout[-3000:]}")
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert set(report["faults_by_kind"]) == set(KINDS), report["faults_by_kind"]
    failed = [v for v in report["invariants"] if not v["passed"]]
    assert not failed, stdout[-6000:]
    assert proc.returncode == 0, stdout[-3000:]
    assert (out / "timeline.png").stat().st_size > 0
