"""Every entry point of the gateway image starts in the environment its containers get.

The environment is built the way Docker builds it for the declared containers: the
Dockerfile's ENV (with the image's own, empty /tmp), then the container's env from the dev
stack under the mock runtime, and its secret uploads as files in GATEWAY_SECRETS_DIR
(with this machine's database and Redis in place of the stack's). An image-wide setting
that only one entry point prepares (PROMETHEUS_MULTIPROC_DIR, once) fails here.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path, PurePosixPath

import pytest

from llm_gateway.admin import build_parser
from services.launch import GATEWAY_SECRETS_DIR_ENV, gateway_secret_file
from tests.stacks.mock_runtime import settled_program
from tests.support.procs import ManagedProcess, free_port, http_ok

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "services" / "gateway" / "Dockerfile"


def admin_commands() -> list[str]:
    """Every subcommand of `python -m llm_gateway.admin`, read from its own parser (a new one
    is covered without editing this test)."""
    subparsers = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(subparsers) == 1, subparsers
    commands = list(subparsers[0].choices)
    assert "migrate" in commands, commands
    return commands


def dockerfile_env(image_tmp: Path) -> dict[str, str]:
    """The ENV instructions of the gateway's Dockerfile; paths under /tmp move to ``image_tmp``."""
    env: dict[str, str] = {}
    logical: list[str] = []
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if logical and stripped.startswith("#"):
            continue  # Docker drops comment lines inside a continued instruction
        logical.append(stripped.rstrip("\\").strip())
        if stripped.endswith("\\"):
            continue
        instruction, logical = " ".join(logical), []
        if instruction.upper().startswith("ENV "):
            for token in shlex.split(instruction[4:]):
                key, _, value = token.partition("=")
                env[key] = str(image_tmp / value[len("/tmp/"):]) if value.startswith("/tmp/") else value
    return env


def _environment(props: dict, secrets: dict[str, str], work: Path) -> dict[str, str]:
    image_tmp = work / "tmp"
    image_tmp.mkdir(exist_ok=True)
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(work)}
    env |= dockerfile_env(image_tmp)
    env |= dict(entry.split("=", 1) for entry in props.get("envs") or [])
    secrets_dir = work / "secrets"
    secrets_dir.mkdir(exist_ok=True)
    for upload in props.get("uploads") or []:
        name = PurePosixPath(upload["file"]).name
        (secrets_dir / name).write_text(secrets[name])
    env[GATEWAY_SECRETS_DIR_ENV] = str(secrets_dir)
    return env


@pytest.fixture(scope="module")
def declared() -> dict[str, dict]:
    """The dev stack's gateway and migration containers, as the mock runtime records them."""
    deployment = settled_program("dev")
    return {service: deployment.container(service).props for service in ("gateway", "gateway-migrate")}


def _secrets(database_url: str, redis_url: str) -> dict[str, str]:
    return {gateway_secret_file("database_url"): database_url, gateway_secret_file("redis_url"): redis_url,
            gateway_secret_file("admin_token"): "test-admin-token-0123456789"}


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def test_the_migration_job_and_every_admin_command_start(declared, migrated_database_url, redis_url):
    work = Path(tempfile.mkdtemp(prefix="llmnode-image-env-"))
    migrate = declared["gateway-migrate"]
    env = _environment(migrate, _secrets(migrated_database_url, redis_url), work)
    job = _run([*migrate["entrypoints"], *migrate["command"]], env)
    assert job.returncode == 0, job.stderr[-2000:]
    for command in ("--help", *(f"{c} --help" for c in admin_commands()), "list-keys"):
        result = _run([sys.executable, "-m", "llm_gateway.admin", *command.split()], env)
        assert result.returncode == 0, f"admin {command}: {result.stderr[-2000:]}"


def test_the_server_starts_and_answers(declared, migrated_database_url, redis_url, log_dir):
    work = Path(tempfile.mkdtemp(prefix="llmnode-image-env-"))
    gateway = declared["gateway"]
    env = _environment(gateway, _secrets(migrated_database_url, redis_url), work)
    port, metrics_port = free_port(), free_port()
    env |= {"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port), "GATEWAY_METRICS_PORT": str(metrics_port)}
    argv = [sys.executable if part in ("python", "python3") else part for part in gateway["entrypoints"]]
    proc = ManagedProcess(f"gateway-image-env-{port}", argv, log_dir, env=env)
    try:
        proc.wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 60, "live")
        assert http_ok(f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        assert proc.stop(timeout=30) == 0, proc.log_tail()
