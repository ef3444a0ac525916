"""Config loading: every problem is reported with file and key, all at once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cryptorun_daemon.config import format_duration, load_config, parse_duration
from cryptorun_daemon.errors import ConfigError
from cryptorun_daemon.security.certs import init_certs

REPO = Path(__file__).resolve().parents[2]

VALID = """
region = "eu-central"

[admin]
listen = "127.0.0.1:9100"
token_file = "admin.token"

[storage]
root = "data/eu-central"

[peers]
us-east = "http://127.0.0.1:9200"

[[rules]]
tier = "warm"
mode = "active-passive"
from = "eu-central"
to = ["us-east"]
lag_slo = "60s"
"""


def write(tmp_path: Path, text: str, *, token: bool = True) -> Path:
    if token:
        (tmp_path / "admin.token").write_text("secret\n")
    path = tmp_path / "region.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str, *, token: bool = True) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text, token=token))
    return [f"{p.key}: {p.message}" for p in info.value.problems]


def test_valid_config_loads_into_typed_values(tmp_path: Path) -> None:
    """A valid file yields typed, resolved values: seconds, paths, tuples."""
    config = load_config(write(tmp_path, VALID))
    assert config.region == "eu-central"
    assert (config.admin.host, config.admin.port) == ("127.0.0.1", 9100)
    assert config.admin.token_file == (tmp_path / "admin.token").resolve()
    assert config.storage.root == (tmp_path / "data/eu-central").resolve()
    assert dict(config.peers) == {"us-east": "http://127.0.0.1:9200"}
    (rule,) = config.rules
    assert (rule.tier, rule.mode, rule.from_region, rule.to_regions, rule.lag_slo) == (
        "warm",
        "active-passive",
        "eu-central",
        ("us-east",),
        60.0,
    )
    assert config.regions == ("eu-central", "us-east")


def test_loading_twice_gives_equal_frozen_configs(tmp_path: Path) -> None:
    """Loading is deterministic and the result is immutable (frozen dataclasses)."""
    path = write(tmp_path, VALID)
    first, second = load_config(path), load_config(path)
    assert first == second
    with pytest.raises(AttributeError):
        first.region = "us-east"  # type: ignore[misc]


def test_unknown_keys_are_named_with_their_path(tmp_path: Path) -> None:
    """Unknown keys at the top level, in a table and in a rule are each reported."""
    text = VALID.replace('region = "eu-central"', 'region = "eu-central"\ncolour = "blue"')
    text = text.replace('root = "data/eu-central"', 'root = "data/eu-central"\nrot = "x"')
    text = text.replace('lag_slo = "60s"', 'lag_slo = "60s"\nlagslo = "1s"')
    found = problems(tmp_path, text)
    assert "colour: unknown key" in found
    assert "storage.rot: unknown key" in found
    assert "rules[0].lagslo: unknown key" in found


def test_wrong_types_are_reported(tmp_path: Path) -> None:
    """A number where a string belongs and a string where a list belongs are errors."""
    text = VALID.replace('region = "eu-central"', "region = 7").replace(
        'to = ["us-east"]', 'to = "us-east"'
    )
    found = problems(tmp_path, text)
    assert "region: must be a string, got an integer" in found
    assert "rules[0].to: must be a list of strings, got a string" in found


def test_values_keep_their_toml_type_and_a_boolean_is_never_a_number(tmp_path: Path) -> None:
    """An integer where a number belongs is read as a float; true/false where an integer
    or a number belongs, 1 where true/false belongs, and a list mixing strings with
    numbers are each reported with their key."""
    typed = VALID + "\n[validation.anomaly]\nthreshold = 4\n"
    config = load_config(write(tmp_path, typed))
    assert config.validation.anomaly.threshold == 4.0
    assert isinstance(config.validation.anomaly.threshold, float)
    wrong = (
        VALID.replace('to = ["us-east"]', 'to = ["us-east", 3]')
        + "\n[replication]\nmax_concurrency = true\n"
        + "\n[state]\nauto_failover = 1\n"
        + "\n[validation.anomaly]\nthreshold = false\n"
    )
    found = problems(tmp_path, wrong)
    assert "rules[0].to: must be a list of strings" in found
    assert "replication.max_concurrency: must be an integer, got a boolean" in found
    assert "state.auto_failover: must be true or false, got an integer" in found
    assert "validation.anomaly.threshold: must be a number, got a boolean" in found


def test_bad_durations_are_reported(tmp_path: Path) -> None:
    """'60 seconds' and '0s' are not durations; the message shows the accepted forms."""
    found = problems(tmp_path, VALID.replace('"60s"', '"60 seconds"'))
    assert any(f.startswith("rules[0].lag_slo: '60 seconds' is not a duration") for f in found)
    found = problems(tmp_path, VALID.replace('"60s"', '"0s"'))
    assert any(f.startswith("rules[0].lag_slo:") and "greater than zero" in f for f in found)


def test_lease_safety_margin_defaults_to_a_quarter_of_the_ttl_and_must_stay_below_two_thirds(
    tmp_path: Path,
) -> None:
    """[state] lease_safety_margin: absent, a primary must hold a quarter of lease_ttl to write;
    set, it is used as given; at or above two thirds of the TTL (heartbeats renew every
    third) it would refuse writes between healthy renewals and is reported."""
    state = '\n[state]\nlease_ttl = "8s"\n'
    assert load_config(write(tmp_path, VALID + state)).state.write_safety_margin() == 2.0
    chosen = load_config(write(tmp_path, VALID + state + 'lease_safety_margin = "3s"\n'))
    assert chosen.state.write_safety_margin() == 3.0
    found = problems(tmp_path, VALID + state + 'lease_safety_margin = "6s"\n')
    assert any(f.startswith("state.lease_safety_margin: must be") for f in found), found


def test_unknown_regions_in_rules_are_reported(tmp_path: Path) -> None:
    """A rule may only name this region and its peers."""
    found = problems(tmp_path, VALID.replace('to = ["us-east"]', 'to = ["mars"]'))
    assert "rules[0].to[0]: unknown region 'mars' (not this region and not a peer)" in found


def test_from_listed_in_to_is_reported(tmp_path: Path) -> None:
    """Replicating a region to itself is a contradiction."""
    found = problems(tmp_path, VALID.replace('to = ["us-east"]', 'to = ["us-east", "eu-central"]'))
    assert "rules[0].to: lists 'eu-central', which is the rule's own 'from'" in found


@pytest.mark.parametrize(
    ("tier", "mode", "phrase"),
    [
        ("warm", "active-active", "warm is active-passive"),
        ("hot", "active-passive", "hot is active-active"),
    ],
)
def test_mode_that_makes_no_sense_for_tier_is_reported(
    tmp_path: Path, tier: str, mode: str, phrase: str
) -> None:
    """Warm/cold have one writer (active-passive); hot is ingested everywhere (active-active)."""
    text = VALID.replace('tier = "warm"', f'tier = "{tier}"').replace(
        'mode = "active-passive"', f'mode = "{mode}"'
    )
    found = problems(tmp_path, text)
    assert any(f.startswith("rules[0].mode:") and phrase in f for f in found), found


def test_two_primaries_for_one_tier_are_reported(tmp_path: Path) -> None:
    """An active-passive tier replicating from two regions would have two writers."""
    text = VALID + (
        '\n[[rules]]\ntier = "warm"\nfrom = "us-east"\nto = ["eu-central"]\nlag_slo = "60s"\n'
    )
    found = problems(tmp_path, text)
    assert any(f.startswith("rules[1].from:") and "exactly one primary" in f for f in found)


def test_missing_token_file_is_reported(tmp_path: Path) -> None:
    """A configured token file that does not exist is an error naming the path."""
    found = problems(tmp_path, VALID, token=False)
    assert any(
        f.startswith("admin.token_file: token file") and "does not exist" in f for f in found
    )


def test_non_loopback_listen_requires_a_token_file(tmp_path: Path) -> None:
    """Binding beyond loopback without a token would expose the failover endpoint."""
    text = VALID.replace('listen = "127.0.0.1:9100"', 'listen = "0.0.0.0:9100"').replace(
        'token_file = "admin.token"\n', ""
    )
    found = problems(tmp_path, text)
    assert any(f.startswith("admin.token_file: is required when admin.listen") for f in found)


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    """One pass lists every problem rather than stopping at the first."""
    text = VALID.replace('region = "eu-central"', 'region = "EU"\ntypo = 1').replace(
        '"60s"', '"soon"'
    )
    found = problems(tmp_path, text, token=False)
    assert len(found) >= 4


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    """A file that is not TOML is reported as such, with the parser's position."""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "region = \n"))
    (problem,) = info.value.problems
    assert problem.file.endswith("region.toml")
    assert "invalid TOML" in problem.message


