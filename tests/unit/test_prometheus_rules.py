"""The shipped Prometheus rules, scrape config and Grafana dashboard stay valid and true.

Three kinds of check:

* ``promtool`` (Debian package ``prometheus``) validates the rule files and the
  scrape config and runs the rule unit tests in ``deploy/prometheus/tests/``.
  Missing ``promtool`` skips those tests locally and fails them in CI.
* Every alert is operable at 3 a.m.: a severity, a summary, a description and
  a runbook link to the right section of the SRE playbook, a ``for:`` where a
  blip must not page, and a promtool test that fires it and one that does not.
* Every metric named by a rule or a dashboard query is one the daemon exports
  (``cryptorun_daemon.metrics.Metrics``), so neither can drift from the code.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cryptorun_daemon.metrics import Metrics
from tests.harness.tools import require_binary

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
RECORDING = PROMETHEUS_DIR / "recording.yml"
SCRAPE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
DASHBOARD = REPO / "deploy" / "grafana" / "cryptorun-replication.json"

RUNBOOK = "https://github.com/cryptorun/cryptorun-daemon/blob/main/docs/DATA_MULTI_REGION.md"
# The playbook headings the lead guarantees; an alert may link to no other.
RUNBOOK_ANCHORS = frozenset(
    {
        "replication-lag-over-slo",
        "replica-not-recovering",
        "step-failures",
        "corrupt-or-fenced",
        "quarantine-spike",
        "hot-sequence-gaps",
        "peer-down",
        "epoch-changed",
        "daemon-not-ready",
        "worker-restart-loop",
        "ingest-checksum-failures",
    }
)
# Every alert issue 8 asks for, and the playbook section it belongs to.
EXPECTED_ALERTS = {
    "CryptorunReplicationLagOverSLO": "replication-lag-over-slo",
    "CryptorunReplicaNotRecovering": "replica-not-recovering",
    "CryptorunReplicationStepFailures": "step-failures",
    "CryptorunCorruptData": "corrupt-or-fenced",
    "CryptorunReplicationStepCorruptOrFenced": "corrupt-or-fenced",
    "CryptorunFencedOperation": "corrupt-or-fenced",
    "CryptorunFencedDataQuarantined": "corrupt-or-fenced",
    "CryptorunQuarantineSpike": "quarantine-spike",
    "CryptorunHotSequenceGaps": "hot-sequence-gaps",
    "CryptorunRegionDown": "peer-down",
    "CryptorunPeerDown": "peer-down",
    "CryptorunFailoverEpochChanged": "epoch-changed",
    "CryptorunDaemonNotReady": "daemon-not-ready",
    "CryptorunWorkerRestartLoop": "worker-restart-loop",
    "CryptorunIngestChecksumFailures": "ingest-checksum-failures",
}
# State alerts, where one bad scrape must not page: they need a `for:`.
# (Counter alerts already look back over a window and fire at once.)
ALERTS_NEEDING_FOR = frozenset(
    {
        "CryptorunReplicationLagOverSLO",
        "CryptorunReplicaNotRecovering",
        "CryptorunReplicationStepFailures",
        "CryptorunRegionDown",
        "CryptorunPeerDown",
        "CryptorunDaemonNotReady",
    }
)
SEVERITIES = frozenset({"critical", "warning", "info"})
EXPECTED_PANELS = frozenset(
    {
        "Lag vs SLO — $tier",
        "Lag / SLO ratio",
        "Pending at destination",
        "Replication throughput",
        "Step duration p95",
        "Hot records applied",
        "Step failures by reason",
        "Consistency errors by check",
        "Quarantined items",
        "Hot sequence gaps",
        "Replay buffer",
        "Region roles",
        "Fencing epoch",
        "Daemons scraped",
        "Ready",
        "Peers reachable",
        "Worker restarts",
        "Fenced operations",
    }
)
# Series that exist without the daemon exporting them: Prometheus' own per-target health.
SCRAPE_SERIES = frozenset({"up"})


# --- helpers ----------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    """Parse a YAML file with PyYAML (rule files and promtool tests are YAML)."""
    try:
        import yaml
    except ImportError:
        pytest.fail(
            "PyYAML is needed to read the Prometheus rule files: "
            "it belongs in the [test] extras of pyproject.toml"
        )
    return yaml.safe_load(path.read_text())


def rules_of(path: Path) -> list[dict[str, Any]]:
    return [rule for group in load_yaml(path)["groups"] for rule in group["rules"]]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in rules_of(ALERTS) if "alert" in rule]


def recording_names() -> set[str]:
    return {rule["record"] for rule in rules_of(RECORDING)}


def exported_series_names() -> set[str]:
    """Every series name the daemon's registry can expose, as Prometheus stores them."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {
                f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count", "_created")
            }
        elif family.type == "summary":
            names |= {
                family.name,
                f"{family.name}_sum",
                f"{family.name}_count",
                f"{family.name}_created",
            }
        else:
            names.add(family.name)
    return names


