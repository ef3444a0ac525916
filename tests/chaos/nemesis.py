"""The nemesis: a fault schedule drawn from a seed, and how each fault is applied and healed.

:func:`make_schedule` is pure: the same seed and duration give the same list
of faults (start time, kind, duration, parameters, a target pick). Targets
named by role (``primary``) resolve at run time against what the observer
sees, so the *schedule* replays exactly from its seed while the cluster's
reaction (who is primary then) is recorded in the history.

Fault kinds (:data:`KINDS`), each applied by :class:`Nemesis`:

=================  ==========================================================
``kill``           SIGKILL a daemon; restarted after the hold
``kill_failpoint`` SIGKILL the primary, restart it with ``CRYPTORUN_FAILPOINTS``
                   naming a sealing fail point (inert if the build has none)
``pause``          SIGSTOP a daemon, SIGCONT after the hold (GC / VM freeze)
``pause_primary``  SIGSTOP the warm primary past its lease: automatic failover
``isolate``        a region's veths to both peers and etcd down
``isolate_etcd``   the primary's veth to etcd down (peers still reachable)
``split``          2/1 split: one region's veths to both peers down
``one_way``        a directed region pair: what one region sends to the other is
                   dropped by its kernel (a blackhole route), the reverse passes
``slow_link``      latency and a bandwidth cap on a region pair (fault proxies)
``stall_link``     a region pair forwards nothing (connections stay open)
``half_open``      a directed link drops its open connections' upstream silently
``enospc``         a region's tmpfs storage filled to ENOSPC, freed after the hold
``clock_jump``     one region's wall clock jumps (libfaketime), back after the hold
``failover``       an operator's ``POST /v1/failover`` promoting a random replica
=================  ==========================================================

Error handling: a fault that cannot be applied (its target is down, the
request fails) is recorded with ``error`` in the history and the run goes on;
healing always runs (``finally``). Resource handling: every fault's task is
owned by the nemesis's TaskGroup; :meth:`Nemesis.heal_all` restores every
link, proxy, clock, fill file and paused process whatever is still active.
"""

from __future__ import annotations

import asyncio
import errno
import json
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.chaos import netns
from tests.chaos.cluster import LEASE_TTL, REGIONS, Cluster, admin_url, node_of
from tests.chaos.history import History

KINDS = (
    "kill",
    "kill_failpoint",
    "pause",
    "pause_primary",
    "isolate",
    "isolate_etcd",
    "split",
    "one_way",
    "slow_link",
    "stall_link",
    "half_open",
    "enospc",
    "clock_jump",
    "failover",
)
FAILPOINTS = ("seal.after_data", "seal.after_manifest", "seal.after_success")
MEAN_GAP = 6.0  # seconds between fault starts, on average


@dataclass(frozen=True)
class Fault:
    """One scheduled fault: when it starts (s after the schedule starts) and for how long."""

    id: int
    at: float
    kind: str
    hold: float
    pick: int  # chooses the target among candidates at run time
    params: dict[str, Any] = field(default_factory=dict)


def make_schedule(seed: int, duration: float) -> list[Fault]:
    """The seeded schedule: every kind once (shuffled), then random kinds, until ``duration``."""
    rng = random.Random(seed)
    first = list(KINDS)
    rng.shuffle(first)
    faults: list[Fault] = []
    at = rng.uniform(2.0, 5.0)
    while at < duration:
        kind = first[len(faults)] if len(faults) < len(first) else rng.choice(KINDS)
        hold, params = _draw(rng, kind)
        faults.append(
            Fault(len(faults) + 1, round(at, 3), kind, round(hold, 3), rng.randrange(6), params)
        )
        at += rng.uniform(0.3, 2 * MEAN_GAP - 0.3)
    return faults


