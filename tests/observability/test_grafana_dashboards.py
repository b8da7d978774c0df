"""grafana/: generated dashboards are committed, use the fixed datasource and stable uids."""

from __future__ import annotations

import json

import yaml

from grafana.panels import DATASOURCE, DATASOURCE_UID
from grafana.render import COMMITTED_DIR, DASHBOARDS_DIR, provisioning_files, render_dashboards
from tests.observability.dashboards import is_edge_only, metric_names, panels, queries

EXPECTED_UIDS = {
    "node-overview.json": "llm-node-overview",
    "vllm-engine.json": "llm-node-vllm",
    "gateway.json": "llm-node-gateway",
}


def test_committed_json_matches_the_dashboard_code():
    rendered = render_dashboards()
    committed = {path.name: path.read_text() for path in COMMITTED_DIR.glob("*.json")}
    assert committed.keys() == rendered.keys(), "run `python -m grafana.render`"
    for name, text in rendered.items():
        assert committed[name] == text, f"grafana/dashboards/{name} is stale: run `python -m grafana.render`"


def test_dashboards_have_stable_uids():
    rendered = render_dashboards()
    assert {name: json.loads(text)["uid"] for name, text in rendered.items()} == EXPECTED_UIDS
    assert render_dashboards() == rendered  # rendering is deterministic (ids, order)


def test_every_panel_and_query_uses_the_fixed_datasource_uid():
    for name, text in render_dashboards().items():
        for panel in panels(json.loads(text)):
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == DATASOURCE, f"{name}: {panel['title']}"
            assert panel["targets"], f"{name}: {panel['title']} has no query"
            for target in panel["targets"]:
                assert target["datasource"] == DATASOURCE, f"{name}: {panel['title']}"


def test_engine_dashboards_filter_on_the_model_variable():
    for name in ("node-overview.json", "vllm-engine.json"):
        dashboard = json.loads(render_dashboards()[name])
        (model,) = [v for v in dashboard["templating"]["list"] if v["name"] == "model"]
        assert model["datasource"] == DATASOURCE
        assert model["query"].startswith("label_values(vllm:")
        vllm_queries = [q for q in queries({name: json.dumps(dashboard)})
                        if any(n.startswith("vllm:") for n in metric_names(q.expr))
                        or "model_name:" in q.expr]
        assert vllm_queries
        for q in vllm_queries:
            if "lora_requests_info" in q.expr or 'job="vllm"' in q.expr:
                continue  # series without a model_name label
            assert 'model_name=~"$model"' in q.expr, str(q)


def test_engine_series_are_never_added_up_across_models():
    """A node serves several models (engine groups): every aggregation of engine series keeps the
    model (model_name) or the engine (instance, which names its group), so no panel adds them up."""
    import re

    for q in queries(render_dashboards()):
        if not (any(n.startswith("vllm:") for n in metric_names(q.expr)) or "model_name:" in q.expr):
            continue
        for operator, labels in re.findall(r"\b(sum|max|min|avg|count|histogram_quantile)\b\s*(?:by\s*\(([^)]*)\))?",
                                           q.expr):
            if operator == "histogram_quantile":
                continue  # its argument is the aggregation checked here
            kept = {label.strip() for label in labels.split(",")}
            assert kept & {"model_name", "instance"}, f"{q}: {operator} without model_name or instance"


def test_the_issue_s_panels_exist():
    titles = {json.loads(t)["uid"]: {p["title"] for p in panels(json.loads(t))} for t in render_dashboards().values()}
    assert {"Time to first token", "Inter-token latency", "KV cache usage", "Running and waiting requests",
            "Gateway error and 429 ratios", "Scrape targets", "Tokens/s"} <= titles["llm-node-overview"]
    assert {"Prefix cache hit rate", "Preemptions/s", "Queue time", "Prompt length (tokens)",
            "Generation length (tokens)"} <= titles["llm-node-vllm"]
    assert {"Added latency (gateway only)", "In-flight requests", "Limiter decisions/s", "Auth failures/s",
            "Circuit breakers", "Tokens/s by tier"} <= titles["llm-node-gateway"]


def test_provisioning_files():
    files = provisioning_files("http://prometheus:9090")
    (source,) = yaml.safe_load(files["provisioning/datasources/prometheus.yml"])["datasources"]
    assert source["uid"] == DATASOURCE_UID and source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load(files["provisioning/dashboards/llm-node.yml"])["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == DASHBOARDS_DIR


def test_metric_name_scan_understands_our_queries():
    assert metric_names('sum by (route, le) (rate(gateway_added_latency_seconds_bucket{a="b"}[5m]))') == \
        ["gateway_added_latency_seconds_bucket"]
    assert metric_names("(sum(rate(x_total[1m])) or vector(0)) / sum(rate(y_total[1m]))") == ["x_total", "y_total"]
    assert is_edge_only("sum(cloudflared_tunnel_ha_connections)")
    assert not is_edge_only("up")
