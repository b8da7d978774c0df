"""`make dev` starts one engine per engine group of the dev stack and hands the gateway both
lists (generation and embedding engines). The processes are recorded, not run: the real start
is tests/devnode/test_dev_node.py (one engine, shared with the session) and `make dev` itself."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest

from scripts.devnode import node
from services.launch import engine_process_argv
from stacks.config import load_engine_specs


class Recorded:
    """A DetachedProcess that records what it would start."""

    started: ClassVar[dict[str, tuple[list[str], dict[str, str]]]] = {}

    def __init__(self, name: str, state_dir: Path):
        self.name = name

    def pid(self):
        return None

    def start(self, argv, env, cwd):
        Recorded.started[self.name] = (list(argv), dict(env))

    def wait_until(self, ready, timeout, what):
        pass

    def stop(self, timeout: float = 30) -> bool:
        return True


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    Recorded.started = {}
    monkeypatch.setattr(node, "DetachedProcess", Recorded)
    monkeypatch.setattr(node, "STATE", tmp_path)
    monkeypatch.setattr(node, "ensure_postgres", lambda: "postgresql://unused")
    monkeypatch.setattr(node, "ensure_database", lambda dsn, name: "postgresql://unused/llmnode_dev")
    monkeypatch.setattr(node, "ensure_redis", lambda: "redis://unused")
    monkeypatch.setattr(node, "_admin", lambda args, url: '{"key": "sk-test"}')
    monkeypatch.delenv("LLM_NODE_DEV_ENGINE_URL", raising=False)
    return Recorded.started


def test_dev_node_starts_every_engine_group_and_the_gateway_with_both(recorded):
    ports = node.DevPorts(engine=18100, gateway=18180, metrics=18190)
    info = node.start(ports)

    assert list(recorded) == ["engine-chat", "engine-embed", "gateway"]
    specs, _ = node.dev_specs(ports)
    for group in ("chat", "embed"):
        argv, _ = recorded[f"engine-{group}"]
        assert argv[1:] == engine_process_argv(specs[group], "python")[1:]
        assert argv[argv.index("--served-model-name") + 1] == load_engine_specs("dev")[group].served_model_name
    assert "--runner" in recorded["engine-embed"][0] and "--enable-lora" not in recorded["engine-embed"][0]
    gateway_env = recorded["gateway"][1]
    assert gateway_env["GATEWAY_ENGINES"] == "http://127.0.0.1:18100"
    assert gateway_env["GATEWAY_EMBEDDING_ENGINES"] == "http://127.0.0.1:18101"
    assert (info["model"], info["embedding_model"]) == ("tiny-llama", "tiny-embed")
    assert node.stop() == ["gateway", "engine-embed", "engine-chat"]  # the gateway drains first
