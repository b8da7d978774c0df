"""The swarm's Locust file, run for a few seconds against the session gateway.

Not a measurement (tests/load/run is): it shows the locustfile drives the real gateway with
keys of several tiers, classifies answers (accepted, 429, 5xx) and writes its summary.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.engine

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def test_a_short_swarm_is_accepted_limited_and_never_5xx(gateway, make_key, tmp_path):
    keys = [{"tier": "premium", "key": make_key(tier="premium", rpm=10_000, max_concurrent=50)},
            {"tier": "batch", "key": make_key(tier="batch", rpm=2, max_concurrent=2)}]
    summary_path = tmp_path / "summary.json"
    env = os.environ | {"LLM_NODE_LOAD_KEYS": json.dumps(keys), "LLM_NODE_LOAD_SUMMARY": str(summary_path)}
    locust = Path(sys.executable).with_name("locust")
    result = subprocess.run([str(locust), "-f", str(LOCUSTFILE), "--headless", "-u", "9", "-r", "9", "-t", "8s",
                             "--host", gateway.url, "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "20"],
                            env=env, capture_output=True, text=True, timeout=120)
    assert summary_path.exists(), result.stderr[-2000:]
    summary = json.loads(summary_path.read_text())
    assert summary["server_errors"] == 0, summary["failures"]
    assert summary["other"] == 0, summary["failures"]
    assert summary["accepted"]["count"] > 0
    assert summary["rate_limited"]["count"] > 0  # the batch key (2/min) runs into its limit
    kinds = {name.split(" [")[0] for name in summary["accepted_by_kind"]}
    assert {"chat", "chat (stream)"} <= kinds
    assert summary["healthz"]["count"] > 0 and summary["healthz"]["failures"] == 0
    assert not summary["failures"], summary["failures"]
