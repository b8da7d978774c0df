"""The stack's configuration, read and validated in one place.

Two layers:
  * ``parse_settings(values, stack)`` turns plain values (``Pulumi.<stack>.yaml`` without
    the ``llm-node:`` prefix) into typed, validated settings. It needs no Pulumi engine, so
    the dev node (``scripts/devnode``) builds its specs from the same stack file with the
    same code: ``load_engine_specs("dev")`` (every engine group), ``load_stack_specs("dev")``.
  * ``load_node_config()`` is the Pulumi-facing reader: it collects the stack's values
    from the engine, checks that secrets are stored encrypted, and adds them as secret
    Outputs.

Every error names the key it is about, e.g.
``llm-node:engine.gpu_memory_utilization: 1.5 must be in (0, 1]``. Defaults of engine settings
are those of the specs in services/launch.py (read from the dataclasses, not repeated here);
the gateway section is validated by the gateway's own settings schema (llm_gateway/settings.py).
docs/configuration.md documents every key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import pydantic
import yaml

import llm_gateway.settings as gateway_settings
from services.launch import MODEL_KINDS, QUANTIZATION_METHODS, EngineSpec, GatewaySpec, QuantizeSpec
from stacks import naming
from stacks.images import DEFAULT_IMAGES, is_pinned
from stacks.kubernetes.settings import KUBERNETES_KEYS, KubernetesSettings, parse_kubernetes, parse_target

if TYPE_CHECKING:  # Pulumi is only needed by load_node_config()
    import pulumi
    from _typeshed import DataclassInstance

NAMESPACE = "llm-node"
STACKS_DIR = Path(__file__).resolve().parent
ROOT_DIR = STACKS_DIR.parent

# Keys whose values are secrets: read only as secret Outputs, never parsed here.
SECRET_KEYS = ("tunnel_token", "tls_private_key",
               "external_database_url", "external_redis_url")  # the last two: kubernetes.data_stores external
# Keys holding objects (Pulumi hands them to the program as JSON text).
OBJECT_KEYS = ("images", "engine", "engines", "gateway", "edge", "tunnel", "quantize", "observability", "volumes",
               "kubernetes")
STRING_KEYS = ("docker_host", "name_prefix", "domain", "tls_certificate", "target", "build_ca_certificates")

TLS_MODES = ("acme", "provided", "self-signed")
BODY_LIMIT_MODES = ("gateway", "edge")
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
# vLLM's accepted --max-lora-rank values.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# Flags the program sets itself; extra_args may not repeat them (vLLM would take the last).
MANAGED_ENGINE_FLAGS = ("--model", "--served-model-name", "--host", "--port", "--dtype", "--max-model-len",
                        "--max-num-seqs", "--scheduling-policy", "--gpu-memory-utilization", "--quantization",
                        "--max-num-batched-tokens", "--enable-prefix-caching", "--no-enable-prefix-caching",
                        "--enable-lora", "--max-lora-rank", "--max-loras", "--lora-modules")

ENGINE_SPEC_KEYS = ("device", "model_dir", "model_id", "served_model_name", "quantization", "dtype",
                    "max_model_len", "gpu_memory_utilization", "max_num_seqs", "max_num_batched_tokens",
                    "enable_prefix_caching", "scheduling_policy", "enable_lora", "max_lora_rank", "max_loras",
                    "allow_runtime_lora_updating", "lora_adapters", "hf_hub_offline", "cpu_kvcache_space_gib",
                    "extra_args")
ENGINE_CONTAINER_KEYS = ("replicas", "gpu_ids", "shm_size_mb", "health_start_period_seconds")

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SERVED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:-]*$")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_PREFIX = re.compile(r"^[a-z][a-z0-9-]{1,30}[a-z0-9]$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DURATION = re.compile(r"^\d+(ms|s|m|h|d|w|y)$")
_DOCKER_HOST_SCHEMES = ("unix://", "ssh://", "tcp://", "npipe://")


class ConfigError(ValueError):
    """A bad stack setting; the message starts with the full key (``llm-node:engine.max_model_len``)."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{NAMESPACE}:{key}: {message}")


_REQUIRED = object()


