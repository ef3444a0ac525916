"""The checker: reads a finished run and decides, per invariant, pass or fail with evidence.

Inputs (all in the run directory, nothing asked of the daemons' own view of
themselves except where stated): ``history.jsonl`` (faults, failover
operations, etcd tier changes, exits), ``samples.jsonl`` (the observer's
scrapes), ``run.json`` (settle times, listings), and ``storage/REGION/`` — each
region's storage root copied after the daemons stopped (hot journal segments,
warm/cold partitions, ``_divergent/``).

Invariants (:data:`INVARIANTS`), grouped as in issue 14:

- hot: ``hot.complete`` every record durable at its origin (in the origin's
  own journal) is in every other region's journal exactly once, or inside a
  gap that region recorded; ``hot.no_conflict`` no (origin, seq) appears with
  two different byte strings anywhere; ``hot.gaps_sealed`` every recorded gap's
  records lie in sealed warm partitions at the recording region (the hour
  partition of each record is sealed there and its window covers the record);
- warm/cold: ``warm.identical`` every sealed partition is byte-identical (all
  files, manifest included) in every region, after convergence; the
  ``_quarantine.json`` sidecar, which each region writes for itself, must agree
  on every finding but not on who validated it and when;
  ``warm.writer_was_primary`` every manifest's (writer, epoch) names the
  region etcd made primary at that epoch; ``warm.fence`` nothing moved to
  ``_divergent/`` is also in a reader's view with the same bytes;
- failover: ``failover.one_primary`` at most one region claims the warm
  primary per epoch (etcd history and every scrape); ``failover.epochs_grow``
  no region's epoch and no etcd epoch ever goes down; ``failover.acked_visible``
  every acknowledged failover is reflected (epoch ≥ its epoch) in every region
  after healing, and all regions agree with etcd;
- liveness: ``liveness.ready`` every daemon ready after settling;
  ``liveness.no_restart_loop`` no unexpected exit after healing, and none
  repeated (≥ 3 in 60 s) at any time; ``liveness.lag_recovered`` hot lag under
  its SLO within 2 × SLO of healing, warm likewise;
- ``fs.confined`` nothing written outside any ``storage.root`` (the daemons'
  working directories, the tmpfs mounts beside the roots, the config folder).

Error handling: an unreadable input makes its invariants fail with the
reason as evidence, never pass silently.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.chaos.cluster import BOOTSTRAP_PRIMARY, HOT_SLO, PARTITION_LENGTH, REGIONS, WARM_SLO
from tests.chaos.history import read_history
from tests.chaos.journal_archive import ARCHIVE_DIR

EVIDENCE_LIMIT = 20
INVARIANTS = (
    "hot.complete",
    "hot.no_conflict",
    "hot.gaps_sealed",
    "warm.identical",
    "warm.writer_was_primary",
    "warm.fence",
    "failover.one_primary",
    "failover.epochs_grow",
    "failover.acked_visible",
    "liveness.ready",
    "liveness.no_restart_loop",
    "liveness.lag_recovered",
    "fs.confined",
)


@dataclass
class Verdict:
    """One invariant's outcome: what was checked and, on failure, the first problems found."""

    name: str
    passed: bool
    checked: str
    evidence: list[Any] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "checked": self.checked,
            "evidence": self.evidence[:EVIDENCE_LIMIT],
            "evidence_total": len(self.evidence),
        }


# -- readers ---------------------------------------------------------------------------
def segment_files(root: Path, archive: Path | None = None) -> dict[int, Path]:
    """A region's journal segments by index: the ones left in its storage root, and the
    harness's archived copy (``journal-archive/REGION``) of every index no longer there."""
    found: dict[int, Path] = {}
    for directory in (archive, root / "_state" / "hot" / "journal"):
        if directory is None or not directory.is_dir():
            continue
        for segment in directory.glob("*.jsonl"):
            if segment.stem.isdigit():
                found[int(segment.stem)] = segment  # the storage root's copy wins
    return dict(sorted(found.items()))


