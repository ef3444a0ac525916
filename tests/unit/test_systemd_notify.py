"""sd_notify datagrams reach a socket the test owns, including abstract-namespace ones."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from structlog.testing import capture_logs

from cryptorun_daemon.runtime.systemd import SystemdNotifier


def test_notifications_reach_a_filesystem_socket(tmp_path: Path) -> None:
    """READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 arrive as separate datagrams."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(2)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": str(path)})
        notifier.ready()
        notifier.status("serving")
        notifier.watchdog()
        notifier.stopping()
        notifier.close()
        got = [server.recv(4096).decode() for _ in range(4)]
    assert got == ["READY=1", "STATUS=serving", "WATCHDOG=1", "STOPPING=1"]


def test_abstract_namespace_socket_is_supported() -> None:
    """A NOTIFY_SOCKET starting with '@' names a Linux abstract socket."""
    name = f"cryptorun-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        server.settimeout(2)
        notifier = SystemdNotifier({"NOTIFY_SOCKET": "@" + name})
        notifier.ready()
        notifier.close()
        assert server.recv(4096) == b"READY=1"


def test_without_notify_socket_everything_is_a_no_op() -> None:
    """Outside systemd the notifier is disabled and never raises."""
    notifier = SystemdNotifier({})
    assert not notifier.enabled
    notifier.ready()
    notifier.watchdog()
    assert notifier.watchdog_interval is None


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    """systemd recommends pinging at half the configured timeout."""
    notifier = SystemdNotifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())})
    assert notifier.watchdog_interval == 15.0
    other = SystemdNotifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"})
    assert other.watchdog_interval is None  # the watchdog is meant for another process


def test_send_failure_is_logged_once_and_a_later_send_still_works(tmp_path: Path) -> None:
    """Sends to a socket that does not exist raise nothing and log one warning (not one per
    send); once the socket appears, the next notification reaches it."""
    path = tmp_path / "notify.sock"
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(path)})
    with capture_logs() as logs:
        notifier.ready()
        notifier.status("still fine")
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert [e["event"] for e in warnings] == ["systemd notify failed"]
    assert "No such file" in warnings[0]["error"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(2)
        notifier.status("back")
        notifier.close()
        assert server.recv(4096) == b"STATUS=back"
