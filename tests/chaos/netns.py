"""Network namespaces, veth pairs and tmpfs mounts for the chaos cluster (needs root).

Topology (all inside 10.231.0.0/16, used by nothing else):

- one namespace per region (``crchaos-r1`` … ``crchaos-r3``) and one for etcd
  (``crchaos-etcd``);
- a veth pair per region pair (the inter-region links), per region ↔ etcd,
  and per namespace ↔ the root namespace (the observer's out-of-band link, never
  partitioned, like Jepsen's control node);
- the pair between nodes ``a < b`` (etcd = 0, regions 1‥3, root = 9) uses
  ``10.231.(10·a + b).0/24``, ``a`` at ``.1`` and ``b`` at ``.2``.

A partition takes the veth of a pair down (a real network event: the kernel
drops the connected route, sockets see ``ENETUNREACH``/time-outs); healing
brings it up again and re-adds the address routes. A one-way partition adds a
``blackhole`` host route in one namespace for the peer's address on their
link: packets from that side are dropped by the kernel, packets from the other
side still arrive (an asymmetric routing failure; TCP's handshakes and ACKs
then fail in both directions, datagrams and already-sent segments do not).

Error handling: every ``ip`` failure raises :class:`NetnsError` with the
command and its stderr. Resource handling: :func:`cleanup` deletes every
namespace and unmounts every tmpfs whose name starts with our prefix; it is
idempotent and safe to call from ``atexit`` and ``--cleanup``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

PREFIX = "crchaos-"
NET = "10.231"
ETCD_NODE = 0
ROOT_NODE = 9


class NetnsError(RuntimeError):
    """An ``ip``/``mount`` command failed while building or faulting the network."""


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise NetnsError(f"{' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def ns_name(node: int) -> str:
    """Namespace of a node (0 = etcd, 1‥3 = regions)."""
    return f"{PREFIX}etcd" if node == ETCD_NODE else f"{PREFIX}r{node}"


def address(node: int, peer: int) -> str:
    """``node``'s address on its link to ``peer``."""
    low, high = min(node, peer), max(node, peer)
    return f"{NET}.{10 * low + high}.{1 if node == low else 2}"


def veth(node: int, peer: int) -> str:
    """Name of ``node``'s end of the veth pair to ``peer`` (≤ 15 chars)."""
    return f"ccv{node}{peer}"


def capabilities() -> list[str]:
    """What this host lacks for a chaos run (empty when everything is there)."""
    missing = []
    if shutil.which("ip") is None:
        missing.append("iproute2 (`ip`)")
    else:
        probe = f"{PREFIX}probe"
        if _run("ip", "netns", "add", probe, check=False).returncode != 0:
            missing.append("network namespaces (`ip netns add` failed: not root?)")
        else:
            _run("ip", "netns", "del", probe, check=False)
    if shutil.which("mount") is None:
        missing.append("mount (tmpfs)")
    return missing


def _in_ns(node: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if node == ROOT_NODE:
        return _run(*args, check=check)
    return _run("ip", "netns", "exec", ns_name(node), *args, check=check)


def build(regions: int) -> None:
    """Create the namespaces and links for ``regions`` regions plus etcd."""
    cleanup_namespaces()
    nodes = [ETCD_NODE, *range(1, regions + 1)]
    for node in nodes:
        _run("ip", "netns", "add", ns_name(node))
        _in_ns(node, "ip", "link", "set", "lo", "up")
    pairs = [(a, b) for a in nodes for b in nodes if a < b]
    pairs += [(node, ROOT_NODE) for node in nodes]
    for a, b in pairs:
        _run("ip", "link", "add", veth(a, b), "type", "veth", "peer", "name", veth(b, a))
        for node, peer in ((a, b), (b, a)):
            if node != ROOT_NODE:
                _run("ip", "link", "set", veth(node, peer), "netns", ns_name(node))
            _in_ns(node, "ip", "addr", "add", f"{address(node, peer)}/24", "dev", veth(node, peer))
            _in_ns(node, "ip", "link", "set", veth(node, peer), "up")


def set_link(a: int, b: int, *, up: bool) -> None:
    """Take the link between nodes ``a`` and ``b`` down (both ends) or bring it up."""
    state = "up" if up else "down"
    for node, peer in ((a, b), (b, a)):
        _in_ns(node, "ip", "link", "set", veth(node, peer), state)


def set_one_way(src: int, dst: int, *, blocked: bool) -> None:
    """Drop (``blocked``) or pass again what node ``src`` sends to node ``dst`` on their link.

    A ``blackhole`` host route in ``src``'s namespace; ``dst``'s packets to
    ``src`` are untouched.
    """
    blackhole(ns_name(src), address(dst, src), blocked=blocked)


def blackhole(namespace: str, destination: str, *, blocked: bool) -> None:
    """Add (``blocked``) or remove a blackhole host route to ``destination`` in ``namespace``."""
    verb = "add" if blocked else "del"
    _run("ip", "netns", "exec", namespace, "ip", "route", verb, "blackhole", f"{destination}/32")


def cleanup_namespaces() -> list[str]:
    """Kill what still runs in our namespaces (a killed harness's children), then delete them.

    Only processes inside namespaces with our prefix are signalled: the harness
    started every one of them.
    """
    names = [
        line.split()[0]
        for line in _run("ip", "netns", "list", check=False).stdout.splitlines()
        if line.startswith(PREFIX)
    ]
    for name in names:
        for pid in _run("ip", "netns", "pids", name, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        _run("ip", "netns", "del", name, check=False)
    # A namespace lives on while a killed process still holds it; its veths keep their
    # root-side ends until then. Remove those ends now (our names only).
    for line in _run("ip", "-o", "link", "show", check=False).stdout.splitlines():
        fields = line.split(":")
        if len(fields) > 1 and fields[1].strip().split("@")[0].startswith("ccv"):
            _run("ip", "link", "del", fields[1].strip().split("@")[0], check=False)
    return names


def mount_tmpfs(path: Path, size_mb: int) -> None:
    """Mount a size-limited tmpfs at ``path`` (its source is named after our prefix)."""
    path.mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", f"{PREFIX}tmpfs", str(path))


def cleanup_mounts() -> list[str]:
    """Unmount every tmpfs we mounted (found by source name in /proc/mounts)."""
    targets = []
    for line in Path("/proc/mounts").read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == f"{PREFIX}tmpfs":
            targets.append(fields[1])
    for target in sorted(targets, key=len, reverse=True):
        _run("umount", "-l", target, check=False)
    return targets


def cleanup() -> dict[str, list[str]]:
    """Remove every namespace and mount a chaos run made (idempotent)."""
    return {"namespaces": cleanup_namespaces(), "mounts": cleanup_mounts()}