class _Section:
    """Typed reads from one config object; remembers what it read so unknown keys are errors."""

    def __init__(self, name: str, values: Any):
        if values is None:
            values = {}
        if not isinstance(values, Mapping):
            raise ConfigError(name, f"must be an object (a YAML mapping), got {type(values).__name__}")
        self.name = name
        self.values = values

    def key(self, key: str) -> str:
        return f"{self.name}.{key}"

    def _get(self, key: str, default: Any) -> Any:
        value = self.values.get(key)
        if value is None:
            if default is _REQUIRED:
                raise ConfigError(self.key(key), "is required")
            return default
        return value

    def string(self, key: str, default: Any = _REQUIRED, *, choices: Sequence[str] = (),
               pattern: re.Pattern[str] | None = None, what: str = "") -> Any:
        value = self._get(key, default)
        if value is None or value is default:
            return value
        if not isinstance(value, str) or not value:
            raise ConfigError(self.key(key), f"must be a non-empty string, got {value!r}")
        if choices and value not in choices:
            raise ConfigError(self.key(key), f"{value!r} is not one of {', '.join(choices)}")
        if pattern is not None and not pattern.match(value):
            raise ConfigError(self.key(key), f"{value!r} is not {what or 'valid'}")
        return value

    def boolean(self, key: str, default: Any = _REQUIRED) -> bool:
        value = self._get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(self.key(key), f"must be true or false, got {value!r}")
        return value

    def integer(self, key: str, default: Any = _REQUIRED, *, minimum: int | None = None,
                maximum: int | None = None) -> Any:
        value = self._get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.key(key), f"must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise ConfigError(self.key(key), f"{value} must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise ConfigError(self.key(key), f"{value} must be at most {maximum}")
        return value

    def number(self, key: str, default: Any = _REQUIRED, *, minimum: float | None = None,
               above: float | None = None, maximum: float | None = None) -> float:
        value = self._get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(self.key(key), f"must be a number, got {value!r}")
        if minimum is not None and value < minimum:
            raise ConfigError(self.key(key), f"{value} must be at least {minimum}")
        if above is not None and value <= above:
            raise ConfigError(self.key(key), f"{value} must be greater than {above}")
        if maximum is not None and value > maximum:
            raise ConfigError(self.key(key), f"{value} must be at most {maximum}")
        return float(value)

    def strings(self, key: str, default: Sequence[str] = ()) -> tuple[str, ...]:
        value = self._get(key, default)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(self.key(key), f"must be a list of non-empty strings, got {value!r}")
        return tuple(value)

    def mapping(self, key: str, default: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
        value = self._get(key, default if default is not None else {})
        if not isinstance(value, Mapping):
            raise ConfigError(self.key(key), f"must be an object, got {value!r}")
        return value

    def reject_unknown(self, known: Sequence[str]) -> None:
        for key in self.values:
            if key not in known:
                raise ConfigError(self.key(key), f"unknown setting (known: {', '.join(sorted(known))})")


def _spec_default(spec_type: type[DataclassInstance], field_name: str) -> Any:
    """The default of a launch.py spec field: the single place defaults are written."""
    field = spec_type.__dataclass_fields__[field_name]
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is dataclasses.MISSING:
        raise TypeError(f"{spec_type.__name__}.{field_name} has no default")
    return field.default_factory()


def _relative_path(section: _Section, key: str, default: Any = _REQUIRED) -> Any:
    value = section.string(key, default)
    if value is None or value is default:
        return value
    path = PurePosixPath(value)
    if path.is_absolute() or ".." in path.parts:
        raise ConfigError(section.key(key), f"{value!r} must be a path relative to the models volume")
    return str(path)


def _fraction(section: _Section, key: str, default: float) -> float:
    value = section.number(key, default)
    if not 0.0 < value <= 1.0:
        raise ConfigError(section.key(key), f"{value} must be in (0, 1] (a fraction of GPU memory)")
    return value


# -- engine -----------------------------------------------------------------------------------

# An engine group: one model served by ``replicas`` identical vLLM containers. A stack sets
# either ``engines`` (a list of groups, each with a ``name`` and a ``kind``) or ``engine``
# (one group, named naming.DEFAULT_ENGINE_GROUP, kind generate: a one-model node).
ENGINE_GROUP_KEYS = ("name", "kind")
# Settings that only mean something with LoRA: refused on an embedding group (vLLM's pooling
# runner serves no adapters).
LORA_KEYS = ("enable_lora", "max_lora_rank", "max_loras", "allow_runtime_lora_updating", "lora_adapters")
# A group name becomes part of container names and network aliases (engine-<name>-0).
_GROUP_NAME = re.compile(r"^[a-z]([a-z0-9-]{0,22}[a-z0-9])?$")


def engine_spec_from_config(engine: Mapping[str, Any] | None, *, section: str = "engine",
                            kind: str = "generate", models_dir: str = naming.MODELS_DIR,
                            adapters_dir: str = naming.ADAPTERS_SANITIZED_DIR, host: str = "0.0.0.0",
                            port: int = naming.ENGINE_PORT) -> EngineSpec:
    """One engine group's config object as an EngineSpec (paths rooted at ``models_dir`` / ``adapters_dir``).

    ``section`` is the group's key in errors: ``engine`` or ``engines[1]``.
    """
    s = _Section(section, engine)
    s.reject_unknown(ENGINE_SPEC_KEYS + ENGINE_CONTAINER_KEYS + (ENGINE_GROUP_KEYS if section != "engine" else ()))

    def d(name: str) -> Any:
        return _spec_default(EngineSpec, name)

    if kind == "embed":
        for key in LORA_KEYS:
            if s.values.get(key) not in (None, False, []):
                raise ConfigError(s.key(key), f"{s.values[key]!r}: an embedding model (kind: embed) serves no "
                                              "LoRA adapters; remove the LoRA settings from this group")
    device = s.string("device", choices=("cpu", "cuda"))
    model_dir = _relative_path(s, "model_dir", None)
    model_id = s.string("model_id", None, pattern=_HUB_ID, what="a Hugging Face hub id (org/name)")
    if (model_dir is None) == (model_id is None):
        raise ConfigError(s.key("model_dir"), f"set exactly one of {s.key('model_dir')} (a directory in the "
                                              f"models volume) and {s.key('model_id')} (a hub id)")
    model = f"{models_dir.rstrip('/')}/{model_dir}" if model_dir else model_id

    quantization = s.string("quantization", None, choices=QUANTIZATION_METHODS)
    if device == "cpu" and quantization and quantization.endswith("_marlin"):
        raise ConfigError(s.key("quantization"), f"{quantization!r} uses CUDA-only Marlin kernels; "
                                                 "a cpu engine cannot serve it")
    scheduling = s.string("scheduling_policy", d("scheduling_policy"), choices=("priority",))
    adapters = s.strings("lora_adapters")
    for name in adapters:
        if not _NAME.match(name):
            raise ConfigError(s.key("lora_adapters"), f"{name!r} is not a valid adapter (directory) name")
    if len(set(adapters)) != len(adapters):
        raise ConfigError(s.key("lora_adapters"), "adapter names must be unique")
    max_lora_rank = s.integer("max_lora_rank", d("max_lora_rank"))
    if max_lora_rank not in LORA_RANKS:
        raise ConfigError(s.key("max_lora_rank"),
                          f"{max_lora_rank} is not one of {', '.join(map(str, LORA_RANKS))}")
    extra_args = s.strings("extra_args")
    for arg in extra_args:
        if arg.split("=", 1)[0] in MANAGED_ENGINE_FLAGS:
            raise ConfigError(s.key("extra_args"), f"{arg!r} is set from its own {section}.* key; set that instead")

    try:
        return EngineSpec(
            model=model,
            served_model_name=s.string("served_model_name", pattern=_SERVED_NAME, what="a valid model name"),
            device=device,
            kind=kind,  # type: ignore[arg-type]  # a config string: EngineSpec checks it against MODEL_KINDS
            host=host,
            port=port,
            quantization=quantization,
            dtype=s.string("dtype", d("dtype"), choices=DTYPES),
            max_model_len=s.integer("max_model_len", d("max_model_len"), minimum=16),
            gpu_memory_utilization=_fraction(s, "gpu_memory_utilization", d("gpu_memory_utilization")),
            max_num_seqs=s.integer("max_num_seqs", d("max_num_seqs"), minimum=1),
            max_num_batched_tokens=s.integer("max_num_batched_tokens", d("max_num_batched_tokens"), minimum=1),
            enable_prefix_caching=s.boolean("enable_prefix_caching", d("enable_prefix_caching")),
            scheduling_policy=scheduling,
            lora_modules={name: f"{adapters_dir.rstrip('/')}/{name}" for name in adapters},
            enable_lora=s.boolean("enable_lora", d("enable_lora")),
            max_lora_rank=max_lora_rank,
            max_loras=s.integer("max_loras", d("max_loras"), minimum=1),
            allow_runtime_lora_updating=s.boolean("allow_runtime_lora_updating", d("allow_runtime_lora_updating")),
            hf_hub_offline=s.boolean("hf_hub_offline", d("hf_hub_offline")),
            cpu_kvcache_space_gib=s.integer("cpu_kvcache_space_gib", d("cpu_kvcache_space_gib"), minimum=1),
            extra_args=extra_args,
        )
    except ConfigError:
        raise
    except ValueError as error:  # launch.py's own checks name the field; add the section
        raise ConfigError(s.key(str(error).split(':', 1)[0]), str(error).split(":", 1)[-1].strip()) from error


@dataclass(frozen=True)
class EngineDeployment:
    """One engine group: its spec plus how it runs as containers (replicas, GPUs, shared memory, start-up)."""

    spec: EngineSpec
    replicas: int
    gpu_ids: tuple[str, ...]  # one entry per replica (cuda), "0" or "0,1" (tensor parallel); empty on cpu
    shm_size_mb: int
    health_start_period_seconds: int
    group: str = naming.DEFAULT_ENGINE_GROUP
    section: str = "engine"  # its key in the stack's configuration: engine or engines[<i>]

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def aliases(self) -> list[str]:
        """The network alias of each replica (engine-0 or engine-<group>-0, ...)."""
        return [naming.engine_alias(i, self.group) for i in range(self.replicas)]

    @property
    def urls(self) -> list[str]:
        return [naming.engine_url(i, self.group) for i in range(self.replicas)]

    def replica_gpus(self, index: int) -> list[str]:
        """The GPU ids of one replica (``"0,1"`` is a tensor-parallel replica on GPUs 0 and 1)."""
        return [device.strip() for device in self.gpu_ids[index].split(",")] if self.gpu_ids else []

    @property
    def gpu_devices(self) -> tuple[str, ...]:
        """Every GPU id the group uses, one per GPU (what the host must have)."""
        return tuple(device for index in range(len(self.gpu_ids)) for device in self.replica_gpus(index))


def _engine_deployment(engine: Mapping[str, Any] | None, *, section: str = "engine",
                       group: str = naming.DEFAULT_ENGINE_GROUP, kind: str = "generate") -> EngineDeployment:
    spec = engine_spec_from_config(engine, section=section, kind=kind)
    s = _Section(section, engine)
    gpu = spec.device == "cuda"
    replicas = s.integer("replicas", 1, minimum=1)
    gpu_ids = s.strings("gpu_ids", [str(i) for i in range(replicas)] if gpu else [])
    if gpu and len(gpu_ids) != replicas:
        raise ConfigError(s.key("gpu_ids"), f"needs one GPU id per replica ({replicas}), got {len(gpu_ids)}")
    devices = [device.strip() for group_ids in gpu_ids for device in group_ids.split(",")]
    if gpu and (len(set(devices)) != len(devices) or not all(devices)):
        raise ConfigError(s.key("gpu_ids"), "each replica needs its own GPUs (a GPU may appear once)")
    if not gpu and "gpu_ids" in s.values:
        raise ConfigError(s.key("gpu_ids"), f"only applies to {s.key('device')}: cuda")
    return EngineDeployment(
        spec=spec,
        replicas=replicas,
        gpu_ids=tuple(gpu_ids),
        shm_size_mb=s.integer("shm_size_mb", 8192 if gpu else 2048, minimum=64),
        health_start_period_seconds=s.integer("health_start_period_seconds", 900 if gpu else 300, minimum=10,
                                              maximum=ENGINE_START_PERIOD_MAX_SECONDS),
        group=group,
        section=section,
    )


def engine_groups(engine: Any, engines: Any) -> tuple[EngineDeployment, ...]:
    """The ``engines`` list (or the single ``engine`` section) as validated groups, in stack-file order."""
    if engine is not None and engines is not None:
        raise ConfigError("engines", "set either engines (a list of groups) or engine (one group), not both; "
                                     f"engine: {{...}} is engines: [{{name: {naming.DEFAULT_ENGINE_GROUP}, ...}}]")
    if engines is None:
        if engine is None:
            raise ConfigError("engines", "is required: a list of engine groups (or engine: one group)")
        return (_engine_deployment(engine),)
    if not isinstance(engines, (list, tuple)) or not engines:
        raise ConfigError("engines", f"must be a non-empty list of engine groups, got {engines!r}")
    groups: list[EngineDeployment] = []
    for index, values in enumerate(engines):
        s = _Section(f"engines[{index}]", values)
        name = s.string("name", pattern=_GROUP_NAME, what="a group name (lowercase letters, digits, dashes; "
                                                          "at most 24)")
        kind = s.string("kind", "generate", choices=MODEL_KINDS)
        for other in groups:
            if other.group == name:
                raise ConfigError(s.key("name"), f"{name!r} is already the name of {other.section}")
        groups.append(_engine_deployment(values, section=s.name, group=name, kind=kind))
    _check_across_groups(groups)
    return tuple(groups)


def _check_across_groups(groups: Sequence[EngineDeployment]) -> None:
    """What no single group can check: served names and GPUs are each one group's."""
    served: dict[str, EngineDeployment] = {}
    gpus: dict[str, EngineDeployment] = {}
    for group in groups:
        name = group.spec.served_model_name
        if name in served:
            raise ConfigError(f"{group.section}.served_model_name", f"{name!r} is already served by group "
                                                                   f"{served[name].group} ({served[name].section})")
        served[name] = group
        for gpu in group.gpu_devices:
            if gpu in gpus:
                raise ConfigError(f"{group.section}.gpu_ids",
                                  f"GPU {gpu} is already group {gpus[gpu].group}'s ({gpus[gpu].section}.gpu_ids); "
                                  "each GPU serves one group")
            gpus[gpu] = group
    if not any(group.kind == "generate" for group in groups):
        raise ConfigError("engines", "needs at least one group of kind generate (the gateway's chat and "
                                     "completions engines)")


# -- gateway ----------------------------------------------------------------------------------

# Every gateway setting but those the node wires itself (gateway_settings.DEPLOYMENT_FIELDS) and
# the secrets is a key here, checked by the gateway's own schema: its types, bounds and defaults.
STACK_GATEWAY_FIELDS = tuple(name for name in GatewaySpec.model_fields
                             if name not in gateway_settings.DEPLOYMENT_FIELDS)


def gateway_keys() -> tuple[str, ...]:
    return STACK_GATEWAY_FIELDS


def gateway_spec_from_config(gateway: Mapping[str, Any] | None, *, engines: Sequence[str],
                             embedding_engines: Sequence[str] = (), host: str = "0.0.0.0",
                             port: int = naming.GATEWAY_PORT,
                             metrics_port: int = naming.GATEWAY_METRICS_PORT) -> GatewaySpec:
    """The ``gateway`` config object as a GatewaySpec routing to ``engines`` (and ``embedding_engines``)."""
    s = _Section("gateway", gateway)
    for key in s.values:
        if key in gateway_settings.DEPLOYMENT_FIELDS:
            raise ConfigError(s.key(key), "is set by the node (engine URLs, listeners), not by the stack")
        if key in gateway_settings.SECRET_FIELDS:
            raise ConfigError(s.key(key), "is a secret the node generates or derives, not a stack setting")
    s.reject_unknown(STACK_GATEWAY_FIELDS)
    values = {key: value for key, value in s.values.items() if value is not None}  # null: the default
    wiring = {"engines": list(engines), "embedding_engines": list(embedding_engines), "host": host, "port": port,
              "metrics_port": metrics_port}
    try:
        # Strict: YAML gives real types, so "5" for a number or true for an integer is a mistake.
        return GatewaySpec.model_validate(values | wiring, strict=True)
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise ConfigError(s.key(key), f"{first['msg']}, got {first['input']!r}") from None


# -- quantize ---------------------------------------------------------------------------------

# The quantize job's --scheme choices (services/quantize/llm_node_quantize/recipes.py; a test keeps them equal).
QUANTIZE_SCHEMES = ("W4A16", "W4A16_ASYM", "W8A8")
QUANTIZE_KEYS = ("enabled", "group", "source_model_dir", "output_model_dir", "calibration_file", "scheme",
                 "num_calibration_samples", "max_seq_length", "merge_lora_adapter", "timeout_minutes")
# How long `pulumi up` lets the quantize job run (the container's create timeout): a large
# model on one GPU takes hours; past the bound the update fails instead of hanging.
QUANTIZE_TIMEOUT_MINUTES = (240, 5, 2880)  # default, minimum, maximum
# The engine's healthcheck start period is bounded too: `pulumi up` waits that long for it.
ENGINE_START_PERIOD_MAX_SECONDS = 3600


def quantize_spec_from_config(quantize: Mapping[str, Any] | None, *, models_dir: str = naming.MODELS_DIR,
                              adapters_dir: str = naming.ADAPTERS_SOURCE_DIR) -> QuantizeSpec | None:
    """The ``quantize`` config object as a QuantizeSpec, or None when the job is disabled."""
    s = _Section("quantize", quantize)
    s.reject_unknown(QUANTIZE_KEYS)
    if not s.boolean("enabled", False):
        return None
    root = models_dir.rstrip("/")

    def d(name: str) -> Any:
        return _spec_default(QuantizeSpec, name)
    adapter = s.string("merge_lora_adapter", None, pattern=_NAME, what="an adapter (directory) name")
    return QuantizeSpec(
        source_model=f"{root}/{_relative_path(s, 'source_model_dir')}",
        output_dir=f"{root}/{_relative_path(s, 'output_model_dir')}",
        calibration_file=f"{root}/{_relative_path(s, 'calibration_file')}",
        scheme=s.string("scheme", d("scheme"), choices=QUANTIZE_SCHEMES),
        num_calibration_samples=s.integer("num_calibration_samples", d("num_calibration_samples"), minimum=1),
        max_seq_length=s.integer("max_seq_length", d("max_seq_length"), minimum=16),
        merge_lora_adapter=f"{adapters_dir.rstrip('/')}/{adapter}" if adapter else None,
    )


# -- edge, tunnel, observability, volumes --------------------------------------------------------


@dataclass(frozen=True)
class EdgeSettings:
    tls_mode: str  # acme | provided | self-signed
    acme_email: str | None
    acme_ca_server: str | None
    publish: bool  # publish http/https on the host (false: reachable only through the tunnel)
    bind_address: str
    http_port: int
    https_port: int
    ops_port: int  # 127.0.0.1 port of the ops entrypoint (ping, dashboard, Grafana); 0 = none
    ip_allow_list: tuple[str, ...]
    body_limit: str  # gateway | edge
    hsts_seconds: int
    # Fixed IPv4 subnets of the edge and metrics networks: Traefik's ops and metrics entrypoints
    # allow only addresses the program hands out there (stacks/addresses.py).
    subnet: str
    metrics_subnet: str


EDGE_KEYS = ("tls_mode", "acme_email", "acme_ca_server", "publish", "bind_address", "http_port", "https_port",
             "ops_port", "ip_allow_list", "body_limit", "hsts_seconds", "subnet", "metrics_subnet")
DEFAULT_EDGE_SUBNET = "10.213.0.0/24"
DEFAULT_METRICS_SUBNET = "10.213.1.0/24"


def _subnet(s: _Section, key: str, default: str) -> ipaddress.IPv4Network:
    value = s.string(key, default)
    try:
        subnet = ipaddress.IPv4Network(value)  # strict: no host bits
    except ValueError:
        raise ConfigError(f"edge.{key}", f"{value!r} is not an IPv4 subnet such as {default}") from None
    if not 16 <= subnet.prefixlen <= 28:  # room for the fixed addresses and a dynamic half
        raise ConfigError(f"edge.{key}", f"{value!r}: use a prefix between /16 and /28")
    return subnet


def _edge(edge: Mapping[str, Any] | None) -> EdgeSettings:
    s = _Section("edge", edge)
    s.reject_unknown(EDGE_KEYS)
    tls_mode = s.string("tls_mode", choices=TLS_MODES)
    acme_email = s.string("acme_email", None, pattern=_EMAIL, what="an email address")
    if tls_mode == "acme" and acme_email is None:
        raise ConfigError("edge.acme_email", "is required when edge.tls_mode is acme (Let's Encrypt account)")
    acme_ca_server = s.string("acme_ca_server", None)
    if acme_ca_server is not None and not acme_ca_server.startswith("https://"):
        raise ConfigError("edge.acme_ca_server", f"{acme_ca_server!r} must be an https:// ACME directory URL")
    bind_address = s.string("bind_address", "0.0.0.0")
    try:
        ipaddress.ip_address(bind_address)
    except ValueError:
        raise ConfigError("edge.bind_address", f"{bind_address!r} is not an IP address") from None
    allow_list = s.strings("ip_allow_list")
    for cidr in allow_list:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError("edge.ip_allow_list", f"{cidr!r} is not an IP address or CIDR range") from None
    publish = s.boolean("publish", True)
    if tls_mode == "acme" and not publish:
        raise ConfigError("edge.tls_mode", "acme needs edge.publish (the HTTP challenge arrives on port 80); "
                                           "behind a tunnel only, use provided (a Cloudflare origin certificate)")
    http_port = s.integer("http_port", 80, minimum=1, maximum=65535)
    https_port = s.integer("https_port", 443, minimum=1, maximum=65535)
    ops_port = s.integer("ops_port", 8090, minimum=0, maximum=65535)
    if http_port == https_port or (ops_port and ops_port in (http_port, https_port)):
        raise ConfigError("edge.ops_port" if ops_port in (http_port, https_port) else "edge.https_port",
                          "edge.http_port, edge.https_port and edge.ops_port must differ")
    subnet = _subnet(s, "subnet", DEFAULT_EDGE_SUBNET)
    metrics_subnet = _subnet(s, "metrics_subnet", DEFAULT_METRICS_SUBNET)
    if subnet.overlaps(metrics_subnet):
        raise ConfigError("edge.metrics_subnet", f"{metrics_subnet} overlaps edge.subnet {subnet}")
    return EdgeSettings(
        tls_mode=tls_mode,
        acme_email=acme_email,
        acme_ca_server=acme_ca_server,
        publish=publish,
        bind_address=bind_address,
        http_port=http_port,
        https_port=https_port,
        ops_port=ops_port,
        ip_allow_list=allow_list,
        body_limit=s.string("body_limit", "gateway", choices=BODY_LIMIT_MODES),
        hsts_seconds=s.integer("hsts_seconds", 31_536_000, minimum=0),
        subnet=str(subnet),
        metrics_subnet=str(metrics_subnet),
    )


@dataclass(frozen=True)
class ObservabilitySettings:
    prometheus_retention: str
    grafana_public: bool  # true: https://grafana.<domain>; false: only on the loopback ops entrypoint


OBSERVABILITY_KEYS = ("prometheus_retention", "grafana_public")
TUNNEL_KEYS = ("enabled",)
VOLUMES_KEYS = ("models_host_dir",)


def _observability(values: Mapping[str, Any] | None) -> ObservabilitySettings:
    s = _Section("observability", values)
    s.reject_unknown(OBSERVABILITY_KEYS)
    return ObservabilitySettings(
        prometheus_retention=s.string("prometheus_retention", "15d", pattern=_DURATION, what="a duration like 15d"),
        grafana_public=s.boolean("grafana_public", False),
    )


# -- extra CA certificates for image builds ----------------------------------------------------

BUILD_CA_KEY = "build_ca_certificates"
_PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")


def read_build_ca_certificates(setting: str | None, root: Path = ROOT_DIR) -> str:
    """The certificates of the ``build_ca_certificates`` file as PEM text ("" when unset).

    The setting names a PEM file of CA certificates (one or more): the CA a TLS-inspecting proxy
    re-signs HTTPS with, which pip in the image builds must trust. A relative path is resolved
    from the project root (the directory of Pulumi.yaml), never from the working directory:
    Pulumi runs the program in stacks/ (Pulumi.yaml ``main``), the dev tools and tests from the
    root, and both must read the same file. ``~`` is expanded. Only the certificate blocks are
    kept (comments, ``subject=`` lines and private keys are dropped), each checked by OpenSSL.
    """
    if setting is None:
        return ""
    path = Path(os.path.expanduser(setting))
    where = ""
    if not path.is_absolute():
        path, where = root / path, f" ({setting!r} relative to the project root {root})"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(BUILD_CA_KEY, f"cannot read {path}{where}: "
                                        f"{getattr(error, 'strerror', None) or error}") from None
    blocks = _PEM_CERTIFICATE.findall(text)
    if not blocks:
        raise ConfigError(BUILD_CA_KEY, f"{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    for number, block in enumerate(blocks, start=1):
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=block)  # parsed by OpenSSL
        except (ssl.SSLError, ValueError) as error:
            raise ConfigError(BUILD_CA_KEY, f"{path}: certificate {number} is not a valid PEM certificate: "
                                            f"{error}") from None
    return "\n".join(blocks) + "\n"


# -- the whole node ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSettings:
    """Every non-secret setting of a stack, typed and validated."""

    stack: str
    name_prefix: str
    docker_host: str
    domain: str
    images: Mapping[str, str]  # the full table: defaults with the stack's overrides
    engines: tuple[EngineDeployment, ...]  # the engine groups, in stack-file order
    gateway: GatewaySpec
    edge: EdgeSettings
    tunnel_enabled: bool
    quantize: QuantizeSpec | None
    quantize_timeout_minutes: int
    observability: ObservabilitySettings
    models_host_dir: str | None  # dev: bind a host directory at /models instead of the models volume
    tls_certificate: str | None  # PEM, edge.tls_mode provided (its key is the secret tls_private_key)
    # Where the node runs: one Docker host (stacks/node.py) or a cluster (stacks/kubernetes/).
    target: str = "docker"
    kubernetes: KubernetesSettings | None = None  # target kubernetes only
    quantize_group: str | None = None  # the engine group whose model the quantize job writes
    # PEM text of the extra CA certificates every image built from this repository trusts while it
    # builds (``build_ca_certificates``: read_build_ca_certificates); "" when unset.
    build_ca_certificates: str = ""

    @property
    def engine(self) -> EngineDeployment:
        """The first generate group: the node's model where one is meant (a one-model node's only group)."""
        return next(group for group in self.engines if group.kind == "generate")

    def engines_of(self, kind: str) -> tuple[EngineDeployment, ...]:
        return tuple(group for group in self.engines if group.kind == kind)

    def group(self, name: str) -> EngineDeployment:
        return next(group for group in self.engines if group.group == name)

    @property
    def public_url(self) -> str:
        port = "" if self.edge.https_port == 443 or not self.edge.publish else f":{self.edge.https_port}"
        return f"https://{self.domain}{port}"


def _top_string(values: Mapping[str, Any], key: str, default: Any = _REQUIRED) -> Any:
    value = values.get(key)
    if value is None:
        if default is _REQUIRED:
            raise ConfigError(key, "is required")
        return default
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"must be a non-empty string, got {value!r}")
    return value


