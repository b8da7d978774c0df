"""vLLM engine detail: every V1 series that explains a slow or full engine.

Queries here are raw (not recorded), so any window and any breakdown can be chosen.
"""

from grafanalib.core import Dashboard, Templating

from grafana.panels import MODEL, layout, model_variable, stat, timeseries

RATE = "$__rate_interval"


def quantiles(metric: str, by: str = "model_name") -> list[tuple[str, str]]:
    """p50 and p95 of a vLLM histogram, per `by`."""
    return [
        (f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{{{MODEL}}}[{RATE}])))",
         f"p{int(q * 100)} {{{{{by}}}}}")
        for q in (0.5, 0.95)
    ]


dashboard = Dashboard(
    title="LLM node: vLLM engine",
    uid="llm-node-vllm",
    tags=["llm-node", "vllm"],
    timezone="browser",
    refresh="10s",
    templating=Templating(list=[model_variable()]),
    panels=layout([
        ("Scheduler", [
            timeseries("Requests running", [
                (f"vllm:num_requests_running{{{MODEL}}}", "{{instance}} {{model_name}}")]),
            timeseries("Requests waiting", [
                (f"vllm:num_requests_waiting{{{MODEL}}}", "{{instance}} {{model_name}}")]),
            timeseries("Preemptions/s", [
                (f"sum by (instance, model_name) (rate(vllm:num_preemptions_total{{{MODEL}}}[{RATE}]))",
                 "{{instance}} {{model_name}}")],
                description="Requests evicted from the KV cache and recomputed later."),
        ]),
        ("KV cache", [
            timeseries("KV cache usage", [
                (f"vllm:kv_cache_usage_perc{{{MODEL}}}", "{{instance}} {{model_name}}")], unit="percentunit"),
            timeseries("Prefix cache hit rate", [
                (f"sum by (model_name) (rate(vllm:prefix_cache_hits_total{{{MODEL}}}[{RATE}]))"
                 f" / sum by (model_name) (rate(vllm:prefix_cache_queries_total{{{MODEL}}}[{RATE}]))",
                 "{{model_name}}")], unit="percentunit",
                description="Share of prompt tokens served from the prefix cache."),
            stat("LoRA adapters", [
                ("max by (instance, max_lora, running_lora_adapters, waiting_lora_adapters) (vllm:lora_requests_info)",
                 "running [{{running_lora_adapters}}] waiting [{{waiting_lora_adapters}}] max {{max_lora}}")],
                width=8, text_mode="name", description="Only present when LoRA is enabled."),
        ]),
        ("Latency", [
            timeseries("Time to first token", quantiles("vllm:time_to_first_token_seconds"), unit="s"),
            timeseries("Inter-token latency", quantiles("vllm:inter_token_latency_seconds"), unit="s"),
            timeseries("End-to-end latency", quantiles("vllm:e2e_request_latency_seconds"), unit="s"),
            timeseries("Queue time", quantiles("vllm:request_queue_time_seconds"), unit="s",
                       description="Waiting before the first scheduling."),
            timeseries("Prefill time", quantiles("vllm:request_prefill_time_seconds"), unit="s"),
            timeseries("Decode time", quantiles("vllm:request_decode_time_seconds"), unit="s"),
        ]),
        ("Throughput", [
            timeseries("Tokens/s", [
                (f"sum by (model_name) (rate(vllm:prompt_tokens_total{{{MODEL}}}[{RATE}]))", "prompt {{model_name}}"),
                (f"sum by (model_name) (rate(vllm:generation_tokens_total{{{MODEL}}}[{RATE}]))",
                 "generation {{model_name}}"),
            ]),
            timeseries("Requests finished/s by reason", [
                (f"sum by (model_name, finished_reason) (rate(vllm:request_success_total{{{MODEL}}}[{RATE}]))",
                 "{{model_name}} {{finished_reason}}")], unit="reqps", stacked=True),
            timeseries("Tokens per engine step", quantiles("vllm:iteration_tokens_total"),
                       description="Batch size in tokens per scheduler iteration."),
        ]),
        ("Request shape", [
            timeseries("Prompt length (tokens)", quantiles("vllm:request_prompt_tokens")),
            timeseries("Generation length (tokens)", quantiles("vllm:request_generation_tokens")),
            timeseries("Requested max_tokens", quantiles("vllm:request_params_max_tokens")),
        ]),
        ("Process", [
            timeseries("Engine memory (RSS)", [
                ('process_resident_memory_bytes{job="vllm"}', "{{instance}}")], unit="bytes", width=12),
            timeseries("Engine API server CPU", [
                ('rate(process_cpu_seconds_total{job="vllm"}[$__rate_interval])', "{{instance}}")],
                unit="percentunit", width=12),
        ]),
    ]),
)
