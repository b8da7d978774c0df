"""The proof: every dashboard query, recording rule and alert works against live data.

A real Prometheus scrapes, with the project's own rendered scrape config and rule files,
the CPU vLLM engines of two models (tiny-llama for chat, tiny-embed for embeddings) and a real
gateway in front of both while traffic flows through them (including a 429 and an upstream
error). Then every query of every panel of every dashboard is evaluated
through Prometheus' HTTP API: it must parse and return at least one series with a real
(finite) value. A query that matches nothing fails, naming dashboard, panel and query.
Only panels fed solely by Traefik or cloudflared (which cannot run here) are exempt from
the data check; they must still parse, and are listed in the terminal summary.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlparse

import pytest
import yaml

from grafana.render import render_dashboards
from prometheus.render import GATEWAY_JOB, PROMETHEUS_JOB, VLLM_JOB, render_prometheus_config, rule_files
from tests.observability.conftest import NOT_CHECKED_LIVE
from tests.observability.dashboards import (
    PanelQuery,
    is_edge_only,
    label_values_query,
    queries,
    substitute,
    template_variables,
)
from tests.observability.failing_engine import FailingEngine
from tests.support.gateway_fixtures import Gateway, start_gateway
from tests.support.procs import free_port
from tests.support.prometheus import Prometheus, PromQLError, rules_dir, start_prometheus

pytestmark = pytest.mark.engine

SCRAPE_INTERVAL = "1s"  # fast scrapes: the whole proof takes seconds, not minutes
DEADLINE = 90.0  # seconds to wait for anything on a slow, loaded machine (polling, never fixed sleeps)

DASHBOARDS = render_dashboards()
ALL_QUERIES = queries(DASHBOARDS)
LIVE_QUERIES = [q for q in ALL_QUERIES if not is_edge_only(q.expr)]
EDGE_QUERIES = [q for q in ALL_QUERIES if is_edge_only(q.expr)]
RULES = [rule for text in rule_files().values() for group in yaml.safe_load(text)["groups"]
         for rule in group["rules"]]
RECORDING_RULES = [r for r in RULES if "record" in r]
ALERT_RULES = [r for r in RULES if "alert" in r]


def query_id(q: PanelQuery) -> str:
    return f"{q.dashboard}/{q.panel}/{q.ref_id}"


def rule_id(rule: dict) -> str:
    return rule.get("alert") or f"{rule['record']}{rule.get('labels', {})}"


# ------------------------------------------------------------------------------- traffic
def post_json(url: str, body: dict, headers: dict | None = None, timeout: float = 60.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()  # read to the end: streams finish too
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# A prompt longer than one KV block (128 tokens), sent twice, so the prefix cache gets hits.
LONG_PROMPT = " ".join(f"word{i}" for i in range(40))


def engine_traffic(engine_url: str, model: str) -> None:
    """Completions straight to the engine: plain, streamed, and a repeated long prompt."""
    for body in (
        {"prompt": "hello there", "max_tokens": 8},
        {"prompt": "tell me a story", "max_tokens": 12, "stream": True},
        {"prompt": LONG_PROMPT, "max_tokens": 4},
    ):
        status, answer = post_json(f"{engine_url}/v1/completions", {"model": model, **body})
        assert status == 200, answer[:300]


@dataclass
class LiveNode:
    prom: Prometheus
    model: str
    embed_model: str
    started_at: float
    at: float  # every check evaluates at this instant: just after the traffic was scraped and recorded

    def window(self) -> str:
        """What $__rate_interval becomes: a range covering everything since Prometheus started (>= 30 s)."""
        return f"{max(30, math.ceil(self.at - self.started_at) + 10)}s"


def scraped_value(prom: Prometheus, expr: str) -> float:
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else -1.0


def wait_until_scraped(prom: Prometheus, expr: str, at_least: float) -> None:
    """Until Prometheus has scraped ``expr`` reaching ``at_least`` (the value just read at the source)."""
    prom.wait_until(lambda: scraped_value(prom, expr) >= at_least, DEADLINE,
                    f"scraping {expr} >= {at_least}")


def gateway_traffic(main: Gateway, failing: Gateway, keys: dict[str, str], model: str, embed_model: str) -> None:
    """Through the real gateway: served requests of every tier (one streamed, one for embeddings),
    a 401, a 429, and requests to the failing engine (upstream 5xx, then the open breaker's 503)."""
    def chat(gateway: Gateway, key: str, **extra) -> int:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, **extra}
        status, _answer = post_json(f"{gateway.url}/v1/chat/completions", body, {"authorization": f"Bearer {key}"})
        return status

    assert chat(main, keys["standard"]) == 200
    assert chat(main, keys["premium"], stream=True) == 200
    status, answer = post_json(f"{main.url}/v1/completions", {"model": model, "prompt": "hi", "max_tokens": 8},
                               {"authorization": f"Bearer {keys['batch']}"})
    assert status == 200, answer[:300]
    status, answer = post_json(f"{main.url}/v1/embeddings", {"model": embed_model, "input": ["hi", LONG_PROMPT]},
                               {"authorization": f"Bearer {keys['standard']}"})
    assert status == 200, answer[:300]
    assert chat(main, "sk-unknown-key") == 401
    chat(main, keys["rpm1"])  # the first of this minute passes, the second cannot
    assert chat(main, keys["rpm1"]) == 429
    failures = [chat(failing, keys["standard"]) for _ in range(2)]
    assert all(status >= 500 for status in failures), failures