def test_missing_file_is_reported(tmp_path: Path) -> None:
    """A path that does not exist is a config error, not a traceback."""
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("5s", 5.0), ("60s", 60.0), ("5m", 300.0), ("1h", 3600.0), ("1.5s", 1.5)],
)
def test_durations_parse_to_seconds(text: str, seconds: float) -> None:
    """Durations in the contract's forms become seconds and print back the same way."""
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "5", "s", "-1s", "5 sec", "1y"])
def test_invalid_durations_are_rejected(text: str) -> None:
    """Anything but number+unit is a ValueError with the accepted forms."""
    with pytest.raises(ValueError, match="500ms"):
        parse_duration(text)


def test_shipped_region_configs_are_valid_and_consistent(tmp_path: Path) -> None:
    """config/eu-central.toml and config/us-east.toml load, speak TLS and point at each other."""
    shutil.copytree(REPO / "config", tmp_path / "config", ignore=shutil.ignore_patterns("secrets"))
    init_certs(tmp_path / "config/secrets/tls", ["eu-central", "us-east"])
    for scope in ("operator", "peer", "read"):
        (tmp_path / f"config/secrets/{scope}.token").write_text(f"{scope}-t0ken\n")
    eu = load_config(tmp_path / "config/eu-central.toml")
    us = load_config(tmp_path / "config/us-east.toml")
    assert eu.admin.tls
    assert us.admin.tls
    assert eu.peers["us-east"].startswith("https://")
    assert eu.peers["us-east"].endswith(f":{us.admin.port}")
    assert us.peers["eu-central"].endswith(f":{eu.admin.port}")
    assert eu.admin.port != us.admin.port
    assert eu.storage.root != us.storage.root
    assert eu.rules == us.rules


def test_hot_bounds_on_peer_fed_state_load_with_defaults_and_overrides(tmp_path: Path) -> None:
    """[hot] max_tracked_markets, max_subscribers and subscriber_timeout have defaults, load
    when set, and a cap below 1 is reported."""
    defaults = load_config(write(tmp_path, VALID)).hot
    assert (defaults.max_tracked_markets, defaults.max_subscribers) == (10_000, 16)
    assert defaults.subscriber_timeout == 15.0
    text = (
        VALID
        + '\n[hot]\nmax_tracked_markets = 50\nmax_subscribers = 2\nsubscriber_timeout = "3s"\n'
    )
    hot = load_config(write(tmp_path, text)).hot
    assert (hot.max_tracked_markets, hot.max_subscribers, hot.subscriber_timeout) == (50, 2, 3.0)
    found = problems(tmp_path, VALID + "\n[hot]\nmax_subscribers = 0\n")
    assert any(f.startswith("hot.max_subscribers:") for f in found)
