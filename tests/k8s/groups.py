"""Multi-model cluster stacks for the tests: k8s-dev and k8s-prod with two engine groups instead of
their single `engine:` section — the stack's own model as group `chat` (generate) and a small
embedding model as group `embed`, on the CPU (on k8s-prod next to the GPU chat group: one
stack, two devices, GPU limits on the chat group's pods only)."""

from __future__ import annotations

from typing import Any

from stacks.config import read_stack_values

EMBED_GROUP = {"name": "embed", "kind": "embed", "device": "cpu", "model_dir": "tiny-llama",
               "served_model_name": "tiny-embed", "max_model_len": 512, "cpu_kvcache_space_gib": 1,
               "hf_hub_offline": True, "shm_size_mb": 1024, "health_start_period_seconds": 300}
PICKER = {"endpoint_picker": "inference-extension", "inference_gateway_class": "kgateway"}


def two_groups(stack: str, *, picker: bool = False) -> dict[str, Any]:
    """Overrides of ``stack`` (mock_runtime.run_program / deep_merge): ``engine`` out, ``engines`` in."""
    values = read_stack_values(stack)
    overrides: dict[str, Any] = {"engine": None,
                                 "engines": [{"name": "chat", "kind": "generate", **values["engine"]}, EMBED_GROUP]}
    if "quantize" in values:
        overrides["quantize"] = {"group": "chat"}  # required with several groups
    if picker:
        overrides["kubernetes"] = dict(PICKER)
    return overrides


TWO_GROUP_OBJECTS = {  # the per-group objects of a two-group stack (chat, embed), by kind
    "StatefulSet": {"engine-chat", "engine-embed"},
    "Service": {"engine-chat", "engine-embed"},
    "PodDisruptionBudget": {"engine-chat", "engine-embed"},
    "ScaledObject": {"engine-chat", "engine-embed"},
    "ServiceMonitor": {"engine-chat", "engine-embed"},
    "NetworkPolicy": {"engine-chat", "engine-embed"},
}