def parse_settings(values: Mapping[str, Any], stack: str, *, secrets_present: Sequence[str] = ()) -> NodeSettings:
    """Validate a stack's plain values (keys without the ``llm-node:`` prefix) into NodeSettings.

    ``secrets_present`` names the secret keys the stack sets (their values are never read here).
    """
    known = OBJECT_KEYS + STRING_KEYS + SECRET_KEYS
    for key in values:
        if key not in known:
            raise ConfigError(key, f"unknown setting (known: {', '.join(sorted(known))})")

    images_section = _Section("images", values.get("images"))
    images_section.reject_unknown(tuple(DEFAULT_IMAGES))
    images = dict(DEFAULT_IMAGES)
    for name in images_section.values:
        reference = images_section.string(name)
        if not is_pinned(reference):
            raise ConfigError(f"images.{name}", f"{reference!r} is not pinned: use a version tag (x.y[.z]) or a digest")
        images[name] = reference

    docker_host = _top_string(values, "docker_host", "unix:///var/run/docker.sock")
    if not docker_host.startswith(_DOCKER_HOST_SCHEMES):
        raise ConfigError("docker_host", f"{docker_host!r} must start with one of {', '.join(_DOCKER_HOST_SCHEMES)}")
    name_prefix = _top_string(values, "name_prefix", "llm-node")
    if not _PREFIX.match(name_prefix):
        raise ConfigError("name_prefix", f"{name_prefix!r} must be lowercase letters, digits and dashes (3-32)")
    domain = _top_string(values, "domain")
    if not _HOSTNAME.match(domain):
        raise ConfigError("domain", f"{domain!r} is not a lowercase DNS name")

    engines = engine_groups(values.get("engine"), values.get("engines"))
    gateway = gateway_spec_from_config(
        values.get("gateway"), engines=[url for group in engines if group.kind == "generate" for url in group.urls],
        embedding_engines=[url for group in engines if group.kind == "embed" for url in group.urls])
    edge = _edge(values.get("edge"))

    tunnel = _Section("tunnel", values.get("tunnel"))
    tunnel.reject_unknown(TUNNEL_KEYS)
    tunnel_enabled = tunnel.boolean("enabled", False)
    if tunnel_enabled and "tunnel_token" not in secrets_present:
        raise ConfigError("tunnel_token", "is required when tunnel.enabled is true: "
                                          "pulumi config set --secret tunnel_token <token>")
    if not edge.publish and not tunnel_enabled:
        raise ConfigError("edge.publish", "false leaves the node unreachable unless tunnel.enabled is true")

    tls_certificate = _top_string(values, "tls_certificate", None)
    if edge.tls_mode == "provided":
        if tls_certificate is None or "-----BEGIN CERTIFICATE-----" not in tls_certificate:
            raise ConfigError("tls_certificate", "a PEM certificate (chain) is required when edge.tls_mode is "
                                                 "provided: pulumi config set tls_certificate < cert.pem")
        if "tls_private_key" not in secrets_present:
            raise ConfigError("tls_private_key", "is required when edge.tls_mode is provided: "
                                                 "pulumi config set --secret tls_private_key < key.pem")

    quantize = quantize_spec_from_config(values.get("quantize"))
    default, low, high = QUANTIZE_TIMEOUT_MINUTES
    quantize_timeout = _Section("quantize", values.get("quantize")).integer("timeout_minutes", default, minimum=low,
                                                                            maximum=high)
    quantize_group = _quantize_group(values.get("quantize"), engines) if quantize is not None else None
    if quantize is not None:
        prepared = next(group for group in engines if group.group == quantize_group)
        if prepared.spec.model != quantize.output_dir:
            raise ConfigError(f"{prepared.section}.model_dir",
                              f"must be quantize.output_model_dir ({quantize.output_dir}) while quantize.enabled "
                              f"is true: group {prepared.group} serves the job's output")

    volumes = _Section("volumes", values.get("volumes"))
    volumes.reject_unknown(VOLUMES_KEYS)
    models_host_dir = volumes.string("models_host_dir", None)
    if models_host_dir is not None:
        models_host_dir = os.path.expanduser(models_host_dir)
        if not models_host_dir.startswith("/"):
            raise ConfigError("volumes.models_host_dir", f"{models_host_dir!r} must be an absolute path on the host")
        if quantize is not None:
            raise ConfigError("volumes.models_host_dir", "is read-only for the engine; the quantize job needs the "
                                                         "models volume (unset one of them)")

    target = parse_target(values)
    kubernetes = parse_kubernetes(values.get("kubernetes"), target=target, engines=engines,
                                  raw_engines=values["engines"] if values.get("engines") is not None
                                  else [values.get("engine")],
                                  tunnel_enabled=tunnel_enabled,
                                  models_host_dir=models_host_dir,
                                  engine_dns_ttl_seconds=gateway.engine_dns_ttl_seconds,
                                  secrets_present=secrets_present)

    return NodeSettings(
        stack=stack,
        name_prefix=name_prefix,
        docker_host=docker_host,
        domain=domain,
        images=images,
        engines=engines,
        gateway=gateway,
        edge=edge,
        tunnel_enabled=tunnel_enabled,
        quantize=quantize,
        quantize_timeout_minutes=quantize_timeout,
        observability=_observability(values.get("observability")),
        models_host_dir=models_host_dir,
        tls_certificate=tls_certificate,
        target=target,
        kubernetes=kubernetes,
        quantize_group=quantize_group,
        build_ca_certificates=read_build_ca_certificates(_top_string(values, BUILD_CA_KEY, None)),
    )


