"""The nemesis's one-way partition drops one side's packets and passes the other's.

Two namespaces of this test's own (``crow-a``, ``crow-b``, names no chaos run
uses, so it may run beside one) joined by a veth pair; UDP datagrams show the
direction that passes (TCP would fail both ways: its replies are dropped).
Needs root and ``ip``: skipped on a developer machine without them, failed
with ``CI=true``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.chaos import netns
from tests.harness.tools import missing_tool

NS_A, NS_B = "crow-a", "crow-b"
ADDR_A, ADDR_B = "10.232.1.1", "10.232.1.2"
PORT = 40999
RECEIVE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(float(sys.argv[3]))
try:
    print(s.recv(100).decode())
except TimeoutError:
    print("TIMEOUT")
"""
SEND = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(10):
    try:
        s.sendto(b"hello", (sys.argv[1], int(sys.argv[2])))
    except OSError:
        pass  # EINVAL from a blackhole route: dropped, as meant
    time.sleep(0.1)
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _teardown() -> None:
    for ns in (NS_A, NS_B):
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


@pytest.fixture
def pair() -> Iterator[None]:
    probe = subprocess.run(["ip", "netns", "add", "crow-probe"], check=False, capture_output=True)
    if probe.returncode != 0:
        missing_tool(f"network namespaces: {probe.stderr.decode().strip()}")
    _ip("netns", "del", "crow-probe")
    _teardown()
    try:
        _ip("netns", "add", NS_A)
        _ip("netns", "add", NS_B)
        _ip("link", "add", "crowab", "type", "veth", "peer", "name", "crowba")
        for ns, dev, addr in ((NS_A, "crowab", ADDR_A), (NS_B, "crowba", ADDR_B)):
            _ip("link", "set", dev, "netns", ns)
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        yield
    finally:
        _teardown()


def _delivered(sender: str, receiver: str, receiver_addr: str) -> bool:
    """Whether a datagram sent from ``sender``'s namespace reaches ``receiver``'s."""
    listen = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            receiver,
            sys.executable,
            "-c",
            RECEIVE,
            receiver_addr,
            str(PORT),
            "3",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    subprocess.run(
        ["ip", "netns", "exec", sender, sys.executable, "-c", SEND, receiver_addr, str(PORT)],
        check=True,
    )
    out, _ = listen.communicate(timeout=30)
    return out.strip() == "hello"


def test_one_way_drops_one_direction_and_heals(pair: None) -> None:
    """With a's route to b blackholed, a's datagrams to b are lost while b's reach a; after
    healing, both directions pass again."""
    assert _delivered(NS_A, NS_B, ADDR_B)
    netns.blackhole(NS_A, ADDR_B, blocked=True)
    assert not _delivered(NS_A, NS_B, ADDR_B)
    assert _delivered(NS_B, NS_A, ADDR_A)
    netns.blackhole(NS_A, ADDR_B, blocked=False)
    assert _delivered(NS_A, NS_B, ADDR_B)


def test_set_one_way_blocks_the_peer_address_on_their_link(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The route goes into src's namespace, for dst's address on the src–dst link."""
    calls: list[tuple[str, str, bool]] = []

    def record(namespace: str, destination: str, *, blocked: bool) -> None:
        calls.append((namespace, destination, blocked))

    monkeypatch.setattr(netns, "blackhole", record)
    netns.set_one_way(1, 3, blocked=True)
    assert calls == [(netns.ns_name(1), netns.address(3, 1), True)]
    assert netns.address(3, 1) == "10.231.13.2"
