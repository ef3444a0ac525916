"""The demo's child processes: start with a log file, wait until ready, stop in order."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptorun_daemon.errors import CryptorunError

LOG_TAIL_LINES = 25


class DemoError(CryptorunError):
    """A demo process died or never became ready; the message carries its log tail."""

    code = "demo"


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ChildProcess:
    """One child (a daemon or the Kraken test server) with its output in a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def exit_code(self) -> int | None:
        return self.proc.poll()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log written)"
        return "\n".join(text.splitlines()[-lines:])

    def died(self, what: str) -> DemoError:
        return DemoError(
            f"{self.name} {what} (exit code {self.exit_code}); "
            f"last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, deadline: float, *, force: Callable[[], bool]) -> int:
        """Wait for exit until ``deadline`` (monotonic) or ``force()``; then SIGKILL."""
        while self.proc.poll() is None:
            if force() or time.monotonic() > deadline:
                self.proc.kill()
                return self.proc.wait()
            time.sleep(0.05)
        return self.proc.returncode


def start_child(name: str, args: Sequence[str], *, cwd: Path, log_path: Path) -> ChildProcess:
    """Run ``python -m <args>`` with stdout and stderr appended to ``log_path``.

    Each child gets its own session: Ctrl-C in the terminal reaches only the
    demo, which then stops the children in order instead of all at once.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module, no shell
            [sys.executable, "-m", *args],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    return ChildProcess(name, proc, log_path)


def wait_ready(
    child: ChildProcess, probe: Callable[[], bool], *, timeout: float, stop: Callable[[], bool]
) -> bool:
    """Poll ``probe`` until it succeeds; False if ``stop()`` asks to give up.

    Error handling: raises :class:`DemoError` (with the log tail) when the
    child exits or is not ready within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not probe():
        if child.exit_code is not None:
            raise child.died("exited while starting")
        if stop():
            return False
        if time.monotonic() > deadline:
            raise child.died(f"not ready after {timeout:g} s")
        time.sleep(0.1)
    return True


def tcp_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def http_ok(url: str, *, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1, context=context) as resp:  # noqa: S310 - loopback URL we built
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False
