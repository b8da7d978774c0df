"""The gateway's Prometheus metrics. Names are a contract: grafana/ and prometheus/ use them.

The gateway runs several worker processes, so prometheus-client's multiprocess mode is
used when PROMETHEUS_MULTIPROC_DIR is set (gauges then say how to combine processes; "live"
modes, so a worker that exited stops counting: see metrics_server.py).
No per-key label: key ids would explode cardinality; per-key usage lives in PostgreSQL. A `model`
label is a model the engines serve (the catalog's id: never a name a client made up), or "" for a
request that never got that far (401, unknown model...): as many values as served models.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Fine buckets at the low end: the gateway's own cost is budgeted in single milliseconds.
ADDED_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

REQUESTS = Counter("gateway_requests", "Requests answered, by route, HTTP status, key tier and model",
                   ["route", "status", "tier", "model"])
REQUEST_DURATION = Histogram("gateway_request_duration_seconds", "Whole request time, streams included",
                             ["route"], buckets=REQUEST_BUCKETS)
ADDED_LATENCY = Histogram("gateway_added_latency_seconds",
                          "Time spent in the gateway itself (auth, limits, validation, proxying), upstream excluded",
                          ["route"], buckets=ADDED_LATENCY_BUCKETS)
TIME_TO_FIRST_BYTE = Histogram("gateway_time_to_first_byte_seconds",
                               "From request received to the first response byte sent", ["route"],
                               buckets=REQUEST_BUCKETS)
# decision: allowed|rejected; reason: ok|rpm|tpm|concurrency|local_fallback|redis_unavailable
LIMITER_DECISIONS = Counter("gateway_limiter_decisions", "Rate limiter decisions", ["decision", "reason"])
ADMISSION_REJECTIONS = Counter("gateway_admission_rejections", "Requests refused by admission control",
                               ["reason"])  # in_flight|no_healthy_engine
IN_FLIGHT = Gauge("gateway_in_flight_requests", "Requests being served", multiprocess_mode="livesum")
AUTH_FAILURES = Counter("gateway_auth_failures", "Rejected API keys", ["reason"])
UPSTREAM_ERRORS = Counter("gateway_upstream_errors", "Engine failures seen by the gateway",
                          ["upstream", "kind"])  # connect|timeout|status_5xx|stream_broken
CIRCUIT_STATE = Gauge("gateway_circuit_state", "Circuit breaker per engine: 0 closed, 1 half-open, 2 open",
                      ["upstream"], multiprocess_mode="livemax")
ENGINE_HEALTHY = Gauge("gateway_engine_healthy", "Engine health as last probed (1 healthy)",
                       ["upstream"], multiprocess_mode="livemin")
PROMPT_TOKENS = Counter("gateway_prompt_tokens", "Prompt tokens served (from engine usage)", ["tier", "model"])
COMPLETION_TOKENS = Counter("gateway_completion_tokens", "Completion tokens served (from engine usage)",
                            ["tier", "model"])
DEPENDENCY_UP = Gauge("gateway_dependency_up", "Dependency reachable as last checked (1 up)",
                      ["dependency"], multiprocess_mode="livemin")  # postgres|redis|engine
