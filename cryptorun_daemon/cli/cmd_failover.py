"""``cryptorun replication failover``: promote one region, demote another, show the topology.

The daemon does the work (``POST /v1/failover``); this prints its answer as a
before/after table in the spirit of ``patronictl list`` (region, role, epoch,
lag, last success, reachable), then the actions and any warnings. ``--json``
prints the API document unchanged. A refusal (400/409/503) surfaces as
:class:`~cryptorun_daemon.errors.AdminClientError`, which ``main`` maps to exit 1.
"""

from __future__ import annotations

from typing import Any, TextIO

from cryptorun_daemon.cli.client import AdminClient
from cryptorun_daemon.cli.render import print_json, table


async def run_failover(
    client: AdminClient,
    *,
    tier: str,
    promote: str,
    demote: str,
    dry_run: bool,
    as_json: bool,
    out: TextIO,
    expected_epoch: int | None = None,
) -> int:
    """Ask the daemon to fail ``tier`` over from ``demote`` to ``promote``; 0 when done."""
    body: dict[str, Any] = {"tier": tier, "promote": promote, "demote": demote, "dry_run": dry_run}
    if expected_epoch is not None:
        body["expected_epoch"] = expected_epoch
    doc = await client.request("POST", "/v1/failover", body=body)
    if as_json:
        print_json(doc, out)
    else:
        out.write(render_failover(doc) + "\n")
    return 0


def render_failover(doc: dict[str, Any]) -> str:
    """Headline, before and after topology tables, numbered actions, warnings."""
    before, after = doc.get("before", {}), doc.get("after", {})
    if doc.get("dry_run"):
        headline = (
            f"DRY RUN: failover of {doc.get('tier')} would promote {doc.get('primary')} "
            f"and demote {doc.get('previous_primary')} (epoch {before.get('epoch')} -> "
            f"{doc.get('epoch')}); nothing was changed"
        )
    else:
        headline = (
            f"failover of {doc.get('tier')} done: {doc.get('primary')} is primary at "
            f"epoch {doc.get('epoch')} (was {doc.get('previous_primary')} at epoch "
            f"{before.get('epoch')})"
        )
    parts = [headline, f"\nbefore (epoch {before.get('epoch')}):", topology_table(before)]
    label = "after, planned" if doc.get("dry_run") else "after"
    parts += [f"\n{label} (epoch {after.get('epoch')}):", topology_table(after), "\nactions:"]
    for number, action in enumerate(doc.get("actions", []), start=1):
        target = f" {action['target']}" if action.get("target") else ""
        parts.append(
            f"  {number}. [{action.get('status')}] {action.get('action')}{target}: "
            f"{action.get('detail')}"
        )
    warnings = doc.get("warnings", [])
    if warnings:
        parts.append("\nwarnings:")
        parts += [f"  ! {w}" for w in warnings]
    return "\n".join(parts)


def topology_table(topology: dict[str, Any]) -> str:
    """One row per region: role, epoch it acknowledges, lag to the primary, last success."""
    rows = []
    for region, row in sorted(topology.get("regions", {}).items()):
        reachable = row.get("reachable")
        rows.append(
            [
                region,
                row.get("role"),
                row.get("epoch"),
                row.get("lag_seconds"),
                row.get("last_success"),
                {True: "yes", False: "NO", None: "-"}[reachable],
            ]
        )
    return table(["region", "role", "epoch", "lag s", "last success", "reachable"], rows)


def render_peer_health(doc: dict[str, Any]) -> str:
    """The ``peers_health`` part of ``/v1/status`` as a table (for ``replication status``)."""
    health = doc.get("peers_health") or {}
    if not health:
        return ""
    return table(
        ["peer", "up", "reachable", "last ok", "down since", "last error"],
        [
            [
                peer,
                h.get("up"),
                h.get("reachable"),
                h.get("last_ok"),
                h.get("down_since"),
                h.get("last_error"),
            ]
            for peer, h in sorted(health.items())
        ],
    )
