"""Facts shared from ``config/model.py``: tier names, the region-name rule, bootstrap primary."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import get_args

import pytest

from cryptorun_daemon.config import (
    ACTIVE_PASSIVE_TIERS,
    TIERS,
    ActivePassiveTier,
    Tier,
    is_active_passive,
    is_region_name,
    load_config,
)
from cryptorun_daemon.config.model import DEFAULT_MODE
from cryptorun_daemon.data.validate.schema import TRADE_V1, schema_check
from cryptorun_daemon.errors import ConfigError, UsageError
from cryptorun_daemon.failover.roles import require_region
from cryptorun_daemon.replication.rules import parse_region
from tests.harness.daemons import RegionSpec, two_regions

GOOD_NAMES = ["eu-central", "us-east-1", "a", "ap-2", "x--y", "z9"]
BAD_NAMES = ["", "EU", "1eu", "-eu", "eu_central", "eu central", "eu.central", "eu\n", "é"]


def test_tier_tuples_follow_the_literals() -> None:
    """TIERS and ACTIVE_PASSIVE_TIERS are the Literal types' members, in order; hot alone is
    active-active."""
    assert TIERS == get_args(Tier) == ("hot", "warm", "cold")
    assert ACTIVE_PASSIVE_TIERS == get_args(ActivePassiveTier) == ("warm", "cold")
    assert [t for t in TIERS if is_active_passive(t)] == list(ACTIVE_PASSIVE_TIERS)
    assert DEFAULT_MODE == {
        "hot": "active-active",
        "warm": "active-passive",
        "cold": "active-passive",
    }


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_every_layer_accepts_a_valid_region_name(name: str, tmp_path: Path) -> None:
    """The config loader, the state model, the replication API and the record schema all
    accept the same names."""
    assert is_region_name(name)
    assert require_region(name) == name
    assert parse_region(name) == name
    assert _schema_origin_accepts(name)
    spec = RegionSpec(name, 9100, tmp_path / "region")
    assert load_config(spec.write()).region == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_every_layer_refuses_an_invalid_region_name(name: str, tmp_path: Path) -> None:
    """No layer lets through a name another layer refuses (uppercase, leading digit or dash,
    underscore, dot, space, a trailing newline, non-ASCII)."""
    assert not is_region_name(name)
    with pytest.raises(UsageError, match=re.escape("[a-z][a-z0-9-]*")):
        require_region(name)
    with pytest.raises(UsageError, match=re.escape("[a-z][a-z0-9-]*")):
        parse_region(name)
    assert not _schema_origin_accepts(name)
    path = RegionSpec("eu-central", 9100, tmp_path / "region").write()
    # json.dumps writes a valid TOML basic string, escapes included.
    text = path.read_text().replace('region = "eu-central"', f"region = {json.dumps(name)}")
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape("[a-z][a-z0-9-]*")):
        load_config(path)


def test_bootstrap_primary_is_the_from_of_the_tiers_rule(tmp_path: Path) -> None:
    """warm and cold start with their rule's ``from`` as primary; hot has none (active-active),
    nor does a tier no rule names."""
    eu, us = "eu-central", "us-east"
    a, _ = two_regions(
        tmp_path,
        rules=[
            {"tier": "hot", "from": eu, "to": [us], "lag_slo": "5s"},
            {"tier": "warm", "from": us, "to": [eu], "lag_slo": "60s"},
        ],
    )
    config = load_config(a.write())
    assert config.bootstrap_primary("warm") == us
    assert config.bootstrap_primary("hot") is None
    assert config.bootstrap_primary("cold") is None
    assert config.bootstrap_primary("lukewarm") is None


def test_bootstrap_primary_takes_the_first_rule_when_a_tier_has_several(tmp_path: Path) -> None:
    """Several rules for one tier share their ``from`` (the loader insists); the answer is it."""
    eu, us, ap = "eu-central", "us-east", "ap-south"
    a, _ = two_regions(tmp_path, rules=[])
    a.peers[ap] = 9300
    a.rules = [
        {"tier": "cold", "from": eu, "to": [us], "lag_slo": "5m"},
        {"tier": "cold", "from": eu, "to": [ap], "lag_slo": "5m"},
    ]
    assert load_config(a.write()).bootstrap_primary("cold") == eu


def _schema_origin_accepts(name: str) -> bool:
    """Whether the trade schema's per-record check lets ``name`` through as ``origin``."""
    record = {
        "ts": 1_756_684_800_000_000_000,
        "venue": "kraken",
        "symbol": "BTC/USD",
        "side": "buy",
        "price": 60000.0,
        "qty": 0.5,
        "trade_id": 1,
        "ingest_ts": 1_756_684_800_001_000_000,
        "origin": name,
        "seq": 7,
    }
    return schema_check(TRADE_V1)(record) is None