_PROMQL_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
        "inf",
        "nan",
    }
)


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: identifiers that are not label names,
    label values, range durations, functions, aggregations or keywords."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges, subqueries
    expr = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr
    )  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][\w:]*", expr):
        name = match.group(0)
        followed_by_call = expr[match.end() :].lstrip().startswith("(")
        if name.lower() in _PROMQL_KEYWORDS or followed_by_call:
            continue
        names.add(name)
    return names


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested inside collapsed rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_expressions(node: Any) -> Iterator[str]:
    """Every PromQL expression in the dashboard: panel targets and annotation queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield value
            else:
                yield from dashboard_expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_expressions(item)


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    promtool = require_binary("promtool", "prometheus")
    return subprocess.run(
        [promtool, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )


# --- promtool ------------------------------------------------------------------------------


@pytest.mark.needs_prometheus
def test_rule_files_pass_promtool_check() -> None:
    """`promtool check rules` accepts both rule files, lint included (no duplicate rules)."""
    result = run_promtool("check", "rules", RECORDING, ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == 2, result.stdout


@pytest.mark.needs_prometheus
def test_scrape_config_passes_promtool_check(tmp_path: Path) -> None:
    """`promtool check config` accepts prometheus.yml and finds both rule files it loads
    (and the CA and read token it names, laid out as the README makes them)."""
    from cryptorun_daemon.security.certs import init_certs

    shutil.copytree(PROMETHEUS_DIR, tmp_path / "deploy" / "prometheus")
    secrets = tmp_path / "config" / "secrets"
    init_certs(secrets / "tls", ["eu-central", "us-east"])
    (secrets / "read.token").write_text("read-token\n")
    result = run_promtool("check", "config", tmp_path / "deploy" / "prometheus" / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout


@pytest.mark.needs_prometheus
def test_rule_unit_tests_pass() -> None:
    """Every `promtool test rules` case in deploy/prometheus/tests passes."""
    assert RULE_TESTS, "no promtool rule tests found"
    result = run_promtool("test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS), result.stdout


# --- alert content -----------------------------------------------------------------------------


def test_every_alert_the_issue_asks_for_exists() -> None:
    """alerts.yml has exactly the alerts issue 8 lists (new ones are added here on purpose)."""
    assert {rule["alert"] for rule in alert_rules()} == set(EXPECTED_ALERTS)


def rules_named(name: str) -> list[dict[str, Any]]:
    """The alert rules called ``name`` (one alert may have a rule per tier)."""
    rules = [rule for rule in alert_rules() if rule["alert"] == name]
    assert rules, f"alerts.yml has no {name}"
    return rules


@pytest.mark.parametrize("name", sorted(EXPECTED_ALERTS))
def test_alert_has_severity_summary_description_and_runbook(name: str) -> None:
    """Each alert says how urgent it is, what is wrong, and links its playbook section."""
    for rule in rules_named(name):
        check_alert_metadata(rule)


def check_alert_metadata(rule: dict[str, Any]) -> None:
    """Severity, summary, description and a runbook link to the alert's own section."""
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert set(annotations) >= {"summary", "description", "runbook_url"}
    assert annotations["summary"].strip()
    assert len(annotations["description"].strip()) > len(annotations["summary"].strip())
    url, _, anchor = annotations["runbook_url"].partition("#")
    assert url == RUNBOOK
    assert anchor in RUNBOOK_ANCHORS
    assert anchor == EXPECTED_ALERTS[rule["alert"]]


@pytest.mark.parametrize("name", sorted(EXPECTED_ALERTS))
def test_state_alerts_wait_before_firing(name: str) -> None:
    """Alerts on a state (lag, down, not ready, failing) carry a `for:`; event alerts do not."""
    for rule in rules_named(name):
        if name in ALERTS_NEEDING_FOR:
            assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), rule
        else:
            assert "for" not in rule, f"{name}: counter alerts fire at once by design"


def test_every_runbook_anchor_is_used() -> None:
    """Each guaranteed playbook section is the runbook of at least one alert."""
    used = {rule["annotations"]["runbook_url"].partition("#")[2] for rule in alert_rules()}
    assert used == RUNBOOK_ANCHORS


def test_lag_alerts_compare_against_the_exported_slo_per_tier() -> None:
    """There is one lag-over-SLO rule per tier, each joining lag to the SLO on tier and region."""
    lag_rules = [r for r in alert_rules() if r["alert"] == "CryptorunReplicationLagOverSLO"]
    assert sorted(r["labels"]["tier"] for r in lag_rules) == ["cold", "hot", "warm"]
    for rule in lag_rules:
        assert (
            f'cryptorun_replication_lag_seconds{{tier="{rule["labels"]["tier"]}"}}' in rule["expr"]
        )
        assert re.search(r"on \(tier, region\) group_left", rule["expr"])
    not_recovering = next(r for r in alert_rules() if r["alert"] == "CryptorunReplicaNotRecovering")
    assert "predict_linear(cryptorun_replication_lag_seconds[" in not_recovering["expr"]


