"""tests/support/prometheus.py itself: starts a real Prometheus, reports PromQL errors, stops."""

from __future__ import annotations

import pytest

from prometheus.render import PROMETHEUS_JOB, render_prometheus_config
from tests.support.procs import free_port, port_open
from tests.support.prometheus import PromQLError, rules_dir


def test_prometheus_scrapes_itself_evaluates_rules_and_rejects_bad_promql(prometheus_factory):
    port = free_port()
    rules = {"self.rules.yml": "groups:\n- name: t\n  rules:\n  - record: job:up:sum\n    expr: sum by (job) (up)\n"}
    prom = prometheus_factory(
        lambda work_dir: render_prometheus_config({PROMETHEUS_JOB: [f"127.0.0.1:{port}"]}, scrape_interval="1s",
                                                  rules_dir=rules_dir(work_dir)),
        rule_files=rules, port=port)
    prom.wait_for_targets_up([PROMETHEUS_JOB], timeout=60)
    (series,) = prom.wait_for_series('job:up:sum{job="prometheus"}', timeout=60)
    assert series["value"][1] == "1"
    with pytest.raises(PromQLError) as error:
        prom.query("sum(rate(up[1m])")
    assert error.value.error_type == "bad_data"
    prom.stop()
    assert not port_open("127.0.0.1", port)
