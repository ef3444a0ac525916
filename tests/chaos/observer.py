"""Scrapes every region's ``/metrics`` and ``/v1/status`` once a second during a run.

Each scrape becomes one line of ``samples.jsonl``::

    {"mono", "region", "ok", "ready", "hot_lag", "warm_lag", "records",
     "role", "epoch", "primary", "started_at", "loop_lag_sum", "loop_lag_count"}

``hot_lag``/``warm_lag`` are the largest ``cryptorun_replication_lag_seconds``
of the tier at that region (over sources), ``records`` its own origin's
``cryptorun_hot_records_total`` (the report derives the ingest rate), ``role``
and ``epoch`` what the region says of itself for the warm tier (``role`` 1 =
primary), ``loop_lag_sum``/``loop_lag_count`` the region's
``cryptorun_event_loop_lag_seconds`` histogram (how late its event loop ran, which
explains late lease renewals and slow scrapes on a loaded host; the mean
lateness between two scrapes is Δsum/Δcount). A region that does not answer
within :data:`SCRAPE_TIMEOUT` gets ``ok: false``.

Resource handling: one aiohttp session for the whole run, closed on exit;
the loop runs until its stop event is set. Error handling: any failure of one
scrape is recorded as ``ok: false`` and the loop goes on.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.chaos.cluster import REGIONS, admin_url
from tests.chaos.history import History

INTERVAL = 1.0
SCRAPE_TIMEOUT = 4.0  # two shared cores under load: a busy daemon answers late, not never


def parse_metrics(text: str, region: str) -> dict[str, float | None]:
    """The few numbers the timeline plots, from one exposition."""
    out: dict[str, float | None] = {"hot_lag": None, "warm_lag": None, "records": None}
    out.update({"role": None, "epoch": None, "loop_lag_sum": None, "loop_lag_count": None})
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "cryptorun_replication_lag_seconds"
                and labels.get("region") == region
            ):
                key = f"{labels.get('tier')}_lag"
                if key in ("hot_lag", "warm_lag"):
                    current = out[key]
                    out[key] = sample.value if current is None else max(current, sample.value)
            elif sample.name == "cryptorun_hot_records_total" and labels.get("origin") == region:
                if labels.get("region") == region:
                    out["records"] = sample.value
            elif sample.name == "cryptorun_region_role" and labels.get("tier") == "warm":
                if labels.get("region") == region:
                    out["role"] = sample.value
            elif sample.name == "cryptorun_event_loop_lag_seconds_sum":
                out["loop_lag_sum"] = sample.value
            elif sample.name == "cryptorun_event_loop_lag_seconds_count":
                out["loop_lag_count"] = sample.value
            elif sample.name == "cryptorun_failover_epoch" and labels.get("tier") == "warm":
                out["epoch"] = sample.value
    return out


async def scrape(session: aiohttp.ClientSession, region: str, token: str) -> dict[str, Any]:
    """One sample of one region (``ok: false`` when it does not answer)."""
    base = admin_url(region)
    timeout = aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with session.get(f"{base}/metrics", timeout=timeout, headers=headers) as resp:
            resp.raise_for_status()
            text = await resp.text()
        url = f"{base}/v1/status?tier=warm"
        async with session.get(url, timeout=timeout, headers=headers) as resp:
            resp.raise_for_status()
            status = await resp.json()
        metrics = parse_metrics(text, region)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return {"region": region, "ok": False, "error": type(exc).__name__}
    warm = status.get("tiers", {}).get("warm", {})
    sample: dict[str, Any] = {"region": region, "ok": True, **metrics}
    sample["ready"] = bool(status.get("ready"))
    sample["started_at"] = status.get("started_at")
    sample["primary"] = warm.get("primary")
    if isinstance(warm.get("epoch"), int):
        sample["epoch"] = warm["epoch"]
    return sample


class Observer:
    """Writes samples and keeps the latest one per region for the nemesis and the client."""

    def __init__(self, path: Path, history: History, token: str) -> None:
        self.path = path
        self.history = history
        self.token = token
        self.latest: dict[str, dict[str, Any]] = {}
        self.latest_ok: dict[str, dict[str, Any]] = {}

    def primary(self) -> str | None:
        """The warm primary with the highest epoch any region reports (None if unknown)."""
        best: tuple[int, str] | None = None
        for sample in self.latest_ok.values():
            epoch, primary = sample.get("epoch"), sample.get("primary")
            if not isinstance(primary, str) or epoch is None:
                continue
            if best is None or int(epoch) > best[0]:
                best = (int(epoch), primary)
        return None if best is None else best[1]

    async def run(self, stop: asyncio.Event) -> None:
        """Scrape all regions every :data:`INTERVAL` until ``stop`` is set."""
        async with aiohttp.ClientSession() as session:
            with self.path.open("a", encoding="utf-8") as out:
                while not stop.is_set():
                    mono = self.history.now()
                    samples = await asyncio.gather(
                        *(scrape(session, r, self.token) for r in REGIONS)
                    )
                    for sample in samples:
                        sample["mono"] = round(mono, 3)
                        self.latest[sample["region"]] = sample
                        if sample["ok"]:
                            self.latest_ok[sample["region"]] = sample
                        out.write(json.dumps(sample, sort_keys=True) + "\n")
                    out.flush()
                    try:
                        await asyncio.wait_for(stop.wait(), INTERVAL)
                    except TimeoutError:
                        pass
