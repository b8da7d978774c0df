"""Run the Pulumi program (stacks/__main__.py) under Pulumi's mock runtime and record it.

``run_program("dev")`` loads stacks/Pulumi.dev.yaml as the engine would pass it (objects as
JSON text, secrets flagged), installs fresh mocks, runs the real entry point and returns a
``Deployment``: every resource with its inputs exactly as the engine would receive them
(secret values still wrapped), the resource options each was declared with, and the
stack outputs. Call it inside a ``@pulumi.runtime.test`` function and return
``deployment.ready().apply(check)`` so the checks run after every registration.

Each call starts from a clean slate (new root stack, new settings, new config), so the
dev and prod programs never share Pulumi's global state within one pytest process.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import runpy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pulumi
from pulumi.runtime import rpc
from pulumi.runtime import settings as runtime_settings

from stacks.config import NAMESPACE, SECRET_KEYS, read_stack_values
from stacks.jobs import DockerJobHistory, PreviousRun

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = ROOT / "stacks" / "__main__.py"
SECRET_SIG = rpc._special_secret_sig
SIG_KEY = rpc._special_sig_key
MOCK_SECRET_MARK = "MOCKSECRET"  # every generated password / test secret contains it
MOCKSECRET_PREFIX = f"{MOCK_SECRET_MARK}-"

CONTAINER = "docker:index/container:Container"
NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
BUILT_IMAGE = "docker:index/image:Image"
PASSWORD = "random:index/randomPassword:RandomPassword"


def is_secret_value(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SIG_KEY) == SECRET_SIG


def unwrap(value: Any) -> Any:
    """Inputs with secrets unwrapped: what a CrossGuard policy sees."""
    if is_secret_value(value):
        return unwrap(value["value"])
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def plain_parts(value: Any) -> list[Any]:
    """Every leaf that is NOT inside a secret: where a leaked secret would show."""
    if is_secret_value(value):
        return []
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in plain_parts(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in plain_parts(v)]
    return [value]


@dataclass
class Declared:
    type: str
    name: str
    inputs: dict[str, Any]  # as the engine receives them (secret values wrapped)
    opts: pulumi.ResourceOptions | None = None

    @property
    def props(self) -> dict[str, Any]:
        return unwrap(self.inputs)

    def is_secret(self, key: str) -> bool:
        return is_secret_value(self.inputs.get(key))

    @property
    def labels(self) -> dict[str, str]:
        return {item["label"]: item["value"] for item in self.props.get("labels") or []}

    @property
    def networks(self) -> set[str]:
        return {item["name"] for item in self.props.get("networksAdvanced") or []}

    @property
    def env(self) -> dict[str, str]:
        return dict(item.split("=", 1) for item in self.props.get("envs") or [])


class RecordingMocks(pulumi.runtime.Mocks):
    """Echo inputs as outputs, plus what the real providers compute (ids, passwords, exit codes)."""

    def __init__(self, exit_codes: Mapping[str, int] | None = None):
        self.declared: list[Declared] = []
        self.exit_codes = dict(exit_codes or {})

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.declared.append(Declared(args.typ, args.name, copy.deepcopy(args.inputs)))
        state = dict(args.inputs)
        if args.typ == PASSWORD:
            state["result"] = f"{MOCKSECRET_PREFIX}{args.name}"
        if args.typ == REMOTE_IMAGE:
            state["imageId"] = "sha256:" + hashlib.sha256(str(args.inputs.get("name")).encode()).hexdigest()
        if args.typ == CONTAINER and unwrap(args.inputs).get("attach"):
            state["exitCode"] = self.exit_codes.get(args.name, 0)
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}



@dataclass
class Deployment:
    stack: str
    values: dict[str, Any]  # the stack values the program was given (after overrides)
    declared: list[Declared]
    options: dict[tuple[str, str], pulumi.ResourceOptions]
    resources: list[pulumi.Resource]
    outputs: dict[str, Any] = field(default_factory=dict)

    def ready(self) -> pulumi.Output:
        """Resolves once every resource is registered: chain the checks on it."""
        return pulumi.Output.all(*(r.urn for r in self.resources)).apply(lambda _: self)

    def of_type(self, type_: str) -> list[Declared]:
        found = []
        for item in self.declared:
            if item.type == type_:
                item.opts = self.options.get((item.type, item.name))
                found.append(item)
        return found

    @property
    def containers(self) -> dict[str, Declared]:
        """Container name on the host -> declaration."""
        return {c.props["name"]: c for c in self.of_type(CONTAINER)}

    def container(self, service: str) -> Declared:
        prefix = self.values.get("name_prefix", "llm-node")
        return self.containers[f"{prefix}-{service}"]

    @property
    def networks(self) -> dict[str, Declared]:
        return {n.props["name"]: n for n in self.of_type(NETWORK)}

    @property
    def volumes(self) -> dict[str, Declared]:
        return {v.props["name"]: v for v in self.of_type(VOLUME)}


def deep_merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` applied to ``base``; a None value removes the key."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def engine_config(values: Mapping[str, Any], secrets: Mapping[str, str], plaintext_secrets: bool = False
                  ) -> tuple[dict[str, str], list[str]]:
    """The config map the Pulumi CLI would hand the program: ``llm-node:key`` -> text."""
    config = {}
    for key, value in values.items():
        if isinstance(value, (dict, list)):
            config[f"{NAMESPACE}:{key}"] = json.dumps(value)
        elif isinstance(value, bool):
            config[f"{NAMESPACE}:{key}"] = "true" if value else "false"
        else:
            config[f"{NAMESPACE}:{key}"] = str(value)
    for key, value in secrets.items():
        config[f"{NAMESPACE}:{key}"] = value
    secret_keys = [] if plaintext_secrets else [f"{NAMESPACE}:{key}" for key in secrets]
    return config, secret_keys


def run_program(stack: str, *, overrides: Mapping[str, Any] | None = None, secrets: Mapping[str, str] | None = None,
                preview: bool = False, exit_codes: Mapping[str, int] | None = None,
                plaintext_secrets: bool = False, config_via_env: bool = False,
                previous_runs: Mapping[str, PreviousRun] | None = None) -> Deployment:
    """Run stacks/__main__.py for ``stack`` (its yaml plus ``overrides``) under fresh mocks.

    ``previous_runs`` is what the program finds on the Docker host for its job containers
    (container name -> how it ended); none by default, whatever Docker this machine runs.

    ``config_via_env`` hands the config over as the language host does for a real run
    (PULUMI_CONFIG / PULUMI_CONFIG_SECRET_KEYS) instead of through the SDK's config store.
    """
    values = deep_merge({k: v for k, v in read_stack_values(stack).items() if k not in SECRET_KEYS},
                        overrides or {})
    config, secret_keys = engine_config(values, secrets or {}, plaintext_secrets)

    runtime_settings.ROOT.set(None)  # a new root stack resource for this run
    environment = {"PULUMI_CONFIG": json.dumps(config), "PULUMI_CONFIG_SECRET_KEYS": json.dumps(secret_keys)}
    if config_via_env:
        pulumi.runtime.set_all_config({}, [])
    else:
        pulumi.runtime.set_all_config(config, secret_keys)
    mocks = RecordingMocks(exit_codes)
    pulumi.runtime.set_mocks(mocks, project="llm-node", stack=stack, preview=preview)

    options: dict[tuple[str, str], pulumi.ResourceOptions] = {}
    resources: list[pulumi.Resource] = []

    def record(args: pulumi.ResourceTransformationArgs) -> None:
        options[(args.type_, args.name)] = args.opts
        resources.append(args.resource)
        return None

    pulumi.runtime.register_stack_transformation(record)
    runs = dict(previous_runs or {})
    # The environment is restored when the program has read it (patch.dict puts back the whole of it).
    with mock.patch.dict(os.environ, environment if config_via_env else {}), \
            mock.patch.object(DockerJobHistory, "previous_run", lambda self, name: runs.get(name)):
        runpy.run_path(str(PROGRAM), run_name="__main__")  # reads all configuration up front
    root = runtime_settings.get_root_resource()
    return Deployment(stack=stack, values=values, declared=mocks.declared, options=options, resources=resources,
                      outputs=dict(getattr(root, "outputs", {}) or {}))


def settled_program(stack: str, **kwargs: Any) -> Deployment:
    """run_program outside a ``@pulumi.runtime.test``: the Deployment once every registration has
    settled, for a fixture or a helper that reads it afterwards (kwargs as run_program's)."""
    found: dict[str, Deployment] = {}

    @pulumi.runtime.test
    def run() -> pulumi.Output:
        return run_program(stack, **kwargs).ready().apply(lambda d: found.update(d=d))

    run()
    return found["d"]


def checked(deployment: Deployment, check: Callable[[Deployment], None]) -> pulumi.Output:
    """The Output a ``@pulumi.runtime.test`` returns: ``check`` runs once all is registered."""
    return deployment.ready().apply(check)
