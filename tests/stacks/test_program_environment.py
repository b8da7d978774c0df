"""The Pulumi program's environment has the gateway's settings schema, and the schema is light:
the program (stacks/config.py) and services/launch.py import llm_gateway.settings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_RUNTIME = ("fastapi", "starlette", "uvicorn", "aiohttp", "asyncpg", "redis", "orjson", "prometheus_client")


def test_the_schema_needs_only_pydantic():
    """Importing the schema (and launch.py) loads none of the gateway's server dependencies."""
    code = ("import sys, services.launch, llm_gateway.settings; "
            f"print(sorted({{name.split('.')[0] for name in sys.modules}} & set({GATEWAY_RUNTIME!r})))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_every_project_environment_gets_the_gateway_package():
    """scripts/bootstrap and each CI job install .venv with the gateway package (the program imports
    its schema); a job installing only the root project would fail at `pulumi preview`."""
    line = "-c services/gateway/requirements.lock -e ./services/gateway -e '.[dev]'"
    assert line in (ROOT / "scripts" / "bootstrap").read_text()
    workflow = (ROOT / ".github" / "workflows" / "node.yml").read_text()
    installs = re.findall(r"\.venv/bin/pip install[^\n]*", workflow)
    assert installs and all(line in install for install in installs), installs
