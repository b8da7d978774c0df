"""Checks that hold for every node, local or deployed (see conftest.py for which one runs).

Locally (``make test``) they run against the real processes on this machine; with
``--hosts`` they run against a node deployed by ``pulumi up``.
"""

from __future__ import annotations

import re

import pytest

from .node import wait_for

pytestmark = pytest.mark.engine


def test_each_service_runs_and_listens_on_its_port(node):
    problems = []
    for service in node.services:
        listener = node.listener(service)
        if not listener.command_lines:
            problems.append(f"{service.name}: nothing listens on port {service.port}")
        elif not any(re.search(service.process, line) for line in listener.command_lines):
            problems.append(f"{service.name}: port {service.port} is held by {listener.command_lines}, "
                            f"not a process matching /{service.process}/")
    assert not problems, "\n".join(problems)


def test_gateway_is_live_and_ready(node):
    http = node.http()
    assert http.get(node.api_url + "/healthz", timeout=10).status_code == 200
    ready = http.get(node.api_url + "/readyz", timeout=10)
    assert ready.status_code == 200, ready.text


def test_a_real_completion_with_a_real_key(node):
    http = node.http()
    answer = http.post(node.api_url + "/v1/chat/completions", timeout=120,
                       headers={"Authorization": f"Bearer {node.api_key}"},
                       json={"model": node.model, "max_tokens": 8,
                             "messages": [{"role": "user", "content": "Say hello."}]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] > 0
    assert body["usage"]["prompt_tokens"] > 0


def test_requests_without_a_key_are_refused_in_openai_shape(node):
    answer = node.http().post(node.api_url + "/v1/chat/completions", timeout=30,
                              json={"model": node.model, "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 401
    assert set(answer.json()["error"]) >= {"message", "type"}


def test_metrics_are_not_served_on_the_api_address(node):
    # The gateway's metrics live on a separate port that the edge never routes.
    assert node.http().get(node.api_url + "/metrics", timeout=10).status_code == 404


def test_prometheus_scrapes_every_target_and_all_are_up(node):
    def every_job_up():
        targets = node.prometheus_targets()
        jobs = {t["labels"]["job"] for t in targets}
        return jobs >= node.expected_jobs and all(t["health"] == "up" for t in targets) and targets

    # Scrape interval is 5 s: the first scrape of each target lands within a few intervals.
    wait_for(every_job_up, timeout=60)
    targets = node.prometheus_targets()
    assert {t["labels"]["job"] for t in targets} >= node.expected_jobs
    down = [(t["labels"]["job"], t["scrapeUrl"], t.get("lastError")) for t in targets if t["health"] != "up"]
    assert not down, f"targets down: {down}"
