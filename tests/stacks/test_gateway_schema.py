"""Every gateway setting of the schema (llm_gateway/settings.py) reaches the gateway process the
same way on every path: from the stack file's ``gateway:`` section through stacks/config.py to
the container's environment (the Pulumi component), to the dev node's process and to the tests'
gateways, where the gateway's own ``Settings()`` reads it back unchanged."""

from __future__ import annotations

import typing
from pathlib import Path, PurePosixPath
from typing import Any

import pulumi
import pytest

from llm_gateway.settings import DEPLOYMENT_FIELDS, ENV_PREFIX, SECRET_FIELDS, Options, Settings
from services.launch import GATEWAY_SECRETS_DIR_ENV, GatewaySpec
from stacks import config as stack_config
from stacks.config import gateway_keys
from tests.stacks.mock_runtime import Deployment, deep_merge, run_program

# What the gateway reads, less its secrets and the settings the node wires itself.
STACK_FIELDS = [name for name in Settings.model_fields if name not in DEPLOYMENT_FIELDS and name not in SECRET_FIELDS]


def _other_value(name: str) -> Any:
    """A valid value of setting ``name`` that is not its default (and not the dev stack's)."""
    field = Settings.model_fields[name]
    default = field.get_default(call_default_factory=True)
    annotation = field.annotation
    if typing.get_origin(annotation) is typing.Literal:
        return next(choice for choice in typing.get_args(annotation) if choice != default)
    if annotation is bool:
        return not default
    if annotation is int:
        return default + 7
    if annotation is float:
        return default + 7.25
    if annotation is str:
        return f"{default}-other"
    if typing.get_origin(annotation) is dict:
        return {"gold": 3, "lead": 40}
    if typing.get_origin(annotation) is list:
        return ["http://first.example:8000", "http://second.example:8001"]
    raise AssertionError(f"teach this test a non-default value for gateway setting {name}: {annotation}")


OTHER_VALUES = {name: _other_value(name) for name in STACK_FIELDS}


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, secrets_dir: Path | None = None) -> Settings:
    """What the gateway process reads given ``env`` (none of this test process's own GATEWAY_ variables)."""
    import os

    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_secrets_dir=secrets_dir) if secrets_dir else Settings()


def _assert_reached(settings: Settings, path: str) -> None:
    wrong = {name: (getattr(settings, name), value) for name, value in OTHER_VALUES.items()
             if getattr(settings, name) != value}
    assert wrong == {}, f"{path}: these stack settings did not reach the gateway (got, wanted): {wrong}"


def test_every_setting_is_a_stack_key_but_the_deployment_ones():
    assert set(gateway_keys()) == set(STACK_FIELDS)
    # Every non-secret setting is in Options, the part the node writes into the environment.
    assert set(Settings.model_fields) - set(SECRET_FIELDS) == set(Options.model_fields)
    assert set(Options.model_fields) >= DEPLOYMENT_FIELDS
    assert all(OTHER_VALUES[name] != Settings.model_fields[name].get_default(call_default_factory=True)
               for name in STACK_FIELDS)


@pulumi.runtime.test
def test_every_stack_setting_reaches_the_container(monkeypatch, tmp_path):
    deployment = run_program("dev", overrides={"gateway": OTHER_VALUES})

    def check(d: Deployment):
        container = d.container("gateway")
        # The secrets are uploaded files, in the directory the container's env names.
        secrets_dir = PurePosixPath(container.env[GATEWAY_SECRETS_DIR_ENV])
        for upload in container.props["uploads"]:
            (tmp_path / PurePosixPath(upload["file"]).relative_to(secrets_dir).as_posix()).write_text(upload["content"])
        settings = _settings_from(container.env, monkeypatch, tmp_path)
        _assert_reached(settings, "stack -> container env")
        for name in SECRET_FIELDS:
            assert getattr(settings, name).get_secret_value() == (tmp_path / f"gateway_{name}").read_text(), name
        assert settings.engines == ["http://engine-chat-0:8000"]              # the dev stack's two groups
        assert settings.embedding_engines == ["http://engine-embed-0:8000"]

    return deployment.ready().apply(check)


def test_every_stack_setting_reaches_the_dev_node(monkeypatch):
    from scripts.devnode.gateway import process_env
    from scripts.devnode.node import DevPorts, dev_specs

    stack_file = stack_config.read_stack_values
    monkeypatch.setattr(stack_config, "read_stack_values",
                        lambda stack: deep_merge(stack_file(stack), {"gateway": OTHER_VALUES}))
    _, spec = dev_specs(DevPorts(engine=18000, gateway=18080, metrics=19101))
    env = process_env(spec, database_url="postgresql://dev@127.0.0.1/db", redis_url="redis://127.0.0.1/1",
                      admin_token="dev-admin")
    settings = _settings_from(env, monkeypatch)
    _assert_reached(settings, "stack -> dev node env")
    assert (settings.engines, settings.embedding_engines, settings.host, settings.port, settings.metrics_port) == (
        ["http://127.0.0.1:18000"], ["http://127.0.0.1:18001"], "127.0.0.1", 18080, 19101)
    assert settings.database_url.get_secret_value() == "postgresql://dev@127.0.0.1/db"
    assert settings.admin_token.get_secret_value() == "dev-admin"


def test_every_setting_reaches_a_test_gateway(monkeypatch):
    """The tests' gateways (scripts/devnode/gateway.py: start_gateway) take any field by name."""
    from scripts.devnode.gateway import process_env

    deployment_values = {"engines": ["http://127.0.0.1:1"], "embedding_engines": ["http://127.0.0.1:2"],
                         "host": "127.0.0.2", "port": 1234, "metrics_port": 1235}
    spec = GatewaySpec(**OTHER_VALUES, **deployment_values)
    settings = _settings_from(process_env(spec, database_url="postgresql://t@h/db", redis_url="redis://h/2",
                                          admin_token=None), monkeypatch)
    _assert_reached(settings, "start_gateway env")
    assert {name: getattr(settings, name) for name in deployment_values} == deployment_values
    assert settings.admin_token is None