def _quantize_group(quantize: Mapping[str, Any] | None, engines: Sequence[EngineDeployment]) -> str:
    """The group the quantize job prepares: quantize.group, or the only group there is."""
    s = _Section("quantize", quantize)
    names = [group.group for group in engines]
    name: str | None = s.string("group", names[0] if len(names) == 1 else None, choices=names)
    if name is None:
        raise ConfigError("quantize.group", f"is required with several engine groups: the group whose model the "
                                            f"job writes (one of {', '.join(names)})")
    return name


def all_keys() -> list[str]:
    """Every configuration key, dotted (``engine.max_model_len``): what docs/configuration.md documents."""
    sections = {
        "images": tuple(DEFAULT_IMAGES),
        "engine": ENGINE_SPEC_KEYS + ENGINE_CONTAINER_KEYS,
        "engines[]": ENGINE_GROUP_KEYS,  # plus every engine.* key, per group (docs/configuration.md)
        "gateway": gateway_keys(),
        "edge": EDGE_KEYS,
        "tunnel": TUNNEL_KEYS,
        "quantize": QUANTIZE_KEYS,
        "observability": OBSERVABILITY_KEYS,
        "volumes": VOLUMES_KEYS,
        "kubernetes": KUBERNETES_KEYS,
    }
    assert {section.removesuffix("[]") for section in sections} == set(OBJECT_KEYS)
    return [*STRING_KEYS, *SECRET_KEYS, *(f"{section}.{key}" for section, keys in sections.items() for key in keys)]


