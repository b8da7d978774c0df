"""prometheus/: the scrape config and rules pass promtool, and every alert is unit-tested."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from prometheus.render import (
    COMMITTED_CONFIG,
    DEFAULT_TARGETS,
    GATEWAY_JOB,
    RULES_DIR,
    render_prometheus_config,
    rule_files,
)
from services.launch import GatewaySpec
from tests.support.prometheus import PROMTOOL_BIN

ROOT = Path(__file__).resolve().parents[2]
UNIT_TESTS = sorted((ROOT / "prometheus" / "tests").glob("*.test.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"


def promtool(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([PROMTOOL_BIN, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def alert_rules() -> list[dict]:
    return [rule for text in rule_files().values() for group in yaml.safe_load(text)["groups"]
            for rule in group["rules"] if "alert" in rule]


def test_committed_config_is_rendered_from_the_default_targets():
    assert COMMITTED_CONFIG.read_text() == render_prometheus_config(DEFAULT_TARGETS), \
        "prometheus/prometheus.yml is stale: run `python -m prometheus.render > prometheus/prometheus.yml`"


def test_promtool_check_config_with_the_rules(tmp_path):
    config = tmp_path / "prometheus.yml"
    config.write_text(render_prometheus_config(DEFAULT_TARGETS, rules_dir=RULES_DIR))
    result = promtool("check", "config", str(config))
    # The config's rule glob must really find our rule files (promtool checks them too).
    assert f"SUCCESS: {len(rule_files())} rule files found" in result.stdout


def test_promtool_check_rules():
    files = [str(RULES_DIR / name) for name in rule_files()]
    assert len(files) >= 2
    promtool("check", "rules", *files)


@pytest.mark.parametrize("unit_test", UNIT_TESTS, ids=lambda p: p.name)
def test_promtool_rule_unit_tests(unit_test):
    promtool("test", "rules", str(unit_test))


def test_every_alert_has_a_firing_and_a_silent_case():
    firing, silent = set(), set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), f"alerts never shown firing: {sorted(names - firing)}"
    assert names - silent == set(), f"alerts never shown silent: {sorted(names - silent)}"


def test_every_alert_has_severity_summary_and_a_runbook_entry():
    anchors = {re.sub(r"[^a-z0-9_-]", "", line[3:].strip().lower().replace(" ", "-"))
               for line in RUNBOOKS.read_text().splitlines() if line.startswith("## ")}
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"].strip(), name
        path, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert (ROOT / path).resolve() == RUNBOOKS, f"{name}: runbook_url must point into docs/runbooks.md"
        assert anchor in anchors, f"{name}: no '## ' heading for #{anchor} in docs/runbooks.md"


def test_the_issue_s_alerts_all_exist():
    assert {rule["alert"] for rule in alert_rules()} >= {
        "VllmKvCacheUsageHigh", "VllmTimeToFirstTokenHigh", "VllmWaitingQueueDeep", "VllmPreempting",
        "GatewayHigh5xxRatio", "Gateway429Surge", "GatewayCircuitBreakerOpen", "TargetDown",
        "CloudflaredNotConnected", "GatewayNotReady",
    }


def test_gateway_is_scraped_on_its_metrics_port_not_its_api_port():
    spec = GatewaySpec(engines=["http://engine-0:8000"])
    (target,) = DEFAULT_TARGETS[GATEWAY_JOB]
    assert target.endswith(f":{spec.metrics_port}") and not target.endswith(f":{spec.port}")


def test_jobs_without_targets_are_left_out_and_intervals_applied():
    config = yaml.safe_load(render_prometheus_config(
        {"vllm": ["a:8000", "b:8000"], "cloudflared": []}, scrape_interval="1s", rules_dir="/r"))
    assert [job["job_name"] for job in config["scrape_configs"]] == ["vllm"]
    assert config["scrape_configs"][0]["static_configs"][0]["targets"] == ["a:8000", "b:8000"]
    assert config["global"]["scrape_interval"] == "1s"
    assert config["rule_files"] == ["/r/*.rules.yml"]
