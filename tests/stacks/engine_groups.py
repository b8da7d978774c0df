"""A multi-model GPU node for the tests: the prod stack with three engine groups instead of its
single `engine:` section — a chat model on two GPUs (tensor parallel, the quantize job's output),
a coder on one, an embedding model on one."""

from __future__ import annotations

from typing import Any

from stacks.config import read_stack_values

GPU_GROUP = {"device": "cuda", "max_model_len": 8192, "gpu_memory_utilization": 0.9, "hf_hub_offline": True}


def three_groups() -> list[dict[str, Any]]:
    prod_model = read_stack_values("prod")["engine"]["model_dir"]  # what the quantize job writes
    return [
        {"name": "chat", "kind": "generate", **GPU_GROUP, "model_dir": prod_model,
         "served_model_name": "qwen2.5-7b-instruct", "quantization": "compressed-tensors", "gpu_ids": ["0,1"],
         "extra_args": ["--tensor-parallel-size", "2"], "enable_lora": True, "max_lora_rank": 16},
        {"name": "coder", "kind": "generate", **GPU_GROUP, "model_id": "Qwen/Qwen2.5-Coder-7B-Instruct-AWQ",
         "served_model_name": "qwen2.5-coder-7b", "quantization": "awq_marlin", "gpu_ids": ["2"]},
        {"name": "embed", "kind": "embed", **GPU_GROUP, "model_id": "BAAI/bge-base-en-v1.5",
         "served_model_name": "bge-base", "max_model_len": 512, "enable_prefix_caching": False, "gpu_ids": ["3"]},
    ]


def three_group_overrides(**quantize: Any) -> dict[str, Any]:
    """Overrides of the prod stack (mock_runtime.run_program / deep_merge): ``engine`` out, ``engines`` in."""
    return {"engine": None, "engines": three_groups(), "quantize": {"group": "chat", **quantize}}
