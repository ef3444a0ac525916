"""The run's report: ``report.json``, ``timeline.png`` and the table printed at the end.

``timeline.png`` (matplotlib) shows a run instead of making people read it,
like Jepsen's timeline and latency graphs: four panels sharing the time axis
— hot lag, warm lag, ingest rate (records/s of each region's own feed) and
the warm epoch each region reports (markers: ● primary, ○ replica) — with
every fault drawn as a shaded span (one colour per kind, labelled at the top)
and the heal moment as a vertical line.

Resource handling: the figure is closed after saving (no global state kept).
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from tests.chaos.checker import Verdict
from tests.chaos.cluster import HOT_SLO, REGIONS, WARM_SLO
from tests.chaos.history import read_history

COLOURS = {
    "kill": "#d62728",
    "kill_failpoint": "#8c1c13",
    "pause": "#9467bd",
    "pause_primary": "#5b2c83",
    "isolate": "#1f77b4",
    "isolate_etcd": "#17becf",
    "split": "#2ca02c",
    "slow_link": "#bcbd22",
    "stall_link": "#ff7f0e",
    "half_open": "#e377c2",
    "one_way": "#aec7e8",
    "enospc": "#7f7f7f",
    "clock_jump": "#8c564b",
    "failover": "#000000",
}


def fault_spans(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each fault's (kind, target, start, end) from its start and end entries."""
    starts: dict[int, dict[str, Any]] = {}
    spans = []
    for entry in history:
        if entry.get("kind") != "fault":
            continue
        if entry["phase"] == "start":
            starts[entry["id"]] = entry
        elif entry["phase"] == "end" and entry["id"] in starts:
            start = starts.pop(entry["id"])
            spans.append(
                {
                    "id": entry["id"],
                    "fault": entry["fault"],
                    "target": start.get("target"),
                    "start": start["mono"],
                    "end": entry["mono"],
                    "error": entry.get("error"),
                }
            )
    return spans


def epoch_changes(history: list[dict[str, Any]]) -> dict[str, int]:
    """Warm epoch changes seen in etcd: by an acknowledged operator failover, or not (automatic
    failovers, and operator requests whose answer was lost)."""
    operator = {
        (e.get("response") or {}).get("epoch")
        for e in history
        if e.get("kind") == "op" and e.get("phase") == "ok"
    }
    epochs = [e["epoch"] for e in history if e.get("event") == "etcd_tier"][1:]
    by_operator = sum(1 for epoch in epochs if epoch in operator)
    return {"total": len(epochs), "operator": by_operator, "automatic": len(epochs) - by_operator}


def max_overlap(spans: list[dict[str, Any]]) -> int:
    """The most faults in effect at one moment."""
    edges = sorted([(s["start"], 1) for s in spans] + [(s["end"], -1) for s in spans])
    current = best = 0
    for _, step in edges:
        current += step
        best = max(best, current)
    return best


def write_report(out: Path, verdicts: list[Verdict]) -> None:
    """``report.json`` (verdicts, fault counts, timings) and ``timeline.png``."""
    history = list(read_history(out / "history.jsonl"))
    run = (
        json.loads((out / "run.json").read_text(encoding="utf-8"))
        if (out / "run.json").is_file()
        else {}
    )
    spans = fault_spans(history)
    counts: dict[str, int] = defaultdict(int)
    for span in spans:
        counts[span["fault"]] += 1
    start = next((e for e in history if e.get("event") == "start"), {})
    report = {
        "seed": start.get("seed"),
        "duration": start.get("duration"),
        "passed": all(v.passed for v in verdicts),
        "faults_injected": len(spans),
        "faults_by_kind": dict(sorted(counts.items())),
        "fault_errors": [s for s in spans if s.get("error")],
        "failover_ops": [
            e for e in history if e.get("kind") == "op" and e.get("phase") != "invoke"
        ],
        "epoch_changes": epoch_changes(history),
        "max_overlapping_faults": max_overlap(spans),
        "timings": {
            k: run.get(k) for k in ("heal", "ready", "hot", "warm", "converged", "seconds")
        },
        "unexpected_exits": run.get("unexpected_exits", []),
        "invariants": [v.to_json() for v in verdicts],
    }
    (out / "report.json").write_text(
        json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8"
    )
    samples_path = out / "samples.jsonl"
    if samples_path.is_file():
        samples = [
            json.loads(x) for x in samples_path.read_text(encoding="utf-8").splitlines() if x
        ]
        plot_timeline(out / "timeline.png", samples, spans, run.get("heal"), report)


