"""Talk to a running daemon's admin API the way an operator's tooling would.

Metric reads go through the real ``/metrics`` exposition (parsed with
prometheus-client's own parser); writes carry the test token.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.wait import eventually

TOKEN = "test-token-0123456789abcdef"


def auth_headers(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sample_value(exposition: str, name: str, labels: Mapping[str, str]) -> float | None:
    """The first sample called ``name`` whose labels include ``labels`` (None when absent)."""
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


async def scrape_metric(
    session: aiohttp.ClientSession, base_url: str, name: str, labels: Mapping[str, str]
) -> float | None:
    """One sample from a running daemon's ``/metrics`` (None when the series is absent)."""
    async with session.get(f"{base_url}/metrics") as resp:
        return sample_value(await resp.text(), name, labels)


async def metric(
    session: aiohttp.ClientSession, base_url: str, name: str, labels: Mapping[str, str]
) -> float:
    """Like :func:`scrape_metric`, but 0 for an absent series (a counter not yet moved)."""
    return await scrape_metric(session, base_url, name, labels) or 0.0


async def post_failover(
    session: aiohttp.ClientSession, base_url: str, body: Mapping[str, Any]
) -> tuple[int, dict[str, Any]]:
    """``POST /v1/failover`` with the test token: (HTTP status, JSON answer)."""
    async with session.post(f"{base_url}/v1/failover", json=body, headers=auth_headers()) as resp:
        answer: dict[str, Any] = await resp.json()
        return resp.status, answer


async def sync_now(
    session: aiohttp.ClientSession, base_url: str, tier: str, source: str, kind: str = "pull"
) -> dict[str, Any]:
    """Run one replication pass of one link now (``POST /v1/replication/sync``) and
    return its report; fails the test unless the daemon answers 200 with one pass."""
    body = {"tier": tier, "from": source, "kind": kind}
    async with session.post(
        f"{base_url}/v1/replication/sync", json=body, headers=auth_headers()
    ) as resp:
        assert resp.status == 200, await resp.text()
        doc = await resp.json()
    [report] = doc["passes"]
    return dict(report)


async def seal_when_accepted(
    session: aiohttp.ClientSession, base_url: str, tier: str, partition: str
) -> None:
    """``POST /v1/partitions/seal`` until it answers 200: a primary refuses (503) until
    the regions have confirmed their roles with each other. Fails the test after 30 s
    with the last answer."""
    answers: list[str] = []

    async def sealed() -> bool:
        async with session.post(
            f"{base_url}/v1/partitions/seal",
            json={"tier": tier, "partition": partition},
            headers=auth_headers(),
        ) as resp:
            answers.append(await resp.text())
            return resp.status == 200

    await eventually(
        sealed, f"the seal of {tier}/{partition}", timeout=30, detail=lambda: answers[-1:]
    )