# -- stack files (no Pulumi engine needed) ---------------------------------------------------------


def stack_file(stack: str) -> Path:
    return STACKS_DIR / f"Pulumi.{stack}.yaml"


def read_stack_values(stack: str) -> dict[str, Any]:
    """The ``llm-node:`` values of ``stacks/Pulumi.<stack>.yaml``, prefix removed.

    Secret values stay as written (``{"secure": "<ciphertext>"}``): only the CLI can decrypt them.
    """
    document = yaml.safe_load(stack_file(stack).read_text()) or {}
    prefix = f"{NAMESPACE}:"
    return {key[len(prefix):]: value for key, value in (document.get("config") or {}).items()
            if key.startswith(prefix)}


def load_stack_settings(stack: str) -> NodeSettings:
    values = read_stack_values(stack)
    present = [key for key in SECRET_KEYS if key in values]
    return parse_settings({k: v for k, v in values.items() if k not in SECRET_KEYS}, stack, secrets_present=present)


def load_stack_specs(stack: str) -> tuple[EngineSpec, GatewaySpec]:
    """The first generate group's engine spec and the gateway spec a stack file declares."""
    settings = load_stack_settings(stack)
    return settings.engine.spec, settings.gateway


def load_engine_specs(stack: str) -> dict[str, EngineSpec]:
    """Group name -> the spec of one of its replicas, in stack-file order (the dev node starts each)."""
    return {group.group: group.spec for group in load_stack_settings(stack).engines}