def plot_timeline(
    path: Path,
    samples: list[dict[str, Any]],
    spans: list[dict[str, Any]],
    heal: float | None,
    report: dict[str, Any],
) -> None:
    """Draw the four panels with fault spans; save as PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    by_region: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for sample in samples:
        by_region[sample["region"]].append(sample)
    fig, axes = plt.subplots(4, 1, figsize=(16, 11), sharex=True)
    titles = ("hot lag (s)", "warm lag (s)", "ingest rate (records/s)", "warm epoch (● primary)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    for region in REGIONS:
        rows = [s for s in by_region.get(region, []) if s.get("ok")]
        t = [s["mono"] for s in rows]
        axes[0].plot(t, [s.get("hot_lag") or 0 for s in rows], label=region, lw=1)
        axes[1].plot(t, [s.get("warm_lag") or 0 for s in rows], label=region, lw=1)
        rate_t, rate = [], []
        for a, b in itertools.pairwise(rows):
            if (
                a.get("records") is not None
                and b.get("records") is not None
                and b["mono"] > a["mono"]
            ):
                rate_t.append(b["mono"])
                rate.append(max(0.0, (b["records"] - a["records"]) / (b["mono"] - a["mono"])))
        axes[2].plot(rate_t, rate, label=region, lw=1)
        epochs = [
            (s["mono"], s.get("epoch"), s.get("role")) for s in rows if s.get("epoch") is not None
        ]
        line = axes[3].plot([e[0] for e in epochs], [e[1] for e in epochs], lw=0.8, label=region)[0]
        primary = [(m, e) for m, e, role in epochs if role == 1]
        axes[3].scatter(
            [p[0] for p in primary], [p[1] for p in primary], s=8, color=line.get_color()
        )
        down = [s["mono"] for s in by_region.get(region, []) if not s.get("ok")]
        axes[3].scatter(down, [0] * len(down), marker="x", s=10, color=line.get_color())
    axes[0].axhline(HOT_SLO, color="grey", ls=":", lw=1)
    axes[1].axhline(WARM_SLO, color="grey", ls=":", lw=1)
    lanes: dict[str, int] = {}
    for span in spans:
        colour = COLOURS.get(span["fault"], "#333333")
        end = max(span["end"], span["start"] + 0.5)
        for ax in axes:
            ax.axvspan(span["start"], end, color=colour, alpha=0.12, lw=0)
        lane = lanes.setdefault(span["fault"], len(lanes))
        axes[0].annotate(
            span["fault"],
            xy=(span["start"], 1.0 + 0.03 * (lane % 6)),
            xycoords=("data", "axes fraction"),
            fontsize=6,
            color=colour,
            rotation=0,
        )
    if heal is not None:
        for ax in axes:
            ax.axvline(heal, color="black", lw=1.2)
    axes[0].legend(loc="upper right", fontsize=8)
    axes[-1].set_xlabel("seconds since start (monotonic)")
    verdict = "PASS" if report["passed"] else "FAIL"
    fig.suptitle(
        f"chaos run seed {report['seed']} — {report['faults_injected']} faults — {verdict}",
        y=0.995,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def print_table(verdicts: list[Verdict]) -> None:
    """The final table: one line per invariant, then the evidence of each failure."""
    width = max(len(v.name) for v in verdicts)
    print(f"\n{'invariant':<{width}}  result  checked")
    print(f"{'-' * width}  ------  -------")
    for verdict in verdicts:
        mark = "pass" if verdict.passed else "FAIL"
        print(f"{verdict.name:<{width}}  {mark:<6}  {verdict.checked}")
    for verdict in verdicts:
        if not verdict.passed:
            print(f"\n{verdict.name}: {len(verdict.evidence)} problem(s), first ones:")
            for item in verdict.evidence[:5]:
                print(f"  {json.dumps(item, default=str)[:400]}")