def _draw(rng: random.Random, kind: str) -> tuple[float, dict[str, Any]]:
    if kind in ("kill", "kill_failpoint"):
        params = {"failpoint": rng.choice(FAILPOINTS)} if kind == "kill_failpoint" else {}
        return rng.uniform(0.5, 5.0), params
    if kind == "pause":
        return rng.uniform(1.0, 8.0), {}
    if kind == "pause_primary":
        return LEASE_TTL * rng.uniform(2.0, 3.0), {}
    if kind in ("isolate", "isolate_etcd", "split", "one_way"):
        return rng.uniform(3.0, 12.0), {}
    if kind == "slow_link":
        return rng.uniform(4.0, 15.0), {
            "latency": round(rng.uniform(0.05, 0.6), 3),
            "bandwidth": rng.choice([16_000, 64_000, 256_000]),
        }
    if kind == "stall_link":
        return rng.uniform(2.0, 10.0), {}
    if kind == "half_open":
        return rng.uniform(0.5, 3.0), {}
    if kind == "enospc":
        return rng.uniform(3.0, 12.0), {}
    if kind == "clock_jump":
        return rng.uniform(8.0, 20.0), {"offset": rng.choice([-1, 1]) * rng.randint(5, 40)}
    return 0.0, {}  # failover: an instant operation