# -- the Pulumi-facing reader ----------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSecrets:
    """Secret settings as secret Outputs (None when the stack does not set them)."""

    tunnel_token: pulumi.Output[str] | None
    tls_private_key: pulumi.Output[str] | None
    external_database_url: pulumi.Output[str] | None = None  # kubernetes.data_stores: external
    external_redis_url: pulumi.Output[str] | None = None


@dataclass(frozen=True)
class NodeConfig:
    settings: NodeSettings
    secrets: NodeSecrets


def _stack_config_keys() -> set[str]:
    """Every ``llm-node:`` key the engine passed in (to find typos, which Pulumi ignores)."""
    from pulumi.runtime import config as runtime_config

    keys = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    prefix = f"{NAMESPACE}:"
    return {key[len(prefix):] for key in keys if key.startswith(prefix)}


def load_node_config() -> NodeConfig:
    """Read and validate the current stack's configuration (inside a Pulumi program)."""
    import pulumi
    from pulumi.runtime import get_config_secret_keys_env, is_config_secret

    config = pulumi.Config(NAMESPACE)
    values: dict[str, Any] = {}
    present = []
    for key in sorted(_stack_config_keys()):
        if key in SECRET_KEYS:
            full_key = f"{NAMESPACE}:{key}"
            if not (is_config_secret(full_key) or full_key in get_config_secret_keys_env()):
                raise ConfigError(key, f"is stored in plain text; store it encrypted: "
                                       f"pulumi config set --secret {key} <value>")
            present.append(key)
            continue
        raw = config.get(key)
        if key in OBJECT_KEYS and raw is not None:
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as error:
                raise ConfigError(key, f"must be an object (YAML mapping): {error}") from None
        values[key] = raw
    settings = parse_settings(values, pulumi.get_stack(), secrets_present=present)
    secrets = NodeSecrets(
        tunnel_token=config.require_secret("tunnel_token") if settings.tunnel_enabled else None,
        tls_private_key=config.require_secret("tls_private_key") if settings.edge.tls_mode == "provided" else None,
        **({key: config.require_secret(key) for key in ("external_database_url", "external_redis_url")}
           if settings.kubernetes is not None and settings.kubernetes.data_stores == "external" else {}),
    )
    return NodeConfig(settings=settings, secrets=secrets)
