"""CLI parsing: contract flag forms and exit codes (0 done, 1 refused, 2 usage/config)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from cryptorun_daemon.cli.main import build_parser, main
from tests.harness.net import free_port


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], False),
        (["--dry-run"], True),
        (["--dry-run=true"], True),
        (["--dry-run=false"], False),
        (["--dry-run", "false"], False),
        (["--dry-run=FALSE"], False),
    ],
)
def test_boolean_flags_accept_bare_and_valued_forms(argv: list[str], expected: bool) -> None:
    """--dry-run and --dry-run=false both work, as the A3 spec writes them."""
    args = build_parser().parse_args(
        [
            "replication",
            "failover",
            "--tier",
            "warm",
            "--promote",
            "us-east",
            "--demote",
            "eu-central",
            *argv,
        ]
    )
    assert args.dry_run is expected


def test_bad_boolean_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """--strict=maybe exits 2 and says what a boolean is."""
    code = main(
        [
            "replication",
            "simulate",
            "--from",
            "a",
            "--to",
            "b",
            "--tier",
            "warm",
            "--window",
            "x/y",
            "--strict=maybe",
        ]
    )
    assert code == 2
    assert "is not a boolean" in capsys.readouterr().err


def test_check_valid_config_exits_zero(tmp_path: Path) -> None:
    """daemon --check on a valid config prints ok and exits 0."""
    (tmp_path / "t").write_text("x\n")
    (tmp_path / "t").chmod(0o600)  # --check refuses a token others can read
    path = tmp_path / "r.toml"
    path.write_text('region = "a"\n[admin]\ntoken_file = "t"\n[storage]\nroot = "d"\n')
    out = io.StringIO()
    assert main(["daemon", "--config", str(path), "--check"], out=out) == 0
    assert "ok (region a" in out.getvalue()


def test_check_invalid_config_lists_every_problem_and_exits_two(tmp_path: Path) -> None:
    """Through the real console entry: exit 2, each problem on its own line with file and key."""
    path = tmp_path / "r.toml"
    path.write_text('region = "A"\nextra = 1\n[storage]\nroot = 5\n')
    result = subprocess.run(
        [sys.executable, "-m", "cryptorun_daemon", "daemon", "--config", str(path), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert f"{path}: region: 'A' must match" in result.stderr
    assert f"{path}: extra: unknown key" in result.stderr
    assert f"{path}: storage.root: must be a string, got an integer" in result.stderr
    assert "Traceback" not in result.stderr


def test_replication_without_a_target_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --admin-url, no --config, no env: exit 2 naming the three ways to say it."""
    monkeypatch.delenv("CRYPTORUN_ADMIN_URL", raising=False)
    assert main(["replication", "status"]) == 2
    assert "--admin-url URL or --config PATH" in capsys.readouterr().err


def test_unreachable_daemon_is_a_failure_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A daemon that is not there: exit 1 with the URL in the message."""
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["replication", "status", "--admin-url", url]) == 1
    assert f"cannot reach daemon at {url}" in capsys.readouterr().err


def test_unknown_command_exits_two() -> None:
    """argparse usage errors map to exit 2."""
    assert main(["frobnicate"]) == 2


def test_the_cli_does_not_load_the_async_http_stack() -> None:
    """An operator command starts without importing aiohttp (and the TLS contexts it
    builds at import): the admin client talks through the standard library, so
    ``cryptorun replication status`` costs little more than the interpreter's start."""
    probe = "import sys, cryptorun_daemon.cli.main; print('aiohttp' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "False"