class Nemesis:
    """Applies faults to the cluster, records them, and heals them."""

    def __init__(
        self,
        cluster: Cluster,
        history: History,
        primary: Callable[[], str | None],
        *,
        echo: Callable[[str], None] = lambda line: print(line, flush=True),
    ) -> None:
        self.cluster = cluster
        self.history = history
        self.primary = primary
        self.echo = echo
        self.link_down: Counter[tuple[int, int]] = Counter()
        self.one_way: Counter[tuple[int, int]] = Counter()  # directed (src, dst) node pairs
        self.stalls: Counter[tuple[str, str]] = Counter()
        self.fills: dict[int, Any] = {}
        self.clock_jumps: dict[str, int] = {}
        self.counts: Counter[str] = Counter()
        self.errors: list[dict[str, Any]] = []

    # -- schedule -------------------------------------------------------------------
    async def run(self, schedule: list[Fault], started: float) -> None:
        """Start each fault at its time (faults overlap); return when all have healed."""
        async with asyncio.TaskGroup() as group:
            for fault in schedule:
                delay = started + fault.at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                group.create_task(self.apply(fault))

    async def apply(self, fault: Fault) -> None:
        """Inject one fault, hold it, heal it; both ends go to the history and stdout."""
        try:
            target = self._target(fault)
        except LookupError as exc:
            self._record(fault, "skip", None, error=str(exc))
            return
        self._record(fault, "start", target)
        self.counts[fault.kind] += 1
        try:
            heal = await getattr(self, f"_{fault.kind}")(fault, target)
        except (OSError, netns.NetnsError, aiohttp.ClientError, TimeoutError) as exc:
            self._record(fault, "end", target, error=f"{type(exc).__name__}: {exc}")
            self.errors.append({"id": fault.id, "kind": fault.kind, "error": str(exc)})
            return
        try:
            if fault.hold > 0:
                await asyncio.sleep(fault.hold)
        finally:
            if heal is not None:
                await asyncio.to_thread(heal)
            self._record(fault, "end", target)

    def _target(self, fault: Fault) -> Any:
        regions = list(REGIONS)
        if fault.kind in ("kill_failpoint", "pause_primary", "isolate_etcd"):
            primary = self.primary()
            if primary is None:
                raise LookupError("no primary known")
            return primary
        if fault.kind in ("slow_link", "stall_link"):
            pairs = [(a, b) for a in regions for b in regions if a < b]
            return pairs[fault.pick % len(pairs)]
        if fault.kind in ("half_open", "one_way"):
            links = [(a, b) for a in regions for b in regions if a != b]
            return links[fault.pick % len(links)]
        if fault.kind == "failover":
            return regions[fault.pick % len(regions)]  # the region the request is sent to
        return regions[fault.pick % len(regions)]

    def _record(self, fault: Fault, phase: str, target: Any, **extra: Any) -> None:
        entry = self.history.append(
            "fault",
            id=fault.id,
            fault=fault.kind,
            phase=phase,
            target=target,
            hold=fault.hold,
            **fault.params,
            **extra,
        )
        shown = target if isinstance(target, str) else "→".join(target) if target else "-"
        params = " ".join(f"{k}={v}" for k, v in fault.params.items())
        note = f" error={extra['error']}" if "error" in extra else ""
        self.echo(
            f"[{entry['mono']:8.1f}s] fault #{fault.id:<4} {phase:<5} {fault.kind:<14} "
            f"{shown:<22} hold={fault.hold:.1f}s {params}{note}"
        )

    # -- processes ------------------------------------------------------------------
    async def _kill(self, fault: Fault, region: str) -> None:
        daemon = self.cluster.daemons[region]
        daemon.hold_until = time.monotonic() + fault.hold
        if "failpoint" in fault.params:
            daemon.extra_env = {"CRYPTORUN_FAILPOINTS": f"{fault.params['failpoint']}=exit"}
        daemon.signal(signal.SIGKILL)

    async def _kill_failpoint(self, fault: Fault, region: str) -> None:
        await self._kill(fault, region)

    async def _pause(self, fault: Fault, region: str) -> Callable[[], None]:
        daemon = self.cluster.daemons[region]
        daemon.signal(signal.SIGSTOP)
        daemon.paused = True

        def heal() -> None:
            daemon.paused = False
            daemon.signal(signal.SIGCONT)

        return heal

    async def _pause_primary(self, fault: Fault, region: str) -> Callable[[], None]:
        return await self._pause(fault, region)

    # -- network --------------------------------------------------------------------
    def _links_down(self, pairs: list[tuple[int, int]]) -> Callable[[], None]:
        for pair in pairs:
            self.link_down[pair] += 1
            if self.link_down[pair] == 1:
                netns.set_link(*pair, up=False)

        def heal() -> None:
            for pair in pairs:
                self.link_down[pair] -= 1
                if self.link_down[pair] == 0:
                    netns.set_link(*pair, up=True)

        return heal

    async def _isolate(self, fault: Fault, region: str) -> Callable[[], None]:
        node = node_of(region)
        pairs = [(node, node_of(r)) for r in REGIONS if r != region] + [(node, netns.ETCD_NODE)]
        return await asyncio.to_thread(self._links_down, [_pair(*p) for p in pairs])

    async def _isolate_etcd(self, fault: Fault, region: str) -> Callable[[], None]:
        return await asyncio.to_thread(self._links_down, [_pair(netns.ETCD_NODE, node_of(region))])

    async def _split(self, fault: Fault, region: str) -> Callable[[], None]:
        node = node_of(region)
        pairs = [_pair(node, node_of(r)) for r in REGIONS if r != region]
        return await asyncio.to_thread(self._links_down, pairs)

    def _one_way_on(self, link: tuple[int, int]) -> Callable[[], None]:
        self.one_way[link] += 1
        if self.one_way[link] == 1:
            netns.set_one_way(*link, blocked=True)

        def heal() -> None:
            self.one_way[link] -= 1
            if self.one_way[link] == 0:
                netns.set_one_way(*link, blocked=False)

        return heal

    async def _one_way(self, fault: Fault, link: tuple[str, str]) -> Callable[[], None]:
        src, dst = link
        return await asyncio.to_thread(self._one_way_on, (node_of(src), node_of(dst)))

    async def _proxy(self, region: str, link: str, change: dict[str, Any]) -> None:
        path = str(self.cluster.proxy_socket(region))
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), 5)
        try:
            writer.write(json.dumps({"link": link, **change}).encode() + b"\n")
            await writer.drain()
            answer = json.loads(await asyncio.wait_for(reader.readline(), 5))
            if not answer.get("ok"):
                raise OSError(f"proxy {region}: {answer}")
        finally:
            writer.close()

    def _proxy_sync(self, region: str, link: str, change: dict[str, Any]) -> None:
        asyncio.run(self._proxy(region, link, change))

    async def _slow_link(self, fault: Fault, pair: tuple[str, str]) -> Callable[[], None]:
        a, b = pair
        change = {"latency": fault.params["latency"], "bandwidth": fault.params["bandwidth"]}
        await self._proxy(a, b, change)
        await self._proxy(b, a, change)

        def heal() -> None:
            for src, dst in ((a, b), (b, a)):
                self._proxy_sync(src, dst, {"latency": 0, "bandwidth": 0})

        return heal

    async def _stall_link(self, fault: Fault, pair: tuple[str, str]) -> Callable[[], None]:
        a, b = pair
        for src, dst in ((a, b), (b, a)):
            self.stalls[(src, dst)] += 1
            await self._proxy(src, dst, {"stall": True})

        def heal() -> None:
            for src, dst in ((a, b), (b, a)):
                self.stalls[(src, dst)] -= 1
                if self.stalls[(src, dst)] == 0:
                    self._proxy_sync(src, dst, {"stall": False})

        return heal

    async def _half_open(self, fault: Fault, link: tuple[str, str]) -> Callable[[], None]:
        src, dst = link
        await self._proxy(src, dst, {"half_open": True})

        def heal() -> None:
            self._proxy_sync(src, dst, {"half_open": False})

        return heal

    # -- storage and clock ----------------------------------------------------------
    async def _enospc(self, fault: Fault, region: str) -> Callable[[], None]:
        path = self.cluster.mount_dir(region) / f"chaos-fill-{fault.id}"
        written = await asyncio.to_thread(_fill, path)
        self.history.append("event", event="filled", target=region, bytes=written)

        def heal() -> None:
            path.unlink(missing_ok=True)

        return heal

    async def _clock_jump(self, fault: Fault, region: str) -> Callable[[], None] | None:
        if not self.cluster.use_faketime:
            raise OSError("libfaketime is not installed")
        clock = self.cluster.clock_file(region)
        self.clock_jumps[region] = self.clock_jumps.get(region, 0) + int(fault.params["offset"])
        clock.write_text(f"{self.clock_jumps[region]:+d}\n", encoding="utf-8")

        def heal() -> None:
            self.clock_jumps[region] -= int(fault.params["offset"])
            clock.write_text(f"{self.clock_jumps[region]:+d}\n", encoding="utf-8")

        return heal

    # -- client operations ----------------------------------------------------------
    async def _failover(self, fault: Fault, via: str) -> None:
        primary = self.primary()
        if primary is None:
            raise OSError("no primary known")
        candidates = [r for r in REGIONS if r != primary]
        promote = candidates[fault.pick % len(candidates)]
        await operator_failover(self.cluster, self.history, via, promote, primary)

    # -- healing --------------------------------------------------------------------
    def heal_all(self) -> None:
        """Undo whatever is still applied (links, proxies, clocks, fills, pauses)."""
        for pair in [p for p, n in self.link_down.items() if n > 0]:
            netns.set_link(*pair, up=True)
            self.link_down[pair] = 0
        for link in [p for p, n in self.one_way.items() if n > 0]:
            netns.set_one_way(*link, blocked=False)
            self.one_way[link] = 0
        for region in REGIONS:
            for peer in REGIONS:
                if peer != region:
                    change = {"latency": 0, "bandwidth": 0, "stall": False, "half_open": False}
                    try:
                        self._proxy_sync(region, peer, change)
                    except (OSError, TimeoutError):
                        pass
            self.cluster.clock_file(region).write_text("+0\n", encoding="utf-8")
            for fill in self.cluster.mount_dir(region).glob("chaos-fill-*"):
                fill.unlink(missing_ok=True)
            self.cluster.daemons[region].signal(signal.SIGCONT)
        self.history.append("event", event="heal")