def gateway_requests_answered(*gateways: Gateway) -> float:
    return sum(g.metric("gateway_requests_total") for g in gateways)


@pytest.fixture(scope="module")
def live(engine, embed_engine, tmp_path_factory, log_dir, migrated_database_url, redis_url, make_key) -> LiveNode:
    failing_engine = FailingEngine(engine.model)
    gateways: list[Gateway] = []
    prom = None
    try:
        common = dict(database_url=migrated_database_url, redis_url=redis_url, key_cache_ttl_seconds=1.0,
                      shutdown_grace_seconds=5.0)
        # Two workers, as on the node: the multiprocess metrics path is the one scraped.
        main = start_gateway(log_dir, name="gateway-observed", engines=[engine.url],
                             embedding_engines=[embed_engine.url], workers=2, **common)
        gateways.append(main)
        failing = start_gateway(log_dir, name="gateway-failing-upstream", engines=[failing_engine.url],
                                workers=1, health_check_interval_seconds=0.5, **common)
        gateways.append(failing)
        keys = {tier: make_key(tier=tier) for tier in ("premium", "standard", "batch")}
        keys["rpm1"] = make_key(tier="batch", rpm=1)

        work_dir = tmp_path_factory.mktemp("prometheus-live")
        port = free_port()
        targets = {
            VLLM_JOB: [urlparse(engine.url).netloc, urlparse(embed_engine.url).netloc],
            # The gateways' metrics ports, as on the node (never their API ports).
            GATEWAY_JOB: [urlparse(g.metrics_url).netloc for g in gateways],
            PROMETHEUS_JOB: [f"127.0.0.1:{port}"],
        }
        config = render_prometheus_config(targets, scrape_interval=SCRAPE_INTERVAL, rules_dir=rules_dir(work_dir))
        prom = start_prometheus(config, work_dir, log_dir=log_dir, rule_files=rule_files(), port=port)
        started_at = time.time()
        prom.wait_for_targets_up(targets, timeout=DEADLINE)

        # Traffic in three waves, each one seen by a scrape before the next, so every counter
        # and histogram has at least two increasing samples (rate() and quantiles need them).
        for _ in range(3):
            engine_traffic(engine.url, engine.model)
            gateway_traffic(main, failing, keys, engine.model, embed_engine.model)
            wait_until_scraped(prom, "sum(vllm:request_success_total)",
                               engine.metric("vllm:request_success_total")
                               + embed_engine.metric("vllm:request_success_total"))
            wait_until_scraped(prom, "sum(gateway_requests_total)", gateway_requests_answered(*gateways))
        assert failing_engine.requests_failed > 0, "the failing engine was never tried"
        # The recording rules have evaluated on the new data once every recorded series exists.
        for rule in RECORDING_RULES:
            prom.wait_for_series(rule["record"], timeout=DEADLINE)
        # Checks evaluate at this instant, like a dashboard opened now: however slowly they run
        # afterwards, the 1m windows of the recording rules still cover the traffic.
        yield LiveNode(prom=prom, model=engine.model, embed_model=embed_engine.model, started_at=started_at,
                       at=time.time())
    finally:
        if prom is not None:
            prom.stop()
        for gateway in gateways:
            gateway.stop()
        failing_engine.stop()


# ------------------------------------------------------------------------------- checks
def finite_series(result: list[dict]) -> list[dict]:
    return [s for s in result if math.isfinite(float(s["value"][1]))]


