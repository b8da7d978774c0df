"""Headless swarm against a local node: ``tests/load/run`` (see --help).

Starts a private node (the CPU vLLM given by LLM_NODE_BENCH_ENGINE_URL or
LLM_NODE_TEST_ENGINE_URL, or a new one; a gateway on free ports; a fresh database), creates
keys in three tiers with different limits through the gateway's admin CLI, runs Locust
headless with tests/load/locustfile.py, and prints: accepted-request p50/p95/p99, the share
of 429s and their latency, the 5xx count (must be 0) and /healthz latency during the swarm.
Exit code 1 when any 5xx was seen or nothing was accepted.

With --gateway-url and --database-url it drives an existing node instead (e.g. the dev node:
--gateway-url http://127.0.0.1:8080 --database-url postgresql://postgres@127.0.0.1:5432/llmnode_dev).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from scripts.bench.localnode import LocalNode
from scripts.bench.report import print_table

ROOT = Path(__file__).resolve().parents[2]

LOCUSTFILE = ROOT / "tests" / "load" / "locustfile.py"
QUANTILES = ("p50", "p95", "p99", "max")

# Tier -> (number of keys, limits per key). Users are spread over all keys in turn, so each
# key carries about the same number of users and the tiers' limits decide who gets 429s.
TIERS: dict[str, tuple[int, dict[str, int]]] = {
    "premium": (2, {"rpm": 3000, "tpm": 5_000_000, "max_concurrent": 64}),
    "standard": (3, {"rpm": 300, "tpm": 500_000, "max_concurrent": 16}),
    "batch": (3, {"rpm": 30, "tpm": 50_000, "max_concurrent": 4}),
}


def make_keys(create) -> list[dict]:
    keys = []
    for tier, (count, limits) in TIERS.items():
        for i in range(count):
            keys.append({"tier": tier, "key": create(tier=tier, name=f"swarm-{tier}-{i}", **limits)})
    # Interleave tiers so every tier gets users from the first spawns on.
    return sorted(keys, key=lambda k: (keys.index(k) % 3, k["tier"]))


def run_locust(host: str, keys: list[dict], users: int, spawn_rate: int, seconds: int, work: Path) -> dict:
    summary = work / "summary.json"
    env = os.environ | {"LLM_NODE_LOAD_KEYS": json.dumps(keys), "LLM_NODE_LOAD_SUMMARY": str(summary)}
    argv = [str(Path(sys.executable).with_name("locust")), "-f", str(LOCUSTFILE), "--headless",
            "-u", str(users + 1), "-r", str(spawn_rate), "-t", f"{seconds}s", "--host", host,
            "--stop-timeout", "30", "--only-summary", "--loglevel", "WARNING", "--csv", str(work / "locust")]
    print(f"locust: {users} API clients + 1 /healthz probe for {seconds} s (spawn {spawn_rate}/s) "
          f"against {host} ...", flush=True)
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds + 180)
    (work / "locust.log").write_text(result.stdout + result.stderr)
    if not summary.exists():
        raise RuntimeError(f"locust wrote no summary (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return json.loads(summary.read_text())


def limiter_reasons(metrics_text: str) -> dict[str, float]:
    reasons: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "gateway_limiter_decisions_total" and sample.labels.get("decision") == "rejected":
                reasons[sample.labels["reason"]] = reasons.get(sample.labels["reason"], 0) + sample.value
    return reasons


def fmt_ms(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def report(summary: dict, users: int, seconds: int, rejected_by: dict[str, float] | None) -> None:
    accepted, limited, health = summary["accepted"], summary["rate_limited"], summary["healthz"]
    print_table(f"Swarm: {users} concurrent clients, {seconds} s, mixed streaming / non-streaming, 3 tiers",
                ["", "requests", "p50 ms", "p95 ms", "p99 ms", "max ms"],
                [["accepted (200)", accepted["count"], *(fmt_ms(accepted[k]) for k in QUANTILES)],
                 ["rate limited (429)", limited["count"], *(fmt_ms(limited[k]) for k in QUANTILES)],
                 ["/healthz during the swarm", health["count"], *(fmt_ms(health[k]) for k in QUANTILES)]],
                [f"all API requests: {summary['requests']}; share of 429: {limited['share']:.1%}; "
                 f"5xx: {summary['server_errors']} (must be 0); other statuses: {summary['other']}; "
                 f"/healthz failures: {health['failures']}",
                 *([f"limiter rejections by reason (gateway metrics): {rejected_by}"]
                   if rejected_by is not None else []),
                 "streams are timed to their last byte; Locust rounds times above 100 ms to 2 significant digits"])
    rows = [[name, f["count"], *(fmt_ms(f[k]) for k in ("p50", "p95", "p99"))]
            for name, f in sorted(summary["accepted_by_kind"].items())]
    print_table("Accepted requests by kind and tier", ["kind [tier]", "requests", "p50 ms", "p95 ms", "p99 ms"], rows)
    if summary["failures"]:
        print_table("Failures", ["what", "count"], sorted(summary["failures"].items(), key=lambda kv: -kv[1])[:15])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests/load/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=150)
    parser.add_argument("--spawn-rate", type=int, default=25)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--engine-url", help="engine for the private node (default: env or start one)")
    parser.add_argument("--gateway-url", help="drive this gateway instead of starting a node")
    parser.add_argument("--database-url", help="with --gateway-url: its database, to create the keys")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="llmnode-swarm-"))

    if args.gateway_url:
        if not args.database_url:
            parser.error("--gateway-url needs --database-url (keys are created with the admin CLI)")
        node = LocalNode(engine=None, database_url=args.database_url, redis_url="", log_dir=work)  # type: ignore[arg-type]
        keys = make_keys(node.create_key)
        summary = run_locust(args.gateway_url, keys, args.users, args.spawn_rate, args.seconds, work)
        rejected = None
    else:
        with LocalNode.start(args.engine_url, log_dir=work) as node:
            gateway = node.start_gateway()
            keys = make_keys(node.create_key)
            summary = run_locust(gateway.url, keys, args.users, args.spawn_rate, args.seconds, work)
            rejected = limiter_reasons(gateway.metrics_text())
    report(summary, args.users, args.seconds, rejected)
    print(f"\nlogs and Locust CSVs: {work}")
    ok = summary["server_errors"] == 0 and summary["accepted"]["count"] > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