async def operator_failover(
    cluster: Cluster, history: History, via: str, promote: str, demote: str
) -> dict[str, Any]:
    """``POST /v1/failover`` to ``via``; invoke and outcome (ok/fail/info) go to the history."""
    body = {"tier": "warm", "promote": promote, "demote": demote, "dry_run": False}
    history.append("op", op="failover", phase="invoke", via=via, **body)
    headers = {"Authorization": f"Bearer {cluster.token}"}
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{admin_url(via)}/v1/failover",
                json=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=10),
            ) as resp:
                doc = await resp.json(content_type=None)
                status = resp.status
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        # Outcome unknown (Jepsen's :info): the promotion may or may not have committed.
        return history.append(
            "op", op="failover", phase="info", via=via, error=type(exc).__name__, **body
        )
    phase = "ok" if status == 200 else "fail"
    return history.append(
        "op", op="failover", phase=phase, via=via, status=status, response=doc, **body
    )


def _pair(a: int, b: int) -> tuple[int, int]:
    """A link's key: its two nodes, lower first (so overlapping faults share a count)."""
    return (min(a, b), max(a, b))


def _fill(path: Any) -> int:
    """Write zeros until the filesystem is full; returns the bytes written."""
    written = 0
    block = b"\0" * (1 << 20)
    # Unbuffered: every write reaches the filesystem now, and close() has nothing left to fail on.
    with open(path, "wb", buffering=0) as handle:
        while True:
            try:
                written += handle.write(block) or 0
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return written
