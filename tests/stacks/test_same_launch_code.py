"""The dev node (`make dev`) and the Pulumi program start vLLM and the gateway from the same code.

Both read the `dev` stack's settings through stacks/config.py and turn them into argv/env
with services/launch.py. The only differences allowed are where things live: the model
path, the listen address and the ports.
"""

from __future__ import annotations

import dataclasses
from pathlib import PurePosixPath

import pulumi
import pytest

from services.launch import (
    GATEWAY_SECRET_FIELDS,
    GATEWAY_SECRETS_DIR_ENV,
    EngineSpec,
    GatewaySpec,
    engine_args,
    engine_env,
    engine_process_argv,
    gateway_env,
    gateway_process_argv,
    gateway_secret_file,
)
from stacks.config import load_engine_specs, load_stack_settings, load_stack_specs
from tests.stacks.mock_runtime import Deployment, run_program

LOCATION_FIELDS_ENGINE = {"model", "host", "port", "lora_modules"}
LOCATION_FIELDS_GATEWAY = {"engines", "embedding_engines", "host", "port", "metrics_port"}


def dev_node_specs() -> tuple[dict[str, EngineSpec], GatewaySpec]:
    from scripts.devnode.node import DevPorts, dev_specs

    return dev_specs(DevPorts(engine=18000, gateway=18080, metrics=19101))


def _same_except(a, b, allowed: set[str]) -> list[str]:
    names = type(a).model_fields if isinstance(a, GatewaySpec) else [f.name for f in dataclasses.fields(a)]
    return [name for name in names if name not in allowed and getattr(a, name) != getattr(b, name)]


def test_dev_node_specs_are_the_dev_stack_specs():
    stack_engines, (_, stack_gateway) = load_engine_specs("dev"), load_stack_specs("dev")
    node_engines, node_gateway = dev_node_specs()
    assert list(node_engines) == list(stack_engines) == ["chat", "embed"]  # every group, in stack order
    for group, stack_engine in stack_engines.items():
        assert _same_except(stack_engine, node_engines[group], LOCATION_FIELDS_ENGINE) == [], group
    assert _same_except(stack_gateway, node_gateway, LOCATION_FIELDS_GATEWAY) == []
    # ... and the locations really are the dev node's own: one port per group, each kind to its list
    assert [spec.port for spec in node_engines.values()] == [18000, 18001]
    assert node_gateway.engines == ["http://127.0.0.1:18000"]
    assert node_gateway.embedding_engines == ["http://127.0.0.1:18001"]


@pytest.mark.parametrize("group", ["chat", "embed"])
@pulumi.runtime.test
def test_engine_argv_and_env_are_identical_but_for_locations(group):
    stack_engine = load_engine_specs("dev")[group]
    node_engine = dev_node_specs()[0][group]

    def check(d: Deployment):
        container = d.container(load_stack_settings("dev").group(group).aliases[0])
        command = container.props["command"]
        assert command == engine_args(stack_engine)

        dev_argv = engine_process_argv(node_engine, "python")
        assert dev_argv[:3] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
        # Put the dev node's locations back to the container's: the argv must then match token for token.
        relocated = dataclasses.replace(node_engine, model=stack_engine.model, host=stack_engine.host,
                                        port=stack_engine.port, lora_modules=stack_engine.lora_modules)
        assert engine_args(relocated) == command
        differing = [(a, b) for a, b in zip(dev_argv[3:], command, strict=True) if a != b]
        assert {a for a, _ in differing} == {node_engine.model, node_engine.host, str(node_engine.port)}

        # The engine env: launch.py's, in both (the container adds only where it finds files).
        assert engine_env(node_engine) == engine_env(stack_engine)
        assert engine_env(stack_engine).items() <= container.env.items()
        assert set(container.env) - set(engine_env(stack_engine)) == {
            "HF_HOME", "ADAPTERS_SOURCE_DIR", "ADAPTERS_SANITIZED_DIR"}
    return run_program("dev").ready().apply(check)


@pulumi.runtime.test
def test_gateway_env_is_identical_but_for_locations_and_secrets():
    _, stack_gateway = load_stack_specs("dev")
    _, node_gateway = dev_node_specs()

    def check(d: Deployment):
        container = d.container("gateway")
        env = container.env
        assert container.props["entrypoints"] == gateway_process_argv("python")
        # The container adds only where its secrets are; the secrets themselves are files there.
        assert {k: v for k, v in env.items() if k != GATEWAY_SECRETS_DIR_ENV} == gateway_env(stack_gateway)
        uploaded = {PurePosixPath(u["file"]).relative_to(env[GATEWAY_SECRETS_DIR_ENV]).as_posix()
                    for u in container.props["uploads"]}
        assert uploaded == {gateway_secret_file(field) for field in GATEWAY_SECRET_FIELDS}
        location_env = {"GATEWAY_ENGINES", "GATEWAY_EMBEDDING_ENGINES", "GATEWAY_HOST", "GATEWAY_PORT",
                        "GATEWAY_METRICS_PORT"}
        dev_env = gateway_env(node_gateway)
        assert {k for k in dev_env if dev_env[k] != env[k]} <= location_env
        assert {k: v for k, v in dev_env.items() if k not in location_env} == \
               {k: v for k, v in gateway_env(stack_gateway).items() if k not in location_env}
    return run_program("dev").ready().apply(check)


@pulumi.runtime.test
def test_quantize_job_arguments_come_from_launch_py():
    from services.launch import quantize_args
    from stacks.config import load_stack_settings

    spec = load_stack_settings("prod").quantize

    def check(d: Deployment):
        assert d.container("quantize").props["command"] == quantize_args(spec)
    return run_program("prod").ready().apply(check)