# --- promtool test coverage -----------------------------------------------------------------------


def alert_test_cases() -> list[dict[str, Any]]:
    return [
        case
        for path in RULE_TESTS
        for group in load_yaml(path)["tests"]
        for case in group.get("alert_rule_test", [])
    ]


@pytest.mark.parametrize("name", sorted(EXPECTED_ALERTS))
def test_every_alert_has_a_firing_and_a_quiet_promtool_case(name: str) -> None:
    """Each alert is unit-tested firing (labels and annotations) and not firing."""
    cases = [case for case in alert_test_cases() if case["alertname"] == name]
    firing = [case for case in cases if case.get("exp_alerts")]
    quiet = [case for case in cases if not case.get("exp_alerts")]
    assert firing, f"no promtool case where {name} fires"
    assert quiet, f"no promtool case where {name} stays quiet"
    for case in firing:
        for alert in case["exp_alerts"]:
            assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}
            assert alert["exp_labels"]["severity"] in SEVERITIES


def test_every_recording_rule_has_a_promtool_case() -> None:
    """Each recorded series is checked by a promql_expr_test with its expected labels."""
    tested = {
        case["expr"]
        for path in RULE_TESTS
        for group in load_yaml(path)["tests"]
        for case in group.get("promql_expr_test", [])
    }
    assert recording_names() <= tested


def test_recording_rule_names_follow_the_naming_convention() -> None:
    """Recorded series are named level:metric:operations, as Prometheus recommends."""
    for name in recording_names():
        assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", name), name


# --- no drift from metrics.py ---------------------------------------------------------------------


def test_metric_name_extraction_finds_selectors_only() -> None:
    """The extractor used below sees metric names, not labels, values, functions or durations."""
    expr = (
        'sum by (tier, from) (rate(cryptorun_x_total{reason=~"corrupt|up"}[5m])) '
        "> on (tier) group_left () level:y:rate5m offset 15m or up == 0 "
        "and changes(cryptorun_z[10m:1m]) > 30 * 60 and $region_var"
    )
    assert metric_names(expr) == {"cryptorun_x_total", "level:y:rate5m", "up", "cryptorun_z"}


def test_rules_reference_only_metrics_the_daemon_exports() -> None:
    """Every metric in a rule expression is in Metrics(), a recording rule, or `up`."""
    allowed = exported_series_names() | recording_names() | SCRAPE_SERIES
    for path in (RECORDING, ALERTS):
        for rule in rules_of(path):
            unknown = metric_names(rule["expr"]) - allowed
            assert not unknown, f"{path.name} {rule.get('alert') or rule.get('record')}: {unknown}"


def test_dashboard_queries_reference_only_metrics_the_daemon_exports() -> None:
    """Every metric in a dashboard query is in Metrics(), a recording rule, or `up`."""
    allowed = exported_series_names() | recording_names() | SCRAPE_SERIES
    expressions = list(dashboard_expressions(dashboard()))
    assert len(expressions) >= len(EXPECTED_PANELS)
    for expr in expressions:
        names = metric_names(expr)
        assert names, expr
        assert names <= allowed, f"{expr}: {names - allowed}"


# --- dashboard model -----------------------------------------------------------------------------


def test_dashboard_is_a_grafana_model_with_templated_datasource_region_and_tier() -> None:
    """The dashboard has its identity, a Prometheus datasource variable, and region/tier filters."""
    model = dashboard()
    assert model["uid"] == "cryptorun-replication"
    assert model["title"]
    assert isinstance(model["schemaVersion"], int)
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert set(variables) >= {"datasource", "region", "tier"}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    region = variables["region"]
    assert region["type"] == "query"
    assert region["datasource"]["uid"] == "${datasource}"
    assert "region" in region["definition"]
    assert region["multi"]
    assert region["includeAll"]
    tier = variables["tier"]
    assert tier["multi"]
    assert tier["includeAll"]
    assert tier["query"].split(",") == ["hot", "warm", "cold"]


def test_dashboard_panels_are_well_formed_and_use_the_templated_datasource() -> None:
    """Unique ids, positions inside the 24-column grid, and every query on ${datasource}."""
    panels = list(all_panels(dashboard()["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert 0 < grid["w"] <= 24 - grid["x"], panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["expr"].strip()


def test_dashboard_has_the_panels_the_issue_asks_for() -> None:
    """Lag vs SLO, throughput, failures, quarantine, hot gaps and buffer, roles and epochs."""
    titles = {panel["title"] for panel in all_panels(dashboard()["panels"])}
    assert titles >= EXPECTED_PANELS
    lag = next(p for p in all_panels(dashboard()["panels"]) if p["title"] == "Lag vs SLO — $tier")
    assert lag["repeat"] == "tier"
    exprs = " ".join(t["expr"] for t in lag["targets"])
    assert "cryptorun_replication_lag_seconds" in exprs
    assert "cryptorun:replication_slo_seconds:max" in exprs
