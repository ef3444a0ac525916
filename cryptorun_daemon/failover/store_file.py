"""The embedded state store: JSON files under ``{storage.root}/_state/``.

Layout::

    _state/
        roles.json       tiers (primary, epoch, history) and drained regions
        liveness.json    last heartbeat per region
        .lock            flock(2) target; never renamed, never holds data

Why this is safe with a CLI and a daemon writing at once, in different
processes: every read-modify-write happens under an exclusive ``flock`` on
``.lock`` (a separate file, because the data files are replaced by rename and a
lock on a replaced inode would protect nothing). The new content is written to
a temporary file in the same folder, fsynced, renamed over the old file and the
folder is fsynced, so a crash leaves either the old or the new file, never a
torn one, and readers without the lock always see a whole document.

Limits (see docs/FAILOVER_STORES.md): this coordinates processes on one host
(or one shared filesystem with working flock). Liveness compares heartbeat
wall times with ``lease_ttl``, so it is only as good as the clocks involved.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final, TypeVar

import structlog

from cryptorun_daemon.config import ActivePassiveTier
from cryptorun_daemon.errors import StateStoreError
from cryptorun_daemon.failover.roles import (
    Snapshot,
    TierState,
    require_active_passive,
    require_region,
)
from cryptorun_daemon.failover.store import StateStore
from cryptorun_daemon.runtime.clock import Clock, SystemClock
from cryptorun_daemon.storage.atomic import atomic_write_bytes
from cryptorun_daemon.timefmt import format_rfc3339, parse_rfc3339

T = TypeVar("T")
log = structlog.get_logger("cryptorun.failover.store_file")

STATE_DIR: Final = "_state"
ROLES_FILE: Final = "roles.json"
LIVENESS_FILE: Final = "liveness.json"
LOCK_FILE: Final = ".lock"
DOC_VERSION: Final = 1


@dataclass(frozen=True)
class _RolesDoc:
    """``roles.json`` parsed: tier states and drained regions (region → since)."""

    tiers: dict[ActivePassiveTier, TierState]
    drained: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": DOC_VERSION,
            "tiers": {tier: self.tiers[tier].to_json() for tier in sorted(self.tiers)},
            "drained": dict(sorted(self.drained.items())),
        }


class FileStateStore(StateStore):
    """State in local JSON files, serialised across processes by ``flock``.

    ``lock_timeout`` bounds how long a write waits for another process's lock
    before failing with :class:`StateStoreError` (a hung holder must not hang
    the daemon or an operator's CLI forever). ``poll_interval`` is how often
    :meth:`changes` re-reads the files.

    Resource handling: holds no open file between calls; blocking file work
    runs in the default thread pool so the event loop never waits on a lock.
    """

    backend = "file"

    def __init__(
        self,
        storage_root: Path | str,
        *,
        lease_ttl: float = 10.0,
        clock: Clock | None = None,
        poll_interval: float = 0.5,
        lock_timeout: float = 10.0,
    ) -> None:
        self.directory = Path(storage_root) / STATE_DIR
        self.lease_ttl = lease_ttl
        self.poll_interval = poll_interval
        self.lock_timeout = lock_timeout
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._closed = False

    @property
    def roles_path(self) -> Path:
        return self.directory / ROLES_FILE

    @property
    def liveness_path(self) -> Path:
        return self.directory / LIVENESS_FILE

    # --- StateStore: tiers -----------------------------------------------------------

    async def get(self, tier: str) -> TierState:
        checked = require_active_passive(tier)
        doc = await asyncio.to_thread(self._read_roles)
        state = doc.tiers.get(checked)
        if state is None:
            raise StateStoreError(f"tier {checked} has no state yet in {self.roles_path}")
        return state

    async def initialise(self, tier: str, primary: str) -> TierState:
        checked = require_active_passive(tier)
        require_region(primary)

        def change(doc: _RolesDoc) -> tuple[TierState, _RolesDoc | None]:
            existing = doc.tiers.get(checked)
            if existing is not None:
                return existing, None
            state = TierState.bootstrap(checked, primary, at=self._clock.now())
            return state, _RolesDoc(tiers={**doc.tiers, checked: state}, drained=doc.drained)

        return await asyncio.to_thread(self._update_roles, change)

    async def promote(
        self,
        tier: str,
        promote: str,
        demote: str,
        expected_epoch: int | None,
        *,
        at: datetime | None = None,
    ) -> TierState:
        checked = require_active_passive(tier)

        def change(doc: _RolesDoc) -> tuple[TierState, _RolesDoc | None]:
            current = doc.tiers.get(checked)
            if current is None:
                raise StateStoreError(f"tier {checked} has no state yet in {self.roles_path}")
            # Validated against the state read under the lock: this is the CAS.
            state = current.promoted(
                promote,
                demote,
                expected_epoch=expected_epoch,
                at=at or self._clock.now(),
            )
            return state, _RolesDoc(tiers={**doc.tiers, checked: state}, drained=doc.drained)

        state = await asyncio.to_thread(self._update_roles, change)
        log.info(
            "tier_promoted",
            tier=checked,
            primary=state.primary,
            demoted=demote,
            epoch=state.epoch,
            store=self.backend,
        )
        return state

    # --- StateStore: regions ------------------------------------------------------------

    async def set_drained(self, region: str, drained: bool) -> None:
        require_region(region)

        def change(doc: _RolesDoc) -> tuple[None, _RolesDoc | None]:
            if drained == (region in doc.drained):
                return None, None
            marks = dict(doc.drained)
            if drained:
                marks[region] = format_rfc3339(self._clock.now())
            else:
                del marks[region]
            return None, _RolesDoc(tiers=doc.tiers, drained=marks)

        await asyncio.to_thread(self._update_roles, change)

    async def drained_regions(self) -> frozenset[str]:
        doc = await asyncio.to_thread(self._read_roles)
        return frozenset(doc.drained)

    async def heartbeat(self, region: str) -> None:
        require_region(region)
        await asyncio.to_thread(self._write_heartbeat, region, format_rfc3339(self._clock.now()))

    async def alive_regions(self) -> frozenset[str]:
        beats = await asyncio.to_thread(self._read_liveness)
        return self._alive(beats)

    # --- StateStore: observing ------------------------------------------------------------

    async def snapshot(self) -> Snapshot:
        doc = await asyncio.to_thread(self._read_roles)
        beats = await asyncio.to_thread(self._read_liveness)
        return Snapshot(tiers=doc.tiers, drained=frozenset(doc.drained), alive=self._alive(beats))

    async def changes(self) -> AsyncGenerator[Snapshot, None]:
        """Poll the files every ``poll_interval`` and yield each new snapshot.

        Error handling: an unreadable or corrupt file is logged and retried
        with a backoff capped at ten poll intervals; the iterator keeps going.
        Resource handling: opens files only while reading them.
        """
        last: Snapshot | None = None
        failures = 0
        while not self._closed:
            try:
                current = await self.snapshot()
            except StateStoreError as exc:
                failures += 1
                log.warning("state_poll_failed", error=str(exc), failures=failures)
                await asyncio.sleep(self.poll_interval * min(10, 2 ** min(failures, 4)))
                continue
            failures = 0
            if current != last:
                last = current
                yield current
            await asyncio.sleep(self.poll_interval)

    async def close(self) -> None:
        self._closed = True

    # --- blocking helpers (run in a worker thread) ------------------------------------------

    def _alive(self, beats: dict[str, float]) -> frozenset[str]:
        now = self._clock.time()
        return frozenset(region for region, at in beats.items() if now - at < self.lease_ttl)

    def _update_roles(self, change: Callable[[_RolesDoc], tuple[T, _RolesDoc | None]]) -> T:
        """Read ``roles.json``, apply ``change`` and write the result, all under the lock.

        ``change`` returns ``(result, new_doc)``; ``new_doc`` ``None`` means
        nothing to write. Exceptions from ``change`` propagate and leave the
        file untouched.
        """
        with self._locked():
            doc = self._read_roles()
            result, new_doc = change(doc)
            if new_doc is not None:
                self._write_json(self.roles_path, new_doc.to_json())
            return result

    def _write_heartbeat(self, region: str, at: str) -> None:
        with self._locked():
            raw = self._load_json(self.liveness_path)
            beats = self._parse_liveness_raw(raw)
            beats[region] = at
            doc = {"version": DOC_VERSION, "heartbeats": dict(sorted(beats.items()))}
            self._write_json(self.liveness_path, doc)

    def _read_roles(self) -> _RolesDoc:
        raw = self._load_json(self.roles_path)
        if raw is None:
            return _RolesDoc(tiers={}, drained={})
        where = str(self.roles_path)
        if not isinstance(raw, dict) or raw.get("version") != DOC_VERSION:
            raise StateStoreError(f"{where}: not a version {DOC_VERSION} roles document")
        tiers_raw = raw.get("tiers", {})
        drained_raw = raw.get("drained", {})
        if not isinstance(tiers_raw, dict) or not isinstance(drained_raw, dict):
            raise StateStoreError(f"{where}: tiers and drained must be JSON objects")
        tiers: dict[ActivePassiveTier, TierState] = {}
        for name, value in tiers_raw.items():
            try:
                state = TierState.from_json(value)
            except StateStoreError as exc:
                raise StateStoreError(f"{where}: tiers.{name}: {exc}") from None
            if state.tier != name:
                raise StateStoreError(f"{where}: tiers.{name} holds tier {state.tier}")
            tiers[state.tier] = state
        drained: dict[str, str] = {}
        for region, since in drained_raw.items():
            if not isinstance(since, str):
                raise StateStoreError(f"{where}: drained.{region} must be a timestamp")
            drained[str(region)] = since
        return _RolesDoc(tiers=tiers, drained=drained)

    def _read_liveness(self) -> dict[str, float]:
        beats = self._parse_liveness_raw(self._load_json(self.liveness_path))
        try:
            return {region: parse_rfc3339(at).timestamp() for region, at in beats.items()}
        except ValueError as exc:
            raise StateStoreError(f"{self.liveness_path}: {exc}") from None

    def _parse_liveness_raw(self, raw: Any) -> dict[str, str]:
        if raw is None:
            return {}
        if (
            not isinstance(raw, dict)
            or raw.get("version") != DOC_VERSION
            or not isinstance(raw.get("heartbeats"), dict)
        ):
            raise StateStoreError(f"{self.liveness_path}: not a version {DOC_VERSION} document")
        beats: dict[str, str] = raw["heartbeats"]
        return beats

    def _load_json(self, path: Path) -> Any:
        """The parsed file, or ``None`` when it does not exist yet."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateStoreError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise StateStoreError(f"{path}: corrupt JSON: {exc}") from None

    def _write_json(self, path: Path, doc: dict[str, Any]) -> None:
        """Replace ``path`` atomically and durably (temp file, fsync, rename, fsync folder)."""
        payload = (json.dumps(doc, indent=2, sort_keys=False) + "\n").encode("utf-8")
        try:
            atomic_write_bytes(path, payload)
        except OSError as exc:
            raise StateStoreError(f"{path}: cannot write: {exc.strerror or exc}") from exc

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the exclusive cross-process lock on ``_state/.lock``.

        flock locks belong to the open file description, so two threads of one
        process that each open the file exclude each other just like two
        processes do.

        Error handling: :class:`StateStoreError` when the folder cannot be
        created or the lock is not acquired within ``lock_timeout``.
        Resource handling: the descriptor is closed (releasing the lock) on
        every exit path, including exceptions.
        """
        lock_path = self.directory / LOCK_FILE
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StateStoreError(f"{lock_path}: cannot open: {exc.strerror or exc}") from exc
        try:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise StateStoreError(
                            f"{lock_path}: still locked by another writer after "
                            f"{self.lock_timeout:g}s"
                        ) from None
                    time.sleep(0.005)
            yield
        finally:
            # Closing the descriptor releases the flock.
            os.close(fd)
