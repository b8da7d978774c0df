"""The swarm: many concurrent API clients, mixed streaming and non-streaming, keys in tiers.

Run it headless through ``tests/load/run`` (starts a node, makes the keys, prints the
figures), or by hand against any gateway:

    LLM_NODE_LOAD_KEYS='[{"tier": "standard", "key": "sk-..."}]' \
    .venv/bin/locust -f tests/load/locustfile.py --headless -u 150 -r 25 -t 60s --host http://127.0.0.1:8080

Environment: LLM_NODE_LOAD_KEYS (JSON list of {"tier", "key"}; users are spread over the
keys in turn), LLM_NODE_LOAD_MODEL (default tiny-llama), LLM_NODE_LOAD_SUMMARY (a path: the
figures below are written there as JSON when the run ends).

Statistics are kept by outcome: each API request is recorded under the method
"ACCEPTED" (200), "429", "5XX" or "OTHER" and the name of its kind, so accepted-request
percentiles are not mixed with the fast 429 answers. Streams are timed to their last byte.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time

from locust import FastHttpUser, HttpUser, between, constant, events, task
from locust.stats import StatsEntry

KEYS: list[dict] = json.loads(os.environ.get("LLM_NODE_LOAD_KEYS", "[]"))
MODEL = os.environ.get("LLM_NODE_LOAD_MODEL", "tiny-llama")
PROMPTS = ["Tell me a story about a robot.", "Summarise the plot of a film in one line.",
           "List three colours.", "What is a large language model?", "Write a haiku about the sea."]
_next_key = itertools.cycle(range(max(1, len(KEYS))))


def outcome(status: int) -> str:
    if status == 200:
        return "ACCEPTED"
    if status == 429:
        return "429"
    if 500 <= status < 600 or status == 0:  # 0: connection failed
        return "5XX"
    return "OTHER"


def stream_problem(data: bytes) -> str | None:
    """Why an SSE body is not a clean, complete stream (None when it is)."""
    events_ = [line[6:] for line in data.split(b"\n") if line.startswith(b"data: ")]
    if not events_ or events_[-1].strip() != b"[DONE]":
        return f"stream ended without [DONE]: {data[-160:]!r}"
    for event in events_[:-1]:
        if "error" in json.loads(event):
            return f"error event in stream: {event[:160]!r}"
    return None


class ApiClient(FastHttpUser):
    """One API client: a key of some tier, requests of mixed kinds with short pauses."""

    wait_time = between(0.2, 1.5)
    weight = 150

    def on_start(self) -> None:
        if not KEYS:
            raise RuntimeError("LLM_NODE_LOAD_KEYS is empty: give at least one API key")
        entry = KEYS[next(_next_key)]
        self.tier, self.key = entry["tier"], entry["key"]

    def _post(self, kind: str, path: str, body: dict, stream: bool) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        start = time.perf_counter()
        with self.client.post(path, json=body, headers=headers, stream=stream, catch_response=True,
                              name=f"{kind} [{self.tier}]") as response:
            status = response.status_code or 0
            broken = None
            if stream and status == 200:
                # Read the whole event stream; a stream that ends without [DONE] or carries an
                # error event is a failure even though it started with 200.
                data = b"".join(iter(lambda: response.stream.read(65536), b""))
                response.request_meta["response_length"] = len(data)
                broken = stream_problem(data)
            response.request_meta["response_time"] = (time.perf_counter() - start) * 1000
            response.request_meta["request_type"] = outcome(status)
            if broken:
                response.failure(broken)
            elif status in (200, 429):
                response.success()  # a 429 is the limiter working: recorded apart, not an error
            else:
                response.failure(f"{status}: {(response.text or '')[:200]}")

    @task(5)
    def chat(self) -> None:
        self._post("chat", "/v1/chat/completions", {
            "model": MODEL, "max_tokens": random.choice((8, 16, 32)),
            "messages": [{"role": "user", "content": random.choice(PROMPTS)}]}, stream=False)

    @task(4)
    def chat_stream(self) -> None:
        self._post("chat (stream)", "/v1/chat/completions", {
            "model": MODEL, "max_tokens": random.choice((16, 32, 64)), "stream": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": random.choice(PROMPTS)}]}, stream=True)

    @task(1)
    def completion(self) -> None:
        self._post("completion", "/v1/completions", {
            "model": MODEL, "max_tokens": 16, "prompt": random.choice(PROMPTS)}, stream=False)


class HealthProbe(HttpUser):
    """Liveness seen from outside during the swarm: /healthz, five times a second."""

    fixed_count = 1
    wait_time = constant(0.2)

    @task
    def healthz(self) -> None:
        self.client.get("/healthz", name="/healthz")


def summarise(stats) -> dict:
    """The figures tests/load/run prints, from Locust's own statistics."""
    def merged(method: str, name: str) -> StatsEntry:
        total = StatsEntry(stats, name, method, use_response_times_cache=False)
        for entry in stats.entries.values():
            if entry.method == method:
                total.extend(entry)
        return total

    def figures(entry: StatsEntry) -> dict:
        return {"count": entry.num_requests,
                **{f"p{p}": entry.get_response_time_percentile(p / 100) for p in (50, 95, 99)},
                "max": entry.max_response_time if entry.num_requests else None}

    api = {method: merged(method, "api") for method in ("ACCEPTED", "429", "5XX", "OTHER")}
    total = sum(e.num_requests for e in api.values())
    health = stats.get("/healthz", "GET")
    return {
        "requests": total,
        "accepted": figures(api["ACCEPTED"]),
        "accepted_by_kind": {e.name: figures(e) for e in stats.entries.values() if e.method == "ACCEPTED"},
        "rate_limited": {**figures(api["429"]), "share": api["429"].num_requests / total if total else 0.0},
        "server_errors": api["5XX"].num_requests,
        "other": api["OTHER"].num_requests,
        "failures": {f"{e.method} {e.name}: {e.error}": e.occurrences for e in stats.errors.values()},
        "healthz": {**figures(health), "failures": health.num_failures},
        "duration_seconds": stats.last_request_timestamp - stats.start_time if stats.last_request_timestamp else 0,
    }


@events.quitting.add_listener
def write_summary(environment, **_) -> None:
    path = os.environ.get("LLM_NODE_LOAD_SUMMARY")
    if path:
        with open(path, "w") as out:
            json.dump(summarise(environment.stats), out, indent=2)
