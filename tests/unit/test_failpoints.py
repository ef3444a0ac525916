"""Named fail points: the spec parser, inertness, the exit action, and the name registry."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cryptorun_daemon.errors import ConfigError
from cryptorun_daemon.runtime import failpoints
from cryptorun_daemon.runtime.failpoints import ENV_VAR, EXIT_CODE, KNOWN, Action, parse

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "cryptorun_daemon"


def test_spec_arms_several_fail_points_with_their_actions() -> None:
    """A comma-separated spec arms each named fail point: exit with the default code or
    a given one, or sleep for a number of milliseconds."""
    armed = parse("seal.after_data=exit, late.after_data=exit(3),journal.roll.after_open=sleep(5)")
    assert armed == {
        "seal.after_data": Action("exit", EXIT_CODE),
        "late.after_data": Action("exit", 3),
        "journal.roll.after_open": Action("sleep", 5),
    }
    assert parse("") == {}


def test_unknown_names_and_bad_actions_are_refused_all_at_once() -> None:
    """A typo never silently tests nothing: unknown fail points and malformed actions raise
    one ConfigError naming each of them."""
    with pytest.raises(ConfigError) as caught:
        parse("seal.after_dta=exit,seal.after_data=crash")
    text = str(caught.value)
    assert "seal.after_dta" in text
    assert "no such fail point" in text
    assert "crash" in text


def test_unarmed_fail_points_do_nothing_and_sleep_continues() -> None:
    """Unset, a fail point returns at once; armed with sleep, it returns after sleeping."""
    try:
        failpoints.configure("")
        failpoints.failpoint("seal.after_data")
        failpoints.configure("seal.after_data=sleep(1)")
        failpoints.failpoint("seal.after_data")
        failpoints.failpoint("late.after_data")  # not armed
    finally:
        failpoints.configure("")


def run_python(code: str, spec: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, ENV_VAR: spec}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )


def test_exit_action_ends_the_process_at_the_fail_point() -> None:
    """Armed from the environment, ``exit`` ends the process right there with the fail-point
    exit code and a line naming it on stderr; nothing after it runs."""
    code = (
        "from cryptorun_daemon.runtime.failpoints import failpoint\n"
        "print('before', flush=True)\n"
        "failpoint('late.after_seal')\n"
        "print('after', flush=True)\n"
    )
    done = run_python(code, "late.after_seal=exit")
    assert done.returncode == EXIT_CODE
    assert done.stdout == "before\n"
    assert "failpoint late.after_seal: exit" in done.stderr
    assert run_python(code, "late.after_seal=exit(7)").returncode == 7


def test_an_invalid_environment_spec_stops_the_process() -> None:
    """A bad CRYPTORUN_FAILPOINTS fails the import loudly instead of being ignored."""
    done = run_python("import cryptorun_daemon.runtime.failpoints", "nope=exit")
    assert done.returncode != 0
    assert "ConfigError" in done.stderr


def test_every_fail_point_in_the_code_is_registered_and_documented() -> None:
    """Each ``failpoint("...")`` call names a registered fail point, each registered fail
    point is used in the code, and docs/HOT_TIER.md lists every one of them."""
    sources = {
        p: p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py") if p.name != "failpoints.py"
    }
    called = {m for text in sources.values() for m in re.findall(r'failpoint\("([^"]+)"\)', text)}
    assert called <= set(KNOWN)
    everything = "\n".join(sources.values())
    for name in KNOWN:
        assert f'"{name}"' in everything, f"{name} is registered but never used"
    docs = (REPO / "docs" / "HOT_TIER.md").read_text(encoding="utf-8")
    assert [name for name in KNOWN if f"`{name}`" not in docs] == []
