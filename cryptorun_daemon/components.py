"""The daemon's subsystems, in start order (stopped in reverse)."""

from __future__ import annotations

from cryptorun_daemon.config import Tier
from cryptorun_daemon.data.quarantine_status import QuarantineStatus
from cryptorun_daemon.data.validate.batch import partition_validator
from cryptorun_daemon.failover.component import FailoverComponent
from cryptorun_daemon.hot.component import HotComponent
from cryptorun_daemon.reader.http import ReaderComponent
from cryptorun_daemon.replication.component import WarmColdComponent
from cryptorun_daemon.runtime.component import Component, DaemonContext
from cryptorun_daemon.storage.bucket_sync import ObjectStoreComponent


def build_components(ctx: DaemonContext) -> list[Component]:
    """Construct every subsystem for this region's daemon.

    Order matters: failover starts first so the others can ask it for the
    current primary and fencing epoch of a tier; it also keeps the storage
    fence (``_state/fence/``) that every seal and replicated manifest is
    checked against.
    """
    config = ctx.config
    failover = FailoverComponent(ctx)

    def primary_of(tier: Tier) -> str | None:
        state = failover.current(tier)
        if state is not None:
            return state.primary
        # Before the first snapshot: the primary the config names (None for hot).
        return config.bootstrap_primary(tier)

    validate = partition_validator(
        region=config.region,
        config=config.validation,
        metrics=ctx.metrics,
        storage_root=config.storage.root,
    )
    warm_cold = WarmColdComponent(
        ctx,
        validators=[validate],
        epoch_provider=failover.epoch,
        primary_provider=primary_of,
        peer_reporter=failover.report_peer,
        # Only the current primary serves as a source; the others answer 409 fenced.
        serve_guard=failover.fence.serve_refusal,
        # A file-store region seals only once it has confirmed its roles with its peers.
        write_refusal=failover.write_refusal,
        # Links follow the topology: every failover change re-plans them.
        subscribe=lambda changed: failover.add_listener(lambda _new, _old: changed()),
    )
    # The warm primary seals hot data into warm partitions, stamped with its epoch.
    hot = HotComponent(
        ctx,
        is_warm_primary=lambda: failover.is_primary("warm"),
        epoch=lambda: failover.epoch("warm"),
        # No sealing round on a role not yet confirmed (it would act as replica).
        role_settled=lambda: (
            not failover.not_ready_reasons() and failover.write_refusal("warm") is None
        ),
        # What it seals gets the row checks replicas run on each pulled file, never
        # strict: the primary's own journal is not refused, its bad rows are listed.
        seal_validator=partition_validator(
            region=config.region,
            config=config.validation,
            metrics=ctx.metrics,
            storage_root=config.storage.root,
            strict=False,
        ),
    )
    # Quarantine counts for /v1/status, recounted off the event loop.
    quarantine = QuarantineStatus(ctx)
    # GET /v1/read: research reads of this region's storage, streamed as Arrow IPC.
    reader = ReaderComponent(lambda: ctx.config.storage.root)
    # [storage.tiers.*]: committed warm/cold partitions follow into the tier's bucket.
    object_store = ObjectStoreComponent(
        ctx, epoch_provider=failover.epoch, primary_provider=primary_of
    )
    return [failover, warm_cold, hot, quarantine, reader, object_store]
