"""``cryptorun replication simulate``: show the plan a pass would run; copy nothing."""

from __future__ import annotations

from typing import Any, TextIO

from cryptorun_daemon.cli.client import AdminClient
from cryptorun_daemon.cli.render import print_json, table
from cryptorun_daemon.replication.rules import TimeRange


async def run_simulate(
    client: AdminClient,
    *,
    src: str,
    dst: str,
    tier: str,
    window: str,
    strict: bool,
    as_json: bool,
    out: TextIO,
) -> int:
    """Ask the daemon for the plan and print it (table, or one JSON document).

    Exit code 0 when a plan was made (and, under ``strict``, nothing in the
    window is unsealed, crossing the window, in the future or fenced); 1 when
    the plan could not be made (peer unreachable) or strict found problems.
    Error handling: a malformed window raises ``UsageError`` before any
    request; daemon refusals raise ``AdminClientError``.
    """
    TimeRange.parse(window)  # fail fast, with the same message the daemon would give
    doc = await client.request(
        "POST",
        "/v1/replication/simulate",
        body={"from": src, "to": dst, "tier": tier, "window": window, "strict": strict},
    )
    if as_json:
        print_json(doc, out)
    else:
        out.write(render_plan(doc) + "\n")
    return 0 if doc.get("ok", False) and not doc.get("reason") else 1


def render_plan(doc: dict[str, Any]) -> str:
    summary = doc.get("summary", {})
    lines = [
        f"DRY RUN  {doc.get('tier')}  {doc.get('from')} -> {doc.get('to')}  "
        f"window {doc.get('window')}  strict={str(doc.get('strict', False)).lower()}",
    ]
    if doc.get("reason"):
        lines.append(f"no plan: {doc['reason']}")
        return "\n".join(lines)
    steps = doc.get("steps", [])
    if steps:
        lines.append("")
        lines.append(
            table(
                ["#", "window", "partitions", "files", "bytes", "actions", "validators"],
                [
                    [
                        i,
                        s.get("window"),
                        len(s.get("partitions", [])),
                        s.get("files"),
                        _human_bytes(s.get("bytes", 0)),
                        _actions(s.get("partitions", [])),
                        s.get("validators") or "-",
                    ]
                    for i, s in enumerate(steps, start=1)
                ],
            )
        )
    lines.append("")
    lines.append(
        f"would copy {summary.get('partitions', 0)} partition(s), {summary.get('files', 0)} "
        f"file(s), {_human_bytes(summary.get('bytes', 0))} in {summary.get('steps', 0)} step(s); "
        f"{summary.get('in_sync', 0)} already in sync; nothing was transferred"
    )
    skipped = doc.get("skipped", [])
    if skipped:
        lines.append("")
        lines.append("left out (point-in-time rule and fencing):")
        lines.append(table(["partition", "why"], [[s["path"], s["why"]] for s in skipped]))
    problems = doc.get("problems", [])
    if doc.get("strict") and problems:
        lines.append("")
        lines.append("STRICT: refused: " + "; ".join(problems))
    return "\n".join(lines)


def _actions(partitions: list[dict[str, Any]]) -> str:
    counts: dict[str, int] = {}
    for p in partitions:
        counts[p.get("action", "copy")] = counts.get(p.get("action", "copy"), 0) + 1
    return ",".join(f"{n} {action}" for action, n in sorted(counts.items()))


def _human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"
