"""LoRA adapters the session engine serves from start-up (``--lora-modules``).

The adapter is real: built with peft for the tiny model (scripts/build_tiny_adapter.py,
in the quantize environment, cached like the tiny model). Each session copies it, writes
into the copy's config the keys a newer PEFT release writes, and serves the sanitized
copy, which is the path an operator's adapter takes on a node.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from scripts.devnode.paths import QUANTIZE_PYTHON, TINY_ADAPTER_DIR, TINY_MODEL_DIR
from services.engine.adapter_sanitizer import Policy, sanitize_adapter

REPO = Path(__file__).resolve().parents[2]

STATIC_ADAPTER = "tiny-lora"
# The session engine's --max-lora-rank (tests/support/engine.py).
ENGINE_MAX_LORA_RANK = 8

# What peft 0.17+ writes into adapter_config.json for a plain LoRA (all switched off).
# vLLM ignores unknown keys; older PEFT releases refuse to load a config that has them.
NEWER_PEFT_KEYS = {
    "alora_invocation_tokens": None,
    "use_dora": False,
    "lora_bias": False,
    "use_qalora": False,
    "qalora_group_size": 16,
    "use_bdlora": None,
    "target_parameters": None,
    "trainable_token_indices": None,
    "exclude_modules": None,
    "ensure_weight_tying": False,
    "corda_config": None,
    "eva_config": None,
    "lora_ga_config": None,
    "layer_replication": None,
    "peft_version": "0.21.2",
}


def tiny_adapter() -> Path:
    """The peft-built adapter for the tiny model (built once, then reused)."""
    if not QUANTIZE_PYTHON.exists():
        raise RuntimeError(f"{QUANTIZE_PYTHON} missing (peft lives there): run scripts/bootstrap --quantize")
    subprocess.run(
        [str(QUANTIZE_PYTHON), str(REPO / "scripts" / "build_tiny_adapter.py"), str(TINY_MODEL_DIR),
         str(TINY_ADAPTER_DIR)],
        check=True, capture_output=True, text=True,
    )
    return TINY_ADAPTER_DIR


def as_newer_peft_wrote_it(adapter: Path, destination: Path) -> Path:
    """A copy of ``adapter`` whose config carries the keys a newer PEFT release writes."""
    shutil.copytree(adapter, destination)
    config_path = destination / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config.update(NEWER_PEFT_KEYS)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    return destination


def build_static_adapters(work_dir: Path) -> dict[str, str]:
    """Adapter name -> sanitized directory, built before the session engine starts."""
    work_dir = Path(work_dir)
    raw = as_newer_peft_wrote_it(tiny_adapter(), work_dir / "raw" / STATIC_ADAPTER)
    sanitized = work_dir / "sanitized" / STATIC_ADAPTER
    sanitize_adapter(raw, sanitized, Policy(max_lora_rank=ENGINE_MAX_LORA_RANK))
    return {STATIC_ADAPTER: str(sanitized)}