def evaluate(live: LiveNode, expr: str, what: str) -> list[dict]:
    try:
        return live.prom.query(expr, at=live.at)
    except PromQLError as error:
        pytest.fail(f"{what}: invalid PromQL: {error}")


@pytest.mark.parametrize("panel_query", LIVE_QUERIES, ids=query_id)
def test_panel_query_returns_data(live, panel_query):
    variables = {name: live.model for name in template_variables(DASHBOARDS)}
    expr = substitute(panel_query.expr, variables, live.window())
    assert "$" not in expr, f"{panel_query}: unknown variable left in {expr!r}"
    result = evaluate(live, expr, str(panel_query))
    assert finite_series(result), (f"No data: {panel_query}\n  evaluated as: {expr}\n"
                                   f"  got {len(result)} series, none with a finite value: {result[:3]}")


@pytest.mark.parametrize("panel_query", EDGE_QUERIES, ids=query_id)
def test_edge_only_panel_query_parses(live, panel_query, request):
    """Traefik / cloudflared cannot run here: the query must be valid PromQL; listed as not live-checked."""
    variables = {name: live.model for name in template_variables(DASHBOARDS)}
    expr = substitute(panel_query.expr, variables, live.window())
    evaluate(live, expr, str(panel_query))  # fails on a parse error
    request.config.stash[NOT_CHECKED_LIVE].append(str(panel_query))


# The second model's own series, from its engine and from the gateway: a dashboard shows it too.
SECOND_MODEL_SERIES = (
    'vllm:request_success_total{model_name="%(model)s"}',
    'vllm:prompt_tokens_total{model_name="%(model)s"}',
    'gateway_requests_total{model="%(model)s", route="/v1/embeddings", status="200"}',
    'gateway_prompt_tokens_total{model="%(model)s"}',
)


@pytest.mark.parametrize("series", SECOND_MODEL_SERIES)
def test_the_embedding_model_has_its_series(live, series):
    expr = f"sum(increase({series % {'model': live.embed_model}}[{live.window()}]))"
    result = finite_series(evaluate(live, expr, series))
    assert result and float(result[0]["value"][1]) > 0, f"no traffic recorded for {live.embed_model}: {expr}"


@pytest.mark.parametrize("name", sorted(template_variables(DASHBOARDS)))
def test_template_variable_offers_the_served_model(live, name):
    variable = template_variables(DASHBOARDS)[name]
    parsed = label_values_query(variable["query"])
    assert parsed, f"variable ${name}: unsupported query {variable['query']!r}"
    selector, label = parsed
    values = {series["metric"].get(label) for series in evaluate(live, selector, f"variable ${name}")}
    assert {live.model, live.embed_model} <= values, f"variable ${name} would offer {values}, not both served models"


@pytest.mark.parametrize("rule", RECORDING_RULES, ids=rule_id)
def test_recording_rule_is_valid_and_records_live_data(live, rule):
    result = evaluate(live, rule["expr"], f"recording rule {rule_id(rule)}")
    assert finite_series(result), f"recording rule {rule_id(rule)} has no data: {rule['expr']}"
    matchers = ",".join(f'{k}="{v}"' for k, v in rule.get("labels", {}).items())
    assert live.prom.query(f"{rule['record']}{{{matchers}}}", at=live.at), f"{rule_id(rule)} was never recorded"


@pytest.mark.parametrize("rule", ALERT_RULES, ids=rule_id)
def test_alert_expression_is_valid(live, rule):
    evaluate(live, rule["expr"], f"alert {rule['alert']}")  # may be empty: the node is healthy


def test_prometheus_loaded_every_rule_healthy(live):
    loaded = {rule["name"]: rule for group in live.prom.rule_groups() for rule in group["rules"]}
    assert {r.get("alert") or r["record"] for r in RULES} <= loaded.keys()
    unhealthy = {name: rule.get("lastError") for name, rule in loaded.items() if rule["health"] != "ok"}
    assert not unhealthy, unhealthy


def test_every_dashboard_query_was_checked():
    """Guards the walk itself: a dashboard with no queries found would make the proof vacuous."""
    for name, text in DASHBOARDS.items():
        title = json.loads(text)["title"]
        assert [q for q in ALL_QUERIES if q.dashboard == title], f"no queries found in {name}"
    assert EDGE_QUERIES and len(LIVE_QUERIES) > 30
