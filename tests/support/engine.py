"""The real CPU vLLM engine, started once per test session from the same launch code as the node."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping


from services.launch import EngineSpec, engine_env, engine_process_argv

from .procs import ManagedProcess, free_port, http_ok
from .scrape import metric_sum, scrape

CACHE = Path(os.environ.get("LLM_NODE_CACHE", Path.home() / ".cache" / "llm-node"))
ENGINE_PYTHON = Path(os.environ.get("ENGINE_VENV", CACHE / "venv-engine")) / "bin" / "python"
TINY_MODEL_DIR = Path(os.environ.get("TINY_MODEL_DIR", CACHE / "models" / "tiny-llama"))
SERVED_MODEL = "tiny-llama"


def test_engine_spec(port: int, lora_modules: Mapping[str, str] | None = None) -> EngineSpec:
    """The engine the tests run: the dev node's settings on a free port."""
    return EngineSpec(
        model=str(TINY_MODEL_DIR),
        served_model_name=SERVED_MODEL,
        device="cpu",
        host="127.0.0.1",
        port=port,
        max_model_len=2048,
        max_num_seqs=32,
        lora_modules=dict(lora_modules or {}),
        enable_lora=True,
        max_lora_rank=8,
        allow_runtime_lora_updating=True,
    )


@dataclass
class Engine:
    url: str
    model: str
    proc: ManagedProcess | None = None

    def metrics_text(self) -> str:
        return scrape(self.url + "/metrics")

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples named ``name`` whose labels include ``labels`` (0.0 if none)."""
        return metric_sum(self.metrics_text(), name, **labels)


def start_engine(log_dir: Path, lora_modules: Mapping[str, str] | None = None) -> Engine:
    if not ENGINE_PYTHON.exists():
        raise RuntimeError(f"{ENGINE_PYTHON} missing: run scripts/bootstrap")
    spec = test_engine_spec(free_port(), lora_modules)
    proc = ManagedProcess("vllm", engine_process_argv(spec, str(ENGINE_PYTHON)), log_dir, env=engine_env(spec))
    url = f"http://127.0.0.1:{spec.port}"
    try:
        proc.wait_until(lambda: http_ok(url + "/health"), 300, "healthy")
    except Exception:
        proc.stop()
        raise
    return Engine(url=url, model=SERVED_MODEL, proc=proc)
