"""The real CPU vLLM as a local process: the dev stack's engine settings (stacks/Pulumi.dev.yaml,
read by stacks/config.py, started by services/launch.py), with a local model directory and
port. The dev node, the tests (once per session) and the benchmarks start it this way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from services.launch import EngineSpec, engine_env, engine_process_argv

from .paths import ENGINE_PYTHON, TINY_MODEL_DIR
from .processes import ManagedProcess, free_port, http_ok
from .scrape import metric_sum, scrape

START_TIMEOUT_SECONDS = 300


def local_engine_spec(port: int, *, lora_modules: Mapping[str, str] | None = None,
                      model_dir: Path = TINY_MODEL_DIR) -> EngineSpec:
    """The dev stack's (first generate group's) engine on 127.0.0.1:``port``, serving ``model_dir``."""
    from stacks.config import load_stack_specs

    engine, _ = load_stack_specs("dev")
    return dataclasses.replace(engine, model=str(model_dir), host="127.0.0.1", port=port,
                               lora_modules=dict(lora_modules or {}))


def local_model_dir(model: str) -> Path:
    """Where a dev-stack model (``/models/<dir>``) is on this machine: the local models cache,
    the directory the dev stack binds at /models (volumes.models_host_dir)."""
    from stacks import naming

    return TINY_MODEL_DIR.parent / PurePosixPath(model).relative_to(naming.MODELS_DIR)


def local_group_specs(first_port: int) -> dict[str, EngineSpec]:
    """Every engine group of the dev stack on 127.0.0.1, group i on ``first_port + i``, in stack-file order."""
    from stacks.config import load_engine_specs

    return {group: _on_this_machine(spec, first_port + index)
            for index, (group, spec) in enumerate(load_engine_specs("dev").items())}


def local_engine_spec_for(group: str, port: int | None = None) -> EngineSpec:
    """The dev stack's engine group ``group`` on 127.0.0.1:``port`` (a free port by default)."""
    from stacks.config import load_engine_specs

    specs = load_engine_specs("dev")
    if group not in specs:
        raise ValueError(f"engine group {group!r} is not one of the dev stack's: {', '.join(specs)}")
    return _on_this_machine(specs[group], free_port() if port is None else port)


def _on_this_machine(spec: EngineSpec, port: int) -> EngineSpec:
    return dataclasses.replace(spec, model=str(local_model_dir(spec.model)), host="127.0.0.1", port=port)


def embedding_model_name() -> str:
    """The model name the dev stack's embedding group serves."""
    from stacks.config import load_engine_specs

    return load_engine_specs("dev")["embed"].served_model_name


def served_model_name() -> str:
    """The model name the local engine serves (the dev stack's)."""
    from stacks.config import load_stack_specs

    return load_stack_specs("dev")[0].served_model_name


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


def start_engine(log_dir: Path, lora_modules: Mapping[str, str] | None = None, *,
                 spec: EngineSpec | None = None) -> Engine:
    """Start ``spec`` (by default the dev stack's engine on a free port) and wait until healthy."""
    if not ENGINE_PYTHON.exists():
        raise RuntimeError(f"{ENGINE_PYTHON} missing: run scripts/bootstrap")
    if spec is None:
        spec = local_engine_spec(free_port(), lora_modules=lora_modules)
    name = "vllm" if spec.kind == "generate" else f"vllm-{spec.kind}"
    proc = ManagedProcess(name, engine_process_argv(spec, str(ENGINE_PYTHON)), log_dir, env=engine_env(spec))
    url = f"http://127.0.0.1:{spec.port}"
    proc.ready_or_stopped(lambda: http_ok(url + "/health"), START_TIMEOUT_SECONDS, "healthy")
    return Engine(url=url, model=spec.served_model_name, proc=proc)
