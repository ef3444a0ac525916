"""The shipped systemd unit is accepted by systemd without a single warning.

`systemd-analyze verify` needs no running systemd (the tests run fine in a
container whose PID 1 is not systemd), but it does check that ExecStart's binary
exists and it only warns — exit status 0 — about unknown keys and unparsable
values. So each check verifies an *instance* of the template
(``cryptorun-replication@eu-central.service``) in a temporary folder, with
ExecStart pointed at this interpreter, and treats any output at all as a
failure. The broken-unit tests prove that this check can fail.

Where systemd-analyze is missing the verify tests are skipped, except in CI
(``CI=true``), where a missing tool is a failure rather than a silent pass.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.tools import missing_tool

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "deploy" / "systemd" / "cryptorun-replication@.service"
INSTANCE_NAME = "cryptorun-replication@eu-central.service"
SHIPPED_EXEC_START = (
    "ExecStart=/opt/cryptorun/venv/bin/cryptorun daemon --config /etc/cryptorun/%i.toml"
)


@pytest.fixture(scope="module")
def systemd_analyze() -> list[str]:
    """The verify command line: the tool plus the flags this systemd supports."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        missing_tool("systemd-analyze not found (Debian package: systemd)")
    help_text = subprocess.run(
        [tool, "--help"], capture_output=True, text=True, check=False, timeout=30
    ).stdout
    command = [tool, "verify", "--man=no"]
    # Generators would scan the host's fstab and friends: their warnings say
    # nothing about our unit. Older systemd has no such flag and no generators.
    if "--generators" in help_text:
        command.append("--generators=no")
    # Makes warnings change the exit status too (systemd >= 250); the output
    # check below is what really decides, this is belt and braces.
    if "--recursive-errors" in help_text:
        command.append("--recursive-errors=yes")
    return command


def instantiate(folder: Path, text: str) -> Path:
    """Write ``text`` as the eu-central instance with ExecStart runnable here.

    Only the executable changes (the daemon's arguments stay), so every other
    line systemd checks is the shipped one.
    """
    exec_start = f"ExecStart={sys.executable} -m cryptorun_daemon daemon"
    rewritten, count = re.subn(
        r"^ExecStart=/opt/cryptorun/venv/bin/cryptorun daemon",
        lambda _match: exec_start,
        text,
        flags=re.MULTILINE,
    )
    assert count == 1, "the unit must have exactly one ExecStart running the venv's cryptorun"
    unit = folder / INSTANCE_NAME
    unit.write_text(rewritten, encoding="utf-8")
    return unit


def verify_problems(command: list[str], unit: Path) -> list[str]:
    """Every line systemd-analyze printed about ``unit``, plus a non-zero exit status."""
    env = {**os.environ, "LC_ALL": "C", "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""}
    result = subprocess.run(
        [*command, str(unit)],
        capture_output=True,
        text=True,
        check=False,
        cwd=unit.parent,
        env=env,
        timeout=60,
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    if result.returncode != 0:
        problems.append(f"exit status {result.returncode}")
    return problems


def unit_directives(text: str) -> dict[str, list[str]]:
    """``Section.Key`` → every value assigned to it, in file order."""
    directives: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        directives.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return directives


def test_shipped_unit_verifies_without_any_warning(
    systemd_analyze: list[str], tmp_path: Path
) -> None:
    """systemd-analyze verify prints nothing and exits 0 for the eu-central instance."""
    unit = instantiate(tmp_path, TEMPLATE.read_text(encoding="utf-8"))

    assert verify_problems(systemd_analyze, unit) == []


def replace_line(text: str, line: str, replacement: str) -> str:
    """``text`` with its one line equal to ``line`` replaced by ``replacement``."""
    lines = text.splitlines()
    assert lines.count(line) == 1, f"expected exactly one {line!r} line in the unit"
    lines[lines.index(line)] = replacement
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("line", "replacement", "expected"),
    [
        # A typo'd directive is only a warning to systemd (exit status 0 unless
        # --recursive-errors is given) and silently drops the hardening it named.
        (
            "NoNewPrivileges=yes",
            "NoNewPrivileges=yes\nProtectSytem=strict",
            "Unknown key 'ProtectSytem'",
        ),
        ("Restart=on-failure", "Restart=sometimes", "sometimes"),
        ("[Install]", "[Instal]", "Unknown section 'Instal'"),
        ("ExecReload=/bin/kill -HUP $MAINPID", "ExecReload=/nonexistent/kill", "/nonexistent/kill"),
    ],
    ids=["unknown-directive", "bad-value", "unknown-section", "missing-executable"],
)
def test_check_reports_a_broken_unit(
    systemd_analyze: list[str], tmp_path: Path, line: str, replacement: str, expected: str
) -> None:
    """A deliberately broken copy of the unit yields a printed problem naming the fault."""
    broken = replace_line(TEMPLATE.read_text(encoding="utf-8"), line, replacement)
    unit = instantiate(tmp_path, broken)

    problems = verify_problems(systemd_analyze, unit)

    assert any(expected in problem for problem in problems), problems


def test_unit_declares_the_promised_lifecycle_and_sandbox() -> None:
    """The directives the daemon and the operations docs rely on are present."""
    directives = unit_directives(TEMPLATE.read_text(encoding="utf-8"))
    expected = {
        "Service.Type": ["notify"],
        "Service.NotifyAccess": ["main"],
        "Service.WatchdogSec": ["30s"],
        "Service.Restart": ["on-failure"],
        "Service.RestartPreventExitStatus": ["2"],
        "Service.KillSignal": ["SIGTERM"],
        "Service.ExecReload": ["/bin/kill -HUP $MAINPID"],
        "Service.StateDirectory": ["cryptorun/%i"],
        "Service.User": ["cryptorun"],
        "Service.ProtectSystem": ["strict"],
        "Service.ProtectHome": ["yes"],
        "Service.PrivateTmp": ["yes"],
        "Service.NoNewPrivileges": ["yes"],
        "Service.RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
        "Service.CapabilityBoundingSet": [""],
        "Service.SystemCallArchitectures": ["native"],
        "Install.WantedBy": ["multi-user.target"],
    }
    for key, values in expected.items():
        assert directives.get(key) == values, key
    assert directives["Service.ExecStart"] == [SHIPPED_EXEC_START.partition("=")[2]]
    for key in ("TimeoutStopSec", "RestartSec"):
        assert directives.get(f"Service.{key}"), key
    # Deliberately off (see the comment in the unit): it breaks JIT code paths
    # only at run time, which no static check here could catch.
    assert "Service.MemoryDenyWriteExecute" not in directives
    assert "Service.DynamicUser" not in directives