@dataclass
class Journal:
    """One region's journal, decoded: records per (origin, seq) and recorded gaps.

    ``unseen`` are the segment indexes below the newest one that neither the storage
    root nor the archive holds (trimmed by the sealer before the harness copied
    them); ``origin_seqs[origin][index]`` the (first, last) seq of ``origin`` in each
    segment read, which places a missing record relative to the unseen segments.
    """

    records: dict[tuple[str, int], list[bytes]] = field(default_factory=lambda: defaultdict(list))
    gaps: list[dict[str, Any]] = field(default_factory=list)
    bodies: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    unseen: list[int] = field(default_factory=list)
    origin_seqs: dict[str, dict[int, tuple[int, int]]] = field(
        default_factory=lambda: defaultdict(dict)
    )


def read_journal(root: Path, archive: Path | None = None) -> Journal:
    journal = Journal()
    segments = segment_files(root, archive)
    if segments:
        journal.unseen = [i for i in range(1, max(segments)) if i not in segments]
    for index, segment in segments.items():
        for line in segment.read_bytes().split(b"\n"):
            if not line:
                continue
            body = json.loads(line)
            if "ctl" in body:
                if body["ctl"] == "gap":
                    journal.gaps.append(body)
                continue
            key = (str(body["o"]), int(body["s"]))
            journal.records[key].append(line)
            journal.bodies.setdefault(key, body)
            first, last = journal.origin_seqs[key[0]].get(index, (key[1], key[1]))
            journal.origin_seqs[key[0]][index] = (min(first, key[1]), max(last, key[1]))
    return journal


def sealed_partitions(root: Path) -> dict[str, dict[str, str]]:
    """Reader view of warm+cold: partition path → {file name: sha256}, sealed ones only."""
    view: dict[str, dict[str, str]] = {}
    for tier in ("warm", "cold"):
        base = root / tier
        if not base.is_dir():
            continue
        for success in base.rglob("_SUCCESS"):
            rel = success.parent.relative_to(root)
            if any(part.startswith("_") for part in rel.parts):
                continue  # _divergent/, _quarantine/ …: not a reader's view
            files = {}
            for item in sorted(success.parent.iterdir()):
                if item.is_file():
                    try:
                        files[item.name] = _content_hash(item)
                    except (FileNotFoundError, ValueError):
                        continue  # re-sealed while we read: the next poll sees the new one
            view[str(rel)] = files
    return view


# Each region validates what it holds and writes the findings to its own sidecar, stamped
# with its name and the time; the flagged rows (what a reader drops) must agree.
SIDECAR = "_quarantine.json"
SIDECAR_LOCAL_KEYS = frozenset({"region", "validated_at"})


