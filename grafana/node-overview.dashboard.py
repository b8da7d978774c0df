"""Node overview: is the node serving, how fast, how full, and is anything failing?

Latency and throughput come from the recording rules (prometheus/rules/recording.rules.yml),
so this dashboard stays cheap to load and shows exactly what the alerts see.
"""

from grafanalib.core import Dashboard, Templating

from grafana.panels import MODEL, layout, model_variable, stat, timeseries

UP_MAPPINGS = [{"type": "value", "options": {"0": {"text": "DOWN", "color": "red"},
                                             "1": {"text": "UP", "color": "green"}}}]

dashboard = Dashboard(
    title="LLM node: overview",
    uid="llm-node-overview",
    tags=["llm-node"],
    timezone="browser",
    refresh="10s",
    templating=Templating(list=[model_variable()]),
    panels=layout([
        ("Traffic", [
            timeseries("Gateway requests/s by status", [
                ("status:gateway_requests:rate1m", "{{status}}"),
            ], unit="reqps", stacked=True),
            timeseries("Engine requests finished/s", [
                (f"model_name:vllm_request_success:rate1m{{{MODEL}}}", "{{model_name}}"),
            ], unit="reqps"),
            timeseries("Tokens/s", [
                (f"model_name:vllm_prompt_tokens:rate1m{{{MODEL}}}", "prompt {{model_name}}"),
                (f"model_name:vllm_generation_tokens:rate1m{{{MODEL}}}", "generation {{model_name}}"),
            ], unit="short"),
        ]),
        ("Latency", [
            timeseries("Time to first token", [
                (f"model_name:vllm_time_to_first_token_seconds:quantile_rate1m{{{MODEL}}}",
                 "p{{quantile}} {{model_name}}"),
            ], unit="s"),
            timeseries("Inter-token latency", [
                (f"model_name:vllm_inter_token_latency_seconds:quantile_rate1m{{{MODEL}}}",
                 "p{{quantile}} {{model_name}}"),
            ], unit="s"),
            timeseries("End-to-end latency (engine)", [
                (f"model_name:vllm_e2e_request_latency_seconds:quantile_rate1m{{{MODEL}}}",
                 "p{{quantile}} {{model_name}}"),
            ], unit="s"),
        ]),
        ("Engine load", [
            timeseries("KV cache usage", [
                (f"vllm:kv_cache_usage_perc{{{MODEL}}}", "{{instance}} {{model_name}}"),
            ], unit="percentunit", description="Alert at 85% for 2 minutes (VllmKvCacheUsageHigh)."),
            timeseries("Running and waiting requests", [
                (f"sum by (model_name) (vllm:num_requests_running{{{MODEL}}})", "running {{model_name}}"),
                (f"sum by (model_name) (vllm:num_requests_waiting{{{MODEL}}})", "waiting {{model_name}}"),
            ]),
            timeseries("Gateway error and 429 ratios", [
                ("gateway:requests_5xx:ratio_rate1m", "5xx"),
                ("gateway:requests_429:ratio_rate1m", "429"),
            ], unit="percentunit"),
        ]),
        ("Targets", [
            stat("Scrape targets", [("up", "{{job}} {{instance}}")], width=16, mappings=UP_MAPPINGS),
            timeseries("Upstream errors/s", [
                ("upstream_kind:gateway_upstream_errors:rate1m", "{{upstream}} {{kind}}"),
            ], unit="reqps"),
        ]),
        ("Edge", [
            timeseries("Traefik requests/s by code", [
                ("sum by (code) (rate(traefik_entrypoint_requests_total[$__rate_interval]))", "{{code}}"),
            ], unit="reqps", width=12),
            stat("Cloudflare tunnel connections", [
                ("sum(cloudflared_tunnel_ha_connections)", "HA connections"),
            ], width=12, description="cloudflared keeps 4 connections; 0 means the tunnel is down."),
        ]),
    ]),
)
