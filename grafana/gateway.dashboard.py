"""Gateway: what the gateway adds, whom it turns away and why, and how its engines look to it.

Requests and tokens carry the model they were served by (`model`: a served model's id, "" for
requests turned away before one was known); per-key usage lives in PostgreSQL. With a few models
per node a legend by model is enough: no model variable.
"""

from grafanalib.core import Dashboard

from grafana.panels import layout, stat, timeseries

RATE = "$__rate_interval"

CIRCUIT_MAPPINGS = [{"type": "value", "options": {"0": {"text": "closed", "color": "green"},
                                                  "1": {"text": "half-open", "color": "orange"},
                                                  "2": {"text": "open", "color": "red"}}}]
UP_MAPPINGS = [{"type": "value", "options": {"0": {"text": "DOWN", "color": "red"},
                                             "1": {"text": "UP", "color": "green"}}}]


def route_quantile(metric: str, q: float) -> tuple[str, str]:
    return (f"histogram_quantile({q}, sum by (route, le) (rate({metric}_bucket[{RATE}])))",
            f"p{int(q * 100)} {{{{route}}}}")


dashboard = Dashboard(
    title="LLM node: gateway",
    uid="llm-node-gateway",
    tags=["llm-node", "gateway"],
    timezone="browser",
    refresh="10s",
    panels=layout([
        ("Requests", [
            timeseries("Requests/s by route and status", [
                (f"sum by (route, status) (rate(gateway_requests_total[{RATE}]))", "{{route}} {{status}}"),
            ], unit="reqps", stacked=True),
            timeseries("Requests/s by model", [
                (f'sum by (model, route) (rate(gateway_requests_total{{model!=""}}[{RATE}]))', "{{model}} {{route}}"),
            ], unit="reqps", stacked=True),
            timeseries("Request duration", [
                route_quantile("gateway_request_duration_seconds", 0.5),
                route_quantile("gateway_request_duration_seconds", 0.95),
            ], unit="s"),
            timeseries("Time to first byte", [
                route_quantile("gateway_time_to_first_byte_seconds", 0.5),
                route_quantile("gateway_time_to_first_byte_seconds", 0.95),
            ], unit="s"),
        ]),
        ("Gateway overhead", [
            timeseries("Added latency (gateway only)", [
                ("route:gateway_added_latency_seconds:quantile_rate1m", "p{{quantile}} {{route}}"),
            ], unit="s", description="Auth, limits, validation and proxying; the engine's time excluded."),
            timeseries("In-flight requests", [
                ("sum by (instance) (gateway_in_flight_requests)", "{{instance}}")]),
            timeseries("Admission rejections/s", [
                (f"sum by (reason) (rate(gateway_admission_rejections_total[{RATE}]))", "{{reason}}")],
                unit="reqps"),
        ]),
        ("Limits and keys", [
            timeseries("Limiter decisions/s", [
                (f"sum by (decision, reason) (rate(gateway_limiter_decisions_total[{RATE}]))",
                 "{{decision}} {{reason}}")], unit="reqps", stacked=True),
            timeseries("Auth failures/s", [
                (f"sum by (reason) (rate(gateway_auth_failures_total[{RATE}]))", "{{reason}}")], unit="reqps"),
            timeseries("Tokens/s by tier", [
                (f"sum by (tier) (rate(gateway_prompt_tokens_total[{RATE}]))", "prompt {{tier}}"),
                (f"sum by (tier) (rate(gateway_completion_tokens_total[{RATE}]))", "completion {{tier}}"),
            ]),
            timeseries("Tokens/s by model", [
                (f"sum by (model) (rate(gateway_prompt_tokens_total[{RATE}]))", "prompt {{model}}"),
                (f"sum by (model) (rate(gateway_completion_tokens_total[{RATE}]))", "completion {{model}}"),
            ]),
        ]),
        ("Engines and dependencies", [
            stat("Circuit breakers", [("max by (upstream) (gateway_circuit_state)", "{{upstream}}")],
                 width=8, mappings=CIRCUIT_MAPPINGS),
            stat("Engine health (probe)", [("min by (upstream) (gateway_engine_healthy)", "{{upstream}}")],
                 width=8, mappings=UP_MAPPINGS),
            stat("Dependencies", [("min by (dependency) (gateway_dependency_up)", "{{dependency}}")],
                 width=8, mappings=UP_MAPPINGS),
            timeseries("Upstream errors/s", [
                (f"sum by (upstream, kind) (rate(gateway_upstream_errors_total[{RATE}]))", "{{upstream}} {{kind}}"),
            ], unit="reqps", width=24),
        ]),
    ]),
)