def _content_hash(path: Path) -> str:
    """sha256 of a partition file; of the quarantine sidecar without its local stamps."""
    if path.name != SIDECAR:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    doc = _without_keys(json.loads(path.read_bytes()), SIDECAR_LOCAL_KEYS)
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _without_keys(value: Any, keys: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: _without_keys(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_without_keys(v, keys) for v in value]
    return value


def divergent_partitions(root: Path) -> dict[str, dict[str, str]]:
    """``_divergent/epoch=E/<partition>`` → file hashes, per tier."""
    found: dict[str, dict[str, str]] = {}
    for tier in ("warm", "cold"):
        base = root / tier / "_divergent"
        if not base.is_dir():
            continue
        for manifest in base.rglob("_manifest.json"):
            rel = manifest.parent.relative_to(root)
            found[str(rel)] = {
                p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                for p in manifest.parent.iterdir()
                if p.is_file()
            }
    return found


def hot_positions_agree(urls: list[str], token: str) -> bool:
    """True when every region has applied every origin's head under the same replid."""
    docs = []
    for url in urls:
        request = urllib.request.Request(
            f"{url}/v1/status?tier=hot", headers={"Authorization": f"Bearer {token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:
                docs.append(json.load(resp))
        except (OSError, ValueError):
            return False
    heads: dict[str, tuple[Any, Any]] = {}
    for doc in docs:
        for origin, info in doc["tiers"]["hot"]["stream"]["origins"].items():
            if info.get("local"):
                heads[origin] = (info.get("replid"), info.get("head_seq"))
    for doc in docs:
        for origin, info in doc["tiers"]["hot"]["stream"]["origins"].items():
            if not info.get("local") and (info.get("replid"), info.get("applied_seq")) != heads.get(
                origin
            ):
                return False
    return True


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


# -- the checks ------------------------------------------------------------------------
class RunData:
    """Everything a run left behind, loaded once."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.history = list(read_history(out / "history.jsonl"))
        self.samples = _jsonl(out / "samples.jsonl")
        self.run = json.loads((out / "run.json").read_text(encoding="utf-8"))
        self.roots = {r: out / "storage" / r for r in REGIONS}
        self.journals = {
            r: read_journal(root, out / ARCHIVE_DIR / r) for r, root in self.roots.items()
        }
        self.views = {r: sealed_partitions(root) for r, root in self.roots.items()}

    def epoch_primaries(self) -> dict[int, set[str]]:
        """Epoch → the regions etcd named primary at it (bootstrap: epoch 1)."""
        found: dict[int, set[str]] = defaultdict(set)
        found[1].add(BOOTSTRAP_PRIMARY)
        for entry in self.history:
            if entry.get("event") == "etcd_tier" and entry.get("epoch") is not None:
                found[int(entry["epoch"])].add(str(entry["primary"]))
        final = self.run.get("etcd_final") or {}
        for transition in final.get("history", []):
            epoch = transition.get("epoch")
            promoted = transition.get("promoted") or transition.get("primary")
            if epoch is not None and promoted:
                found[int(epoch)].add(str(promoted))
        if final.get("epoch") is not None:
            found[int(final["epoch"])].add(str(final["primary"]))
        return found


def check_hot(data: RunData) -> list[Verdict]:
    complete: list[Any] = []
    conflict: list[Any] = []
    gaps_sealed: list[Any] = []
    copies: dict[tuple[str, int], set[bytes]] = defaultdict(set)
    for journal in data.journals.values():
        for key, lines in journal.records.items():
            copies[key].update(lines)
    for key, versions in sorted(copies.items()):
        if len(versions) > 1:
            where = [r for r, j in data.journals.items() if key in j.records]
            conflict.append(
                {"origin": key[0], "seq": key[1], "versions": len(versions), "in": where}
            )
    durable = trimmed = 0
    for origin, own in data.journals.items():
        local = {k: v for k, v in own.records.items() if k[0] == origin}
        durable += len(local)
        for region, journal in data.journals.items():
            if region == origin:
                continue
            gaps = [g for g in journal.gaps if g.get("origin") == origin]
            for key in sorted(local):
                count = len(journal.records.get(key, ()))
                if count == 1:
                    continue
                if count == 0 and any(_in_gap(key[1], g) for g in gaps):
                    continue
                if count == 0 and _trimmed(key, own.bodies[key], journal, data.views[region]):
                    trimmed += 1
                    continue
                complete.append(
                    {"origin": origin, "seq": key[1], "region": region, "copies": count}
                )
            for gap in gaps:
                problem = _gap_unsealed(gap, own, data.views[region])
                if problem:
                    gaps_sealed.append({"region": region, **problem})
    total_gaps = sum(len(j.gaps) for j in data.journals.values())
    unseen = {r: len(j.unseen) for r, j in data.journals.items()}
    return [
        Verdict(
            "hot.complete",
            not complete,
            f"{durable} origin-durable records × {len(REGIONS) - 1} other regions;"
            f" journal segments trimmed before the archive copied them {unseen},"
            f" {trimmed} (record, region) pairs accepted as trimmed from them",
            complete,
        ),
        Verdict("hot.no_conflict", not conflict, f"{len(copies)} distinct (origin, seq)", conflict),
        Verdict("hot.gaps_sealed", not gaps_sealed, f"{total_gaps} recorded gaps", gaps_sealed),
    ]


def _trimmed(
    key: tuple[str, int], body: dict[str, Any], journal: Journal, view: dict[str, Any]
) -> bool:
    """Whether a record absent from ``journal`` was in a segment the sealer trimmed there.

    The daemon deletes a segment only once every window its records belong to is
    sealed at that region (a replica: replication delivered a sealed manifest that
    lists the window's own file), and only whole segments, oldest first. So the
    absence is accepted only when (1) a segment of this journal is unseen (trimmed
    before the harness copied it), (2) the record's seq falls between the origin's
    seqs in the segments read before and after such an unseen segment (seqs of one
    origin are journaled in increasing order), and (3) the record's window file
    (``part-<window start>.parquet``) is in its sealed hour partition at that region.
    A record missing anywhere else — between two segments that were both read, or
    with its window not sealed — is lost, and fails ``hot.complete``.
    """
    origin, seq = key
    partition = _hour_partition(body)
    window = _window_file(body)
    if not journal.unseen or partition is None or window is None:
        return False
    if window not in (view.get(partition) or {}):
        return False
    spans = journal.origin_seqs.get(origin, {})
    for index in journal.unseen:
        below = [last for i, (_, last) in spans.items() if i < index]
        above = [first for i, (first, _) in spans.items() if i > index]
        if max(below, default=-1) < seq < min(above, default=float("inf")):
            return True
    return False


def _window_file(body: dict[str, Any]) -> str | None:
    """The sealer's data file for a record's window (``hot/sealer.py`` ``_window_file``)."""
    fields = body.get("f") or {}
    ts = fields.get("ts") if isinstance(fields.get("ts"), int) else body.get("i")
    if not isinstance(ts, int):
        return None
    length = int(PARTITION_LENGTH * 1e9)
    start = datetime.fromtimestamp(ts // length * length / 1e9, UTC)
    return f"part-{start:%Y%m%dT%H%M%SZ}.parquet"


def _gap_end(gap: dict[str, Any]) -> float:
    if gap.get("missing_to") is not None:
        return float(gap["missing_to"])
    if gap.get("available_from") is not None:
        return float(gap["available_from"]) - 1
    return float("inf")


def _in_gap(seq: int, gap: dict[str, Any]) -> bool:
    return int(gap.get("missing_from") or 0) <= seq <= _gap_end(gap)


def _gap_unsealed(
    gap: dict[str, Any], origin_journal: Journal, view: dict[str, Any]
) -> dict[str, Any] | None:
    """The first record of a gap whose hour partition is not sealed at the region, if any."""
    origin = gap.get("origin")
    for (o, seq), body in origin_journal.bodies.items():
        if o != origin or not _in_gap(seq, gap):
            continue
        partition = _hour_partition(body)
        if partition is not None and partition not in view:
            return {"origin": origin, "seq": seq, "partition": partition, "gap": gap}
    return None


def _hour_partition(body: dict[str, Any]) -> str | None:
    fields = body.get("f") or {}
    ts = fields.get("ts")
    if ts is None:
        return None
    if isinstance(ts, str):
        moment = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    else:
        moment = datetime.fromtimestamp(int(ts) / 1e9, UTC)
    symbol = str(fields.get("symbol", "")).replace("/", "-")
    return (
        f"warm/{body.get('d')}/venue={fields.get('venue')}/symbol={symbol}/"
        f"date={moment:%Y-%m-%d}/hour={moment:%H}"
    )


def check_warm(data: RunData) -> list[Verdict]:
    identical: list[Any] = []
    converged = data.run.get("converged")
    if converged is None:
        identical.append("sealed partitions never converged after the feeds stopped")
    every = sorted(set().union(*(v.keys() for v in data.views.values())))
    for path in every:
        versions = {r: data.views[r].get(path) for r in REGIONS}
        if len({json.dumps(v, sort_keys=True) for v in versions.values()}) > 1:
            identical.append({"partition": path, "missing_or_different_in": _odd_ones(versions)})
    primaries = data.epoch_primaries()
    writer: list[Any] = []
    manifests = 0
    for region, root in data.roots.items():
        for path in data.views[region]:
            manifest = json.loads((root / path / "_manifest.json").read_text(encoding="utf-8"))
            manifests += 1
            epoch, wrote = int(manifest["epoch"]), str(manifest["writer_region"])
            if wrote not in primaries.get(epoch, set()):
                writer.append(
                    {
                        "region": region,
                        "partition": path,
                        "epoch": epoch,
                        "writer": wrote,
                        "primary_at_epoch": sorted(primaries.get(epoch, set())),
                    }
                )
    fence: list[Any] = []
    divergent_total = 0
    for region, root in data.roots.items():
        for rel, files in divergent_partitions(root).items():
            divergent_total += 1
            parts = Path(rel).parts  # tier/_divergent/epoch=E/<partition…>
            reader_path = str(Path(parts[0], *parts[3:]))
            for other in REGIONS:
                shown = data.views[other].get(reader_path, {})
                data_files = {k: v for k, v in files.items() if k.endswith(".parquet")}
                same = data_files and all(shown.get(k) == v for k, v in data_files.items())
                if same and files.get("_manifest.json") == shown.get("_manifest.json"):
                    fence.append({"divergent": f"{region}:{rel}", "visible_in": other})
    return [
        Verdict(
            "warm.identical",
            not identical,
            f"{len(every)} sealed partitions × {len(REGIONS)} regions",
            identical,
        ),
        Verdict(
            "warm.writer_was_primary",
            not writer,
            f"{manifests} manifests; epoch → primary {_epoch_table(primaries)}",
            writer,
        ),
        Verdict("warm.fence", not fence, f"{divergent_total} partitions under _divergent/", fence),
    ]


def _epoch_table(primaries: dict[int, set[str]]) -> dict[int, list[str]]:
    return {epoch: sorted(regions) for epoch, regions in sorted(primaries.items())}


def _odd_ones(versions: dict[str, Any]) -> list[str]:
    counts = Counter(json.dumps(v, sort_keys=True) for v in versions.values())
    common = counts.most_common(1)[0][0]
    return [r for r, v in versions.items() if json.dumps(v, sort_keys=True) != common]


def check_failover(data: RunData) -> list[Verdict]:
    claims: dict[int, set[str]] = defaultdict(set)
    for epoch, regions in data.epoch_primaries().items():
        if len(regions) > 1:
            claims[epoch].update(regions)
    for sample in data.samples:
        if sample.get("ok") and sample.get("role") == 1 and sample.get("epoch") is not None:
            epoch = int(sample["epoch"])
            if sample.get("primary") == sample["region"]:
                claims[epoch].add(sample["region"])
    one = [{"epoch": e, "primaries": sorted(r)} for e, r in sorted(claims.items()) if len(r) > 1]

    grow: list[Any] = []
    last: dict[str, tuple[int, float]] = {}
    for sample in data.samples:
        if not sample.get("ok") or sample.get("epoch") is None:
            continue
        region, epoch = sample["region"], int(sample["epoch"])
        if region in last and epoch < last[region][0]:
            grow.append({"region": region, "from": last[region], "to": (epoch, sample["mono"])})
        last[region] = (epoch, sample["mono"])
    etcd_epochs = [
        int(e["epoch"])
        for e in data.history
        if e.get("event") == "etcd_tier" and e.get("epoch") is not None
    ]
    for before, after in itertools.pairwise(etcd_epochs):
        if after < before:
            grow.append({"etcd": [before, after]})

    final = data.run.get("etcd_final") or {}
    visible: list[Any] = []
    acked = [e for e in data.history if e.get("kind") == "op" and e.get("phase") == "ok"]
    final_status = data.run.get("final_status") or {}
    for op in acked:
        acked_epoch = (op.get("response") or {}).get("epoch")
        if acked_epoch is None or int(final.get("epoch", 0)) < int(acked_epoch):
            visible.append({"op": op, "etcd_final": final.get("epoch")})
    # After healing: the regions' last scrapes of the settle phase against etcd at that time.
    settled = data.run.get("etcd_at_settle") or final
    for region in REGIONS:
        sample = final_status.get(region) or {}
        if (sample.get("epoch"), sample.get("primary")) != (
            settled.get("epoch"),
            settled.get("primary"),
        ):
            visible.append(
                {
                    "region": region,
                    "sees": (sample.get("epoch"), sample.get("primary"), sample.get("mono")),
                    "etcd_at_settle": (settled.get("epoch"), settled.get("primary")),
                }
            )
    ops = Counter(e.get("phase") for e in data.history if e.get("kind") == "op")
    return [
        Verdict(
            "failover.one_primary",
            not one,
            f"{len(data.epoch_primaries())} epochs; {len(data.samples)} scrapes",
            one,
        ),
        Verdict(
            "failover.epochs_grow",
            not grow,
            f"{len(etcd_epochs)} etcd changes; per-region scrapes",
            grow,
        ),
        Verdict(
            "failover.acked_visible",
            not visible,
            f"operator failovers {dict(ops)}; final epoch {final.get('epoch')}"
            f" primary {final.get('primary')}",
            visible,
        ),
    ]


def check_liveness(data: RunData) -> list[Verdict]:
    run = data.run
    heal = float(run.get("heal", 0))
    ready = [] if run.get("ready_at_end_of_settle") else [{"final_status": run.get("final_status")}]
    every_exit = run.get("unexpected_exits", [])
    # A daemon (re)started while its disk is full refuses to start ("storage.root is not
    # writable"), as it should; systemd retries until the disk is freed. Those exits are
    # the fault's effect, not a crash loop.
    full = _fault_windows(data.history, "enospc")
    exits = [e for e in every_exit if not _refused_on_full_disk(e, full)]
    loop: list[Any] = [e for e in exits if float(e["mono"]) >= heal]
    by_region: dict[str, list[float]] = defaultdict(list)
    for entry in exits:
        by_region[entry["target"]].append(float(entry["mono"]))
    for region, times in by_region.items():
        for i in range(len(times) - 2):
            if times[i + 2] - times[i] <= 60:
                loop.append({"region": region, "three_exits_within_60s": times[i : i + 3]})
    lag: list[Any] = []
    # Healed = faults undone and every daemon back up and ready (a killed one's heal is
    # its restart).
    healed = run.get("ready")
    for tier, slo in (("hot", HOT_SLO), ("warm", WARM_SLO)):
        at = run.get(tier)
        if healed is None or at is None or float(at) - float(healed) > 2 * slo:
            lag.append({"tier": tier, "slo": slo, "healed_at": healed, "under_slo_at": at})
    return [
        Verdict("liveness.ready", not ready, "every region ready after settling", ready),
        Verdict(
            "liveness.no_restart_loop",
            not loop,
            f"{len(every_exit)} unexpected exits during faults"
            f" ({len(every_exit) - len(exits)} refusals to start on a full disk)",
            [*loop, {"all_exits": exits}] if loop else [],
        ),
        Verdict(
            "liveness.lag_recovered",
            not lag,
            f"faults undone {heal:.1f}s, all ready {run.get('ready')}; hot under SLO at"
            f" {run.get('hot')}, warm at {run.get('warm')}",
            lag,
        ),
    ]


def _fault_windows(history: list[dict[str, Any]], kind: str) -> list[tuple[str, float, float]]:
    """(target, start, end) of every fault of ``kind``."""
    starts: dict[int, dict[str, Any]] = {}
    windows = []
    for entry in history:
        if entry.get("kind") != "fault" or entry.get("fault") != kind:
            continue
        if entry["phase"] == "start":
            starts[entry["id"]] = entry
        elif entry["phase"] == "end" and entry["id"] in starts:
            start = starts.pop(entry["id"])
            windows.append((str(start["target"]), float(start["mono"]), float(entry["mono"])))
    return windows


def _refused_on_full_disk(exit_entry: dict[str, Any], full: list[tuple[str, float, float]]) -> bool:
    if "No space left on device" not in str(exit_entry.get("log_tail", "")):
        return False
    at = float(exit_entry["mono"])
    # The exit is noticed by the supervisor up to half a second after it happened.
    return any(t == exit_entry["target"] and a <= at <= b + 1.0 for t, a, b in full)


def check_filesystem(data: RunData) -> list[Verdict]:
    listing = data.run.get("filesystem", {})
    stray = [{"where": k, "paths": v} for k, v in listing.items() if v]
    return [
        Verdict(
            "fs.confined",
            not stray and bool(listing),
            "daemon cwd, tmpfs beside root, config folder",
            stray,
        )
    ]


def check_run(out: Path) -> list[Verdict]:
    """Every invariant of a finished run, in :data:`INVARIANTS` order."""
    try:
        data = RunData(out)
    except (OSError, ValueError, KeyError) as exc:
        return [Verdict(name, False, "run data unreadable", [repr(exc)]) for name in INVARIANTS]
    verdicts: list[Verdict] = []
    for check in (check_hot, check_warm, check_failover, check_liveness, check_filesystem):
        try:
            verdicts.extend(check(data))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            verdicts.append(Verdict(check.__name__, False, "check crashed", [repr(exc)]))
    return verdicts
