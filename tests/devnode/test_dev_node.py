"""`make dev` end to end: scripts/dev.py start brings up a gateway with a key, writes .dev/env
for the official openai client, and stop drains it. Reuses the session engine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from openai import OpenAI

from tests.support.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.engine


def run_dev(command: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/dev.py", command], cwd=ROOT, env=os.environ | env,
                          capture_output=True, text=True, timeout=300)


def read_env_file(path: Path) -> dict[str, str]:
    return dict(line.removeprefix("export ").split("=", 1) for line in path.read_text().splitlines())


def test_dev_node_starts_prints_a_working_key_and_stops(engine, tmp_path):
    env = {
        "LLM_NODE_DEV_DIR": str(tmp_path / "dev"),
        "LLM_NODE_DEV_ENGINE_URL": engine.url,
        "LLM_NODE_DEV_GATEWAY_PORT": str(free_port()),
        "LLM_NODE_DEV_METRICS_PORT": str(free_port()),
    }
    started = run_dev("start", env)
    try:
        assert started.returncode == 0, started.stderr
        values = read_env_file(tmp_path / "dev" / "env")
        assert values["OPENAI_API_KEY"].startswith("sk-")
        assert values["OPENAI_API_KEY"] in started.stdout  # printed once for the user
        assert f"curl -s {values['OPENAI_BASE_URL']}/chat/completions" in started.stdout
        assert oct((tmp_path / "dev" / "env").stat().st_mode & 0o777) == "0o600"

        client = OpenAI(base_url=values["OPENAI_BASE_URL"], api_key=values["OPENAI_API_KEY"])
        reply = client.chat.completions.create(model=engine.model, max_tokens=4,
                                               messages=[{"role": "user", "content": "hi"}])
        assert reply.usage.completion_tokens == 4

        again = run_dev("start", env)  # idempotent: same node, same key
        assert again.returncode == 0, again.stderr
        assert read_env_file(tmp_path / "dev" / "env")["OPENAI_API_KEY"] == values["OPENAI_API_KEY"]
    finally:
        stopped = run_dev("stop", env)
    assert stopped.returncode == 0 and "gateway" in stopped.stdout
    assert "stopped" in run_dev("status", env).stdout
