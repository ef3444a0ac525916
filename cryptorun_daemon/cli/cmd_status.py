"""``cryptorun replication status``: what a daemon says about itself."""

from __future__ import annotations

from typing import Any, TextIO

from cryptorun_daemon.cli.client import AdminClient
from cryptorun_daemon.cli.cmd_failover import render_peer_health
from cryptorun_daemon.cli.render import print_json, table


async def run_status(
    client: AdminClient, *, tier: str | None, region: str | None, as_json: bool, out: TextIO
) -> int:
    params = {k: v for k, v in (("tier", tier), ("region", region)) if v}
    doc = await client.request("GET", "/v1/status", params=params)
    if as_json:
        print_json(doc, out)
    else:
        out.write(render_status(doc) + "\n")
    return 0


def render_status(doc: dict[str, Any]) -> str:
    """Human summary: daemon line, per-tier role and lag tables, hot origins, quarantine."""
    reasons = "; ".join(doc.get("not_ready_reasons", []))
    ready = "ready" if doc.get("ready") else f"NOT READY: {reasons}"
    parts = [f"region {doc.get('region')}  version {doc.get('version')}  {ready}"]
    for tier, info in doc.get("tiers", {}).items():
        header = f"\n[{tier}]"
        if "primary" in info:
            header += f" primary={info.get('primary')} epoch={info.get('epoch')}"
        if "role" in info:
            header += f" this region: {info.get('role')}"
        parts.append(header)
        if info.get("state_problem"):
            parts.append(f"  STATE PROBLEM: {info['state_problem']}")
        if info.get("write_refusal"):
            parts.append(f"  NOT SEALING: {info['write_refusal']}")
        rules = info.get("rules", [])
        if rules:
            parts.append(
                table(
                    ["mode", "from", "to", "lag slo s"],
                    [[r["mode"], r["from"], r["to"], r["lag_slo_seconds"]] for r in rules],
                )
            )
        sources = info.get("sources", {})
        if sources:
            parts.append(
                table(
                    ["source", "lag s", "slo s", "pending", "last success", "last error"],
                    [
                        [
                            name,
                            s.get("lag_seconds"),
                            s.get("lag_slo_seconds"),
                            s.get("pending_partitions"),
                            s.get("last_success"),
                            s.get("last_error"),
                        ]
                        for name, s in sorted(sources.items())
                    ],
                )
            )
        # The hot component reports stream positions under tiers.hot.stream.origins.
        origins = info.get("stream", {}).get("origins") or info.get("origins", {})
        if origins:
            parts.append(
                table(
                    ["origin", "replid", "head seq", "applied seq", "connected", "last gap"],
                    [
                        [
                            name,
                            o.get("replid"),
                            o.get("head_seq"),
                            o.get("applied_seq"),
                            o.get("connected"),
                            o.get("last_gap"),
                        ]
                        for name, o in sorted(origins.items())
                    ],
                )
            )
    peers = render_peer_health(doc)
    if peers:
        parts.append(f"\npeers (state backend: {doc.get('state_backend', '-')})\n{peers}")
    quarantine = doc.get("quarantine")
    if quarantine:
        parts.append(
            "\n"
            + table(
                ["quarantine tier", "files", "flagged rows"],
                [[t, c.get("files"), c.get("rows")] for t, c in sorted(quarantine.items())],
            )
        )
    workers = doc.get("workers", {})
    if workers:
        parts.append(
            "\n"
            + table(
                ["worker", "running", "restarts", "last error"],
                [
                    [n, w.get("running"), w.get("restarts"), w.get("last_error")]
                    for n, w in workers.items()
                ],
            )
        )
    return "\n".join(parts)
