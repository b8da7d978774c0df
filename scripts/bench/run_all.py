"""Run every benchmark of the node and print their tables (``make bench``).

One private CPU vLLM is started for the whole run (or set LLM_NODE_BENCH_ENGINE_URL to an
engine nobody else uses); each benchmark then starts its own gateway on free ports. The
tables are also written to .dev/bench/<time>.txt.

    scripts/bench/run-all                 # everything, full size
    scripts/bench/run-all --quick         # small counts, for trying it out
    scripts/bench/run-all --only limiter_accuracy,memory_soak
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from .localnode import ENGINE_URL_ENV, ROOT, engine_url_from_env

# (module, full-size arguments, quick arguments). gateway_overhead is the gateway
# engineer's benchmark (direct vs gateway at fixed rates, maximum sustained rate);
# hop_costs breaks its floor down (one call on each hop, after an idle pause and busy).
BENCHMARKS: list[tuple[str, list[str], list[str]]] = [
    ("gateway_overhead", [], ["--rates", "50,200", "--duration", "3", "--rounds", "2", "--max-duration", "5"]),
    ("hop_costs", [], ["--calls", "200"]),
    ("streaming_ttft", ["--requests", "100", "--concurrency", "1,8"], ["--requests", "10", "--concurrency", "1,4"]),
    ("disconnect_abort", ["--trials", "20"], ["--trials", "3"]),
    ("limiter_accuracy", ["--clients", "150"],
     ["--clients", "150", "--rpm-limits", "10,60", "--concurrency-limits", "4"]),
    ("healthz_under_streams", ["--streams", "256", "--probes", "300"], ["--streams", "256", "--probes", "50"]),
    ("memory_soak", ["--requests", "100000"], ["--requests", "5000"]),
    ("chaos", [], ["--clients", "20", "--outage", "3", "--before", "2", "--after", "3"]),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (minutes, not a measurement)")
    parser.add_argument("--only", help="comma-separated benchmark names")
    args = parser.parse_args(argv)
    wanted = set(args.only.split(",")) if args.only else None
    unknown = (wanted or set()) - {name for name, _, _ in BENCHMARKS}
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")

    out_dir = ROOT / ".dev" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    out_path = out_dir / f"{datetime.datetime.now():%Y%m%d-%H%M%S}.txt"
    engine_url = engine_url_from_env()
    engine = None
    if not engine_url:
        from scripts.devnode.engine import start_engine

        print("starting a private CPU vLLM for the benchmarks (about a minute) ...", flush=True)
        engine = start_engine(Path(tempfile.mkdtemp(prefix="llmnode-bench-engine-")))
        engine_url = engine.url
    failures = []
    try:
        with open(out_path, "w") as out:
            out.write(f"llm-node benchmarks, {datetime.datetime.now().isoformat(timespec='seconds')}, "
                      f"engine {engine_url}{' (quick)' if args.quick else ''}\n")
            for name, full, quick in BENCHMARKS:
                if wanted and name not in wanted:
                    continue
                if not (ROOT / "scripts" / "bench" / f"{name}.py").exists():
                    print(f"\n== {name}: not present (scripts/bench/{name}.py), skipped ==", flush=True)
                    failures.append(f"{name} (missing)")
                    continue
                print(f"\n## {name}", flush=True)
                argv = [sys.executable, "-m", f"scripts.bench.{name}", *(quick if args.quick else full)]
                result = subprocess.run(argv,
                                        cwd=ROOT, env=os.environ | {ENGINE_URL_ENV: engine_url},
                                        stdout=subprocess.PIPE, text=True)
                print(result.stdout, end="", flush=True)
                out.write(f"\n## {name}\n{result.stdout}")
                if result.returncode != 0:
                    failures.append(f"{name} (exit {result.returncode})")
    finally:
        if engine is not None:
            engine.proc.stop()
    print(f"\ntables written to {out_path.relative_to(ROOT)}")
    if failures:
        print("did not complete: " + ", ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
